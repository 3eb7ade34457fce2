"""SSL-ImageNet: the embedded photo corpus (no network), the 2D MAE, I3D inflation checked exactly against
the 2D model, timm-name mapping on a hand-built timm state dict, and pretrain -> encoder folder."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import umbif
from umbif.baselines.ssl_imagenet import (
    NOT_PHOTOS,
    PhotoMAE,
    build_ssl_imagenet_encoder,
    inflate_state,
    inflate_to_encoder,
    photo_corpus,
    photo_views,
    pretrain_photos,
)
from umbif.models.io import read_safetensors
from umbif.models.umbif import ModelConfig
from umbif.train.logging import read_metrics

TINY = ModelConfig(
    image_size=(32, 32, 8), patch_size=8, dim=48, depth=2, heads=3, decoder_dim=32, decoder_depth=1, decoder_heads=2
)


@pytest.fixture(scope="module")
def corpus() -> list:
    return photo_corpus()


def test_corpus_is_found_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    photos = photo_corpus()
    names = [name for name, _ in photos]
    assert len(photos) >= 20 and {"sklearn/china.jpg", "sklearn/flower.jpg", "skimage/astronaut.png"} <= set(names)
    assert not {name.split("/")[1] for name in names} & NOT_PHOTOS
    assert all(
        image.shape[2] == 3 and image.dtype.name == "uint8" and min(image.shape[:2]) >= 100 for _, image in photos
    )


def test_views_are_normalised_reproducible_crops(corpus: list) -> None:
    tensors = [torch.from_numpy(image).permute(2, 0, 1).float() / 255 for _, image in corpus]
    first = photo_views(tensors, 6, 32, torch.Generator().manual_seed(3))
    assert first.shape == (6, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, photo_views(tensors, 6, 32, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, photo_views(tensors, 6, 32, torch.Generator().manual_seed(4)))
    lowest = (0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert (first >= lowest[None, :, None, None] - 1e-5).all()  # clamped to [0, 1] before normalising


def test_inflated_patch_embedding_is_the_2d_one_spread_over_depth() -> None:
    """Brute force over every (e, x, y, z): W3[e, x, y, z] = sum_c W2[e, c, x, y] / p."""
    p, E = TINY.patch_size, TINY.dim
    weight = torch.randn(E, 3, p, p)
    state = {
        "patch_embed.proj.weight": weight,
        "patch_embed.proj.bias": torch.randn(E),
        "cls_token": torch.randn(1, 1, E),
    }
    state |= {k: v for k, v in PhotoMAE(TINY, 32).encoder_state().items() if k.startswith(("blocks", "norm"))}
    mapped, unused = inflate_state(state, TINY)
    assert unused == []
    for s in range(TINY.num_sequences):
        inflated = mapped[f"patch_embed.{s}.weight"].reshape(E, p, p, p)
        for e in (0, E - 1):
            for x in range(p):
                for y in range(p):
                    for z in range(p):
                        assert inflated[e, x, y, z] == pytest.approx(float(weight[e, :, x, y].sum()) / p, abs=1e-6)
        assert torch.equal(mapped[f"patch_embed.{s}.bias"], state["patch_embed.proj.bias"])
    assert torch.equal(mapped["seq_embed"], torch.zeros(TINY.num_sequences, E))


@pytest.mark.parametrize("present", [[1, 0, 0, 0], [0, 0, 0, 1]], ids=["t1-only", "flair-only"])
def test_volume_constant_in_depth_gives_the_2d_embedding(present: list[int]) -> None:
    """One plane of patches deep, one sequence: the inflated encoder's CLS embedding is the 2D ViT's for the
    grey image. (With several identical sequences it is not: the CLS key then weighs less in attention.)"""
    torch.manual_seed(0)
    model = PhotoMAE(TINY, 32).eval()
    grey = torch.randn(32, 32)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(grey.expand(1, 3, -1, -1)))  # [1, E]
        encoder = inflate_to_encoder(model.encoder_state(), TINY)
        volume = grey[None, None, :, :, None].expand(1, 4, 32, 32, 8).clone()  # constant along z
        got = encoder(volume, torch.tensor([present], dtype=torch.bool))
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got, encoder(volume.flip(2), torch.tensor([present], dtype=torch.bool)))


def _timm_state(depth: int = 2, layer_scale: bool = True) -> dict[str, torch.Tensor]:
    """What timm's vit_*_patch8 state_dict() looks like, wrapped by DDP, with LayerScale and a head."""
    torch.manual_seed(1)
    E, hidden, L = TINY.dim, int(TINY.dim * TINY.mlp_ratio), 16
    state = {"patch_embed.proj.weight": torch.randn(E, 3, 8, 8), "patch_embed.proj.bias": torch.randn(E),
             "cls_token": torch.randn(1, 1, E), "pos_embed": torch.randn(1, 1 + L, E),
             "fc_norm.weight": torch.rand(E), "fc_norm.bias": torch.randn(E),
             "head.weight": torch.randn(1000, E), "head.bias": torch.randn(1000)}  # fmt: skip
    for i in range(depth):
        b = f"blocks.{i}."
        state |= {b + "norm1.weight": torch.rand(E), b + "norm1.bias": torch.randn(E),
                  b + "attn.qkv.weight": torch.randn(3 * E, E) / 8, b + "attn.proj.weight": torch.randn(E, E) / 8,
                  b + "attn.proj.bias": torch.randn(E), b + "norm2.weight": torch.rand(E),
                  b + "norm2.bias": torch.randn(E),
                  b + "mlp.fc1.weight": torch.randn(hidden, E) / 8, b + "mlp.fc1.bias": torch.randn(hidden),
                  b + "mlp.fc2.weight": torch.randn(E, hidden) / 8, b + "mlp.fc2.bias": torch.randn(E)}  # fmt: skip
        if layer_scale:
            state |= {b + "ls1.gamma": torch.rand(E), b + "ls2.gamma": torch.rand(E)}
    return {f"module.{k}": v for k, v in state.items()}  # qkv_bias=False: no qkv.bias


def _timm_block(state: dict[str, torch.Tensor], i: int, x: torch.Tensor, heads: int) -> torch.Tensor:
    """timm's Block.forward written out with F (LayerScale, no qkv bias), the reference for the mapping."""
    w = {k.removeprefix(f"module.blocks.{i}."): v for k, v in state.items() if k.startswith(f"module.blocks.{i}.")}
    B, M, E = x.shape
    y = F.layer_norm(x, (E,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
    q, k, v = (y @ w["attn.qkv.weight"].T).reshape(B, M, 3, heads, E // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / (E // heads) ** 0.5, dim=-1) @ v  # [B, H, M, E/H]
    x = x + w["ls1.gamma"] * (attn.transpose(1, 2).reshape(B, M, E) @ w["attn.proj.weight"].T + w["attn.proj.bias"])
    y = F.layer_norm(x, (E,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
    y = F.gelu(y @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]) @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]
    return x + w["ls2.gamma"] * y


def test_timm_names_map_onto_umbif() -> None:
    state = _timm_state()
    with pytest.warns(UserWarning, match="head.weight") as caught:
        encoder = inflate_to_encoder(state, TINY)
    assert "module.head.bias" in str(caught[0].message) and "pos_embed" not in str(caught[0].message)
    weights = encoder.state_dict()
    torch.testing.assert_close(weights["cls_token"], state["module.cls_token"] + state["module.pos_embed"][:, :1])
    assert torch.equal(weights["blocks.1.attn.qkv.weight"], state["module.blocks.1.attn.qkv.weight"])
    assert torch.equal(weights["blocks.0.attn.qkv.bias"], torch.zeros(3 * TINY.dim))
    assert torch.equal(weights["norm.weight"], state["module.fc_norm.weight"])  # global-pool model: fc_norm
    x = torch.randn(2, 5, TINY.dim)
    with torch.no_grad():
        for i in range(TINY.depth):  # LayerScale folded into attn.proj and mlp.fc2
            torch.testing.assert_close(encoder.blocks[i](x), _timm_block(state, i, x, TINY.heads), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"depth": 3}, "has 2 blocks, the model config 3: set depth=2"),
        ({"patch_size": 16, "image_size": (32, 32, 16)}, "patch_size=8"),
        ({"dim": 96, "heads": 3}, "dim=48"),
    ],
)
def test_a_checkpoint_of_another_shape_is_refused(change: dict, message: str) -> None:
    config = ModelConfig.model_validate({**TINY.to_dict(), **change})
    with pytest.raises(ValueError, match=message):
        inflate_state(_timm_state(), config)


def test_a_wider_mlp_is_refused_naming_the_layer() -> None:
    state = _timm_state(layer_scale=False)
    state["module.blocks.0.mlp.fc1.weight"] = torch.randn(7, TINY.dim)
    with pytest.raises(ValueError, match=r"blocks.0.mlp.fc1.weight"), pytest.warns(UserWarning):
        inflate_to_encoder(state, TINY)


def test_user_checkpoint_becomes_an_encoder_folder_and_pickles_are_refused(tmp_path: Path) -> None:
    state = _timm_state()
    save_file(state, str(tmp_path / "vit.safetensors"))
    with pytest.warns(UserWarning, match="not used"):
        folder = build_ssl_imagenet_encoder(tmp_path / "enc", TINY, checkpoint=tmp_path / "vit.safetensors")
    encoder = umbif.load_encoder(folder)
    assert torch.equal(encoder.state_dict()["blocks.0.mlp.fc1.weight"], state["module.blocks.0.mlp.fc1.weight"])
    record = json.loads((folder / "ssl_imagenet.json").read_text())
    assert "module.head.weight" in record["unused_keys"]
    (tmp_path / "vit.pth").write_bytes(b"not opened")
    with pytest.raises(ValueError, match="never unpickles"):
        build_ssl_imagenet_encoder(tmp_path / "enc2", TINY, checkpoint=tmp_path / "vit.pth")


def test_photo_pretraining_learns_resumes_exactly_and_inflates(tmp_path: Path) -> None:
    settings = {"model_config": TINY, "steps": 24, "batch_size": 8, "seed": 2, "image_size": 32, "checkpoint_every": 8}
    straight = pretrain_photos(tmp_path / "enc" / "photos", **settings)  # where the encoder builder puts its run
    losses = [m["loss"] for m in read_metrics(tmp_path / "enc" / "photos")]
    assert len(losses) == 24 and sum(losses[-6:]) < sum(losses[:6])

    class Stop(Exception):
        pass

    def stop_at_ten(step: int, total: int, record: dict) -> None:
        if step == 10:
            raise Stop

    with pytest.raises(Stop):
        pretrain_photos(tmp_path / "resumed", **settings, on_step=stop_at_ten)  # last checkpoint: step 8
    resumed = pretrain_photos(tmp_path / "resumed", **settings)
    a, b = read_safetensors(straight)[0], read_safetensors(resumed)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("decoder") for k in a)

    card = json.loads((tmp_path / "enc" / "photos" / "photo_vit.json").read_text())
    assert card["corpus"]["images"] >= 20 and card["config"]["total_steps"] == 24
    made = straight.stat().st_mtime_ns
    folder = build_ssl_imagenet_encoder(tmp_path / "enc", TINY, steps=24, batch_size=8, seed=2, image_size=32)
    assert straight.stat().st_mtime_ns == made  # the finished photo run is reused, not retrained
    encoder = umbif.load_encoder(folder)
    assert torch.equal(encoder.state_dict()["blocks.1.mlp.fc2.weight"], a["blocks.1.mlp.fc2.weight"])
    assert encoder(torch.randn(1, 4, 32, 32, 8), torch.ones(1, 4, dtype=torch.bool)).shape == (1, TINY.dim)

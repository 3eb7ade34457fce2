"""Encoder export and tolerant loading: safetensors only, keys and shapes named in every refusal."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import umbif
from umbif.models.io import load_encoder, load_state_tolerant, read_safetensors, save_encoder
from umbif.models.umbif import ModelConfig, UMBIFEncoder, UMBIFPretrainer

CONFIG = ModelConfig(image_size=(32, 32, 32), patch_size=8, dim=32, depth=2, heads=2, decoder_dim=24, proj_dim=16)
PRESENT = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 1]], dtype=torch.bool)


def encoder(seed: int = 0) -> UMBIFEncoder:
    torch.manual_seed(seed)
    return UMBIFEncoder(CONFIG).eval()


def images() -> torch.Tensor:
    return torch.randn(2, 4, 32, 32, 32, generator=torch.Generator().manual_seed(1))


def test_export_and_load_give_identical_embeddings(tmp_path):
    original = encoder()
    out = save_encoder(original, CONFIG, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "encoder.safetensors"]  # no temp files left
    card = json.loads((out / "config.json").read_text())
    assert card["model"] == CONFIG.to_dict() and "torch" in card["versions"]
    loaded = load_encoder(out)
    assert not loaded.training and loaded.config == CONFIG
    with torch.no_grad():
        expected = original(images(), PRESENT)
        assert torch.equal(loaded(images(), PRESENT), expected)
        assert torch.equal(umbif.load_encoder(out)(images(), PRESENT), expected)  # the lazy top-level export
        (out / "config.json").unlink()  # the weights file alone carries its config in its metadata
        assert torch.equal(load_encoder(out / "encoder.safetensors")(images(), PRESENT), expected)


def test_another_image_size_reuses_the_weights(tmp_path):
    save_encoder(encoder(), CONFIG, tmp_path)
    bigger = CONFIG.model_copy(update={"image_size": (48, 32, 32)})
    loaded = load_encoder(tmp_path, config=bigger)
    assert loaded(torch.randn(1, 4, 48, 32, 32), PRESENT[:1]).shape == (1, 32)


def test_a_grid_the_patches_do_not_tile_is_named(tmp_path):
    save_encoder(UMBIFEncoder(CONFIG), CONFIG, tmp_path)
    with pytest.raises(ValueError, match=r"cannot run on the grid \(36, 32, 32\)"):
        load_encoder(tmp_path, image_size=(36, 32, 32))


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "encoder.", "model.", "module.encoder.", "_orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    original = encoder(seed=1)
    save_file({prefix + k: v.contiguous() for k, v in original.state_dict().items()}, tmp_path / "w.safetensors")
    loaded = load_encoder(tmp_path / "w.safetensors", config=CONFIG)
    for name, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_pretrainer_checkpoint_loads_its_encoder_and_names_the_rest(tmp_path):
    torch.manual_seed(2)
    pretrainer = UMBIFPretrainer(CONFIG)
    state = {"module." + k: v.contiguous() for k, v in pretrainer.state_dict().items()}  # a DDP checkpoint
    save_file(state, tmp_path / "pretrainer.safetensors")
    with pytest.raises(ValueError, match=r"unexpected keys \(ignored\): module\.decoder\.") as error:
        load_encoder(tmp_path / "pretrainer.safetensors", config=CONFIG)
    assert "36 unexpected keys" in str(error.value) and "strict=False" in str(error.value)  # decoder + projector
    summary = r"36 unexpected .* and 16 more \(module\.decoder\.\*: 12, module\.projector\.\*: 4\)"
    with pytest.warns(UserWarning, match=summary):
        loaded = load_encoder(tmp_path / "pretrainer.safetensors", config=CONFIG, strict=False)
    assert torch.equal(loaded.cls_token, pretrainer.encoder.cls_token)
    # the trainer resumes the whole pretrainer from the same file
    fresh = UMBIFPretrainer(CONFIG)
    report = load_state_tolerant(fresh, load_file(tmp_path / "pretrainer.safetensors"))
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(fresh.decoder.mask_token, pretrainer.decoder.mask_token)


def test_missing_and_unexpected_keys_are_named():
    state = encoder().state_dict()
    state.pop("blocks.1.mlp.fc2.bias")
    state["head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 missing .*: blocks\.1\.mlp\.fc2\.bias; 1 unexpected .*: head\.weight"):
        load_state_tolerant(encoder(), state)
    target = encoder(seed=5)
    kept = target.blocks[1].mlp.fc2.bias.clone()
    with pytest.warns(UserWarning, match="blocks.1.mlp.fc2.bias"):
        report = load_state_tolerant(target, state, strict=False)
    assert report.missing == ["blocks.1.mlp.fc2.bias"] and report.unexpected == ["head.weight"]
    assert torch.equal(target.blocks[1].mlp.fc2.bias, kept)  # missing keys keep their values
    assert torch.equal(target.cls_token, state["cls_token"])


def test_a_shape_mismatch_names_the_layer_and_both_shapes():
    state = encoder().state_dict()
    state["blocks.1.attn.qkv.weight"] = torch.zeros(48, 32)
    message = r"1 layers have another shape .*'blocks\.1\.attn\.qkv\.weight': checkpoint \[48, 32\], model \[96, 32\]"
    with pytest.raises(ValueError, match=message):
        load_state_tolerant(encoder(), state)
    with pytest.raises(ValueError, match="another shape"):
        load_state_tolerant(encoder(), state, strict=False)  # never forgiven


def test_an_encoder_of_another_width_is_refused(tmp_path):
    wider = CONFIG.model_copy(update={"dim": 48})
    save_encoder(UMBIFEncoder(wider), wider, tmp_path)
    with pytest.raises(ValueError, match=r"'blocks\.0\.attn\.proj\.bias': checkpoint \[48\], model \[32\]"):
        load_encoder(tmp_path, config=CONFIG)
    assert load_encoder(tmp_path).config.dim == 48  # with its own config it loads


def test_two_keys_for_one_parameter_are_refused():
    state = encoder().state_dict()
    state["module.cls_token"] = state["cls_token"]
    with pytest.raises(ValueError, match=r"'cls_token' and 'module\.cls_token' both load into 'cls_token'"):
        load_state_tolerant(encoder(), state)


@pytest.mark.parametrize("name", ["encoder.pt", "model.pth", "last.ckpt", "pytorch_model.bin"])
def test_pickled_checkpoints_are_refused_with_a_conversion_hint(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="never unpickles") as error:
        load_encoder(path)
    assert "weights_only=True" in str(error.value) and "save_file" in str(error.value)
    with pytest.raises(ValueError, match="never unpickles"):
        read_safetensors(path)


def test_unusable_paths_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no encoder\.safetensors in this folder"):
        load_encoder(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_encoder(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "bare.safetensors")
    with pytest.raises(FileNotFoundError, match="pass config=ModelConfig"):
        load_encoder(tmp_path / "bare.safetensors")

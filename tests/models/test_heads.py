"""Task heads: pair features, attention pooling that ignores padding (checked against a brute-force softmax),
shapes of every head kind, linear export that reproduces the logits, and the multi-task model's modes."""

from __future__ import annotations

import math

import pytest
import torch

from umbif.models.heads import AttentionPool, MultiTaskModel, TaskHead, pair_features
from umbif.models.umbif import ModelConfig, UMBIFEncoder

E = 12


def _tokens(batch: int = 3, length: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, E, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 4:] = False  # exam 1 has 3 real tokens after CLS, then padding
    mask[2, 2:] = False
    return tokens, mask


def test_pair_features_are_baseline_followup_and_change() -> None:
    baseline, followup = torch.arange(6.0).reshape(2, 3), torch.full((2, 3), 10.0)
    x = pair_features(baseline, followup)
    assert x.shape == (2, 9)
    assert torch.equal(x[:, :3], baseline) and torch.equal(x[:, 3:6], followup)
    assert torch.equal(x[:, 6:], followup - baseline)
    with pytest.raises(ValueError, match="differ in shape"):
        pair_features(torch.zeros(2, 3), torch.zeros(2, 4))


@torch.no_grad()
def test_attention_pool_matches_a_brute_force_masked_softmax() -> None:
    torch.manual_seed(0)
    pool = AttentionPool(E, heads=2).eval()
    tokens, mask = _tokens()
    got = pool(tokens, mask)
    h, d = 2, E // 2
    for b in range(tokens.shape[0]):
        real = tokens[b, mask[b]]  # [m, E]
        kv = pool.kv(pool.norm(real))
        k, v = kv[:, :E], kv[:, E:]
        heads = []
        for i in range(h):
            q = pool.query[0, i, 0]
            scores = [float(q @ k[j, i * d : (i + 1) * d]) / math.sqrt(d) for j in range(len(real))]
            weights = torch.softmax(torch.tensor(scores), 0)
            heads.append((weights[:, None] * v[:, i * d : (i + 1) * d]).sum(0))
        expected = pool.proj(torch.cat(heads))
        torch.testing.assert_close(got[b], expected, atol=1e-5, rtol=1e-5)


def test_attention_pool_ignores_padding_values() -> None:
    pool = AttentionPool(E)
    tokens, mask = _tokens()
    changed = tokens.clone()
    changed[~mask] = 1e3  # garbage in the padding
    torch.testing.assert_close(pool(tokens, mask), pool(changed, mask))
    assert not torch.allclose(pool(tokens, mask)[1], pool(changed, None)[1])  # without the mask it would matter


@pytest.mark.parametrize("kind", ["linear", "mlp", "attention"])
@pytest.mark.parametrize("pair", [False, True])
def test_head_shapes_and_surface(kind: str, pair: bool) -> None:
    head = TaskHead(E, kind, pair=pair, hidden=16).eval()
    tokens, mask = _tokens()
    baseline = (tokens.flip(0), mask.flip(0)) if pair else (None, None)
    features = head.forward_features(tokens, mask, *baseline)
    assert features.shape == (3, 3 * E if pair else E) and head.features == features.shape[1]
    logits = head(tokens, mask, *baseline)
    assert logits.shape == (3,)
    torch.testing.assert_close(logits, head.forward_head(features))
    names = dict(head.named_parameters())
    assert head.no_weight_decay() <= set(names)


@pytest.mark.parametrize(("kind", "reads_tokens"), [("linear", False), ("mlp", False), ("attention", True)])
def test_cls_heads_read_the_cls_token_only(kind: str, reads_tokens: bool) -> None:
    head = TaskHead(E, kind, hidden=16).eval()
    tokens, mask = _tokens()
    other = tokens.clone()
    other[:, 1:] = torch.randn(other[:, 1:].shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(head(other, mask), head(tokens, mask)) != reads_tokens


def test_pair_head_needs_the_baseline() -> None:
    tokens, mask = _tokens()
    with pytest.raises(ValueError, match="baseline"):
        TaskHead(E, pair=True)(tokens, mask)


@pytest.mark.parametrize("pair", [False, True])
def test_linear_parameters_reproduce_the_logits(pair: bool) -> None:
    torch.manual_seed(1)
    head = TaskHead(E, "linear", pair=pair)
    torch.nn.init.normal_(head.classifier.fc.weight)
    tokens, mask = _tokens()
    weight, bias = head.linear_parameters()
    assert weight.shape == (3 * E if pair else E,) and bias.shape == (1,) and weight.dtype == torch.float32
    cls = tokens[:, 0]
    x = pair_features(cls.flip(0), cls) if pair else cls
    baseline = (tokens.flip(0), mask.flip(0)) if pair else (None, None)
    torch.testing.assert_close(head(tokens, mask, *baseline), x @ weight + bias)


@pytest.mark.parametrize("kind", ["mlp", "attention"])
def test_only_linear_heads_export(kind: str) -> None:
    with pytest.raises(ValueError, match="only linear heads"):
        TaskHead(E, kind).linear_parameters()


def test_unknown_head_is_named() -> None:
    with pytest.raises(ValueError, match="unknown head 'svm'"):
        TaskHead(E, "svm")  # type: ignore[arg-type]


def _encoder() -> UMBIFEncoder:
    torch.manual_seed(0)
    return UMBIFEncoder(ModelConfig(image_size=(16, 16, 16), patch_size=8, dim=E, depth=3, heads=2))


@pytest.mark.parametrize(
    ("mode", "blocks", "trainable"),
    [("full", 1, {"patch_embed", "seq_embed", "cls_token", "blocks.0", "blocks.1", "blocks.2", "norm"}),
     ("partial", 2, {"blocks.1", "blocks.2", "norm"}),
     ("frozen", 1, set())],
)  # fmt: skip
def test_modes_choose_what_trains(mode: str, blocks: int, trainable: set[str]) -> None:
    model = MultiTaskModel(_encoder(), {"idh": TaskHead(E)}, mode, blocks)  # type: ignore[arg-type]
    parts = {
        name.split(".")[0] if not name.startswith("blocks") else ".".join(name.split(".")[:2])
        for name, p in model.encoder.named_parameters()
        if p.requires_grad
    }
    assert parts == trainable
    assert all(p.requires_grad for p in model.heads.parameters())


def test_partial_mode_refuses_more_blocks_than_the_encoder_has() -> None:
    with pytest.raises(ValueError, match="3 blocks, got 4"):
        MultiTaskModel(_encoder(), {"idh": TaskHead(E)}, "partial", 4)


def test_multitask_forward_scores_exams_and_pairs() -> None:
    model = MultiTaskModel(_encoder(), {"idh": TaskHead(E), "outcome": TaskHead(E, pair=True)}).eval()
    g = torch.Generator().manual_seed(0)
    images, baselines = torch.randn(3, 4, 16, 16, 16, generator=g), torch.randn(1, 4, 16, 16, 16, generator=g)
    present = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    paired = torch.tensor([False, True, False])
    logits = model(images, present, paired, baselines, present[:1])
    assert logits.shape == (3, 2)
    assert torch.equal(logits[[0, 2], 1], torch.zeros(2))  # no pair, no outcome logit
    # the same numbers exam by exam: the packed batch does not mix exams
    followup_tokens = model.encoder.forward_tokens(images[1:2], present[1:2])
    alone = model.heads["outcome"](*followup_tokens, *model.encoder.forward_tokens(baselines, present[:1]))
    torch.testing.assert_close(logits[1, 1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[:, 0], model.heads["idh"](*model.encoder.forward_tokens(images, present)))
    with pytest.raises(ValueError, match="marked paired"):
        model(images, present, paired)

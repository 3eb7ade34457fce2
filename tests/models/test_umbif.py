"""UMBIF model: shapes, masking invariants, absent sequences, losses, bf16 and checkpointing (32^3, 8^3 patches)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from umbif.models.objectives import info_nce, reconstruction_loss
from umbif.models.pos_embed import sincos_pos_embed_3d
from umbif.models.umbif import ModelConfig, UMBIFPretrainer, patchify, random_masking, unpatchify

SMALL = {
    "image_size": (32, 32, 32),
    "patch_size": 8,
    "dim": 32,
    "depth": 2,
    "heads": 2,
    "decoder_dim": 24,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "proj_dim": 16,
}
L = 64  # (32 / 8)^3 patches per sequence
MIXED = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 1], [1, 0, 1, 0]], dtype=torch.bool)  # all / FLAIR only / T1+T2


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, **overrides})


def model(seed: int = 0, **overrides) -> UMBIFPretrainer:
    torch.manual_seed(seed)
    return UMBIFPretrainer(config(**overrides))


def exams(batch: int, seed: int = 0) -> torch.Tensor:
    """Smooth random volumes ``[B, 4, 32, 32, 32]`` (upsampled noise, so patches have structure)."""
    noise = torch.randn(batch, 4, 4, 4, 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(32, 32, 32), mode="trilinear")


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- config and helpers


def test_presets_fill_unset_fields_and_explicit_fields_win():
    base = ModelConfig(preset="base", mask_ratio=0.8)
    assert (base.dim, base.depth, base.heads, base.mask_ratio) == (768, 12, 12, 0.8)
    assert ModelConfig(preset="large", depth=2).depth == 2
    assert ModelConfig.model_validate(base.to_dict()) == base  # a saved config reloads to itself
    assert ModelConfig().grid == (6, 6, 6) and ModelConfig().num_patches == 216


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": (30, 32, 32)}, "multiple of patch_size"),
        ({"dim": 33}, "divisible by heads"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"preset": "huge"}, "unknown preset"),
        ({"objective": "simclr"}, "objective"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_patchify_is_row_major_and_unpatchify_inverts_it():
    images = torch.randn(2, 4, 32, 16, 24)
    patches = patchify(images, 8)  # grid (4, 2, 3)
    assert patches.shape == (2, 4, 24, 512)
    torch.testing.assert_close(patches[1, 2, 0], images[1, 2, :8, :8, :8].reshape(-1))
    torch.testing.assert_close(patches[1, 2, 1], images[1, 2, :8, :8, 8:16].reshape(-1))  # z runs fastest
    torch.testing.assert_close(patches[1, 2, 3], images[1, 2, :8, 8:16, :8].reshape(-1))
    assert torch.equal(unpatchify(patches, 8, (4, 2, 3)), images)


@pytest.mark.parametrize("dim", [24, 64, 1024])
def test_sincos_position_embedding_distinguishes_every_position(dim):
    pos = sincos_pos_embed_3d(dim, (4, 3, 5))
    assert pos.shape == (60, dim) and pos.isfinite().all()
    assert torch.cdist(pos, pos).add(torch.eye(60)).min() > 1e-3  # no two positions alike


# ----------------------------------------------------------------------------- masking


PRESENT_PATTERNS = torch.tensor(
    [[1, 1, 1, 1], [1, 0, 0, 0], [0, 1, 0, 1], [1, 1, 1, 0], [0, 0, 0, 1], [1, 0, 1, 1]], dtype=torch.bool
)


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5, 0.75, 0.99])
@pytest.mark.parametrize("sequence_mask_prob", [0.0, 0.5, 1.0])
def test_masking_keeps_a_fixed_share_of_present_tokens(mask_ratio, sequence_mask_prob):
    present = PRESENT_PATTERNS.repeat(20, 1)  # [120, 4]
    keep = random_masking(present, L, mask_ratio, sequence_mask_prob, generator(1))
    present_tokens = present.repeat_interleave(L, dim=1)
    assert keep.shape == (120, 4 * L)
    assert not (keep & ~present_tokens).any()  # only present tokens are ever visible
    n_present = present.sum(1)
    target = torch.round((1 - mask_ratio) * n_present * L).long().clamp(min=1)
    visible_per_sequence = keep.view(120, 4, L).sum(2)  # [B, S]
    hidden_whole = (present & (visible_per_sequence == 0)).sum(1)  # present sequences with nothing visible
    one_sequence_hidden = (n_present - 1) * L  # tokens left when a whole sequence is hidden
    expected = torch.where(hidden_whole > 0, torch.minimum(target, one_sequence_hidden), target)
    if mask_ratio < 0.9:  # at 0.99 whole sequences also go empty by chance
        assert torch.equal(keep.sum(1), expected)
    assert (keep.sum(1) >= 1).all()  # never all hidden
    assert (hidden_whole[n_present == 1] == 0).all()  # a single sequence is never hidden whole


def test_whole_sequence_masking_hides_exactly_one_present_sequence():
    present = PRESENT_PATTERNS.repeat(10, 1)
    keep = random_masking(present, L, 0.0, 1.0, generator(2)).view(-1, 4, L)  # no patch masking
    per_sequence = keep.sum(2)  # [B, S]
    several = present.sum(1) >= 2
    hidden = present & (per_sequence == 0)
    assert torch.equal(hidden.sum(1), several.long())  # exactly one if >= 2 present, else none
    assert (per_sequence[present & ~hidden] == L).all()  # every other present sequence fully visible
    assert (per_sequence[~present] == 0).all()
    assert len({tuple(row) for row in hidden[present.all(1)].int().tolist()}) > 1  # the hidden one varies


def test_masking_is_reproducible_with_a_generator():
    a = random_masking(MIXED, L, 0.75, 0.5, generator(3))
    b = random_masking(MIXED, L, 0.75, 0.5, generator(3))
    assert torch.equal(a, b) and not torch.equal(a, random_masking(MIXED, L, 0.75, 0.5, generator(4)))


# ----------------------------------------------------------------------------- encoder


def test_encoder_shapes_and_padding():
    encoder = model().encoder.eval()
    images = exams(3)
    tokens, token_mask = encoder.forward_tokens(images, MIXED)
    assert tokens.shape == (3, 1 + 4 * L, 32)
    assert torch.equal(token_mask.sum(1), torch.tensor([1 + 4 * L, 1 + L, 1 + 2 * L]))  # absent tokens removed
    keep = random_masking(MIXED, L, 0.75, 0.0, generator())
    tokens, token_mask = encoder.forward_tokens(images, MIXED, keep)
    assert tokens.shape == (3, 1 + 64, 32) and torch.equal(token_mask.sum(1), 1 + keep.sum(1))
    assert encoder(images, MIXED).shape == (3, 32)


def test_absent_sequences_have_no_effect():
    pretrainer = model()
    flair_only = torch.tensor([[0, 0, 0, 1]], dtype=torch.bool)
    zeros = exams(1)
    zeros[:, :3] = 0
    noise = zeros.clone()
    noise[:, :3] = torch.randn(1, 3, 32, 32, 32) * 100
    encoder = pretrainer.encoder.eval()
    torch.testing.assert_close(encoder(zeros, flair_only), encoder(noise, flair_only), rtol=0, atol=1e-6)
    losses = [pretrainer(x, x.flip(2), flair_only, generator(5))["loss"] for x in (zeros, noise)]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)


def test_a_batch_of_different_subsets_equals_one_exam_at_a_time():
    encoder = model().encoder.eval()
    images = exams(3)
    keep = random_masking(MIXED, L, 0.75, 0.5, generator(6))
    batched = encoder(images, MIXED)
    batched_masked = encoder.forward_tokens(images, MIXED, keep)[0][:, 0]
    for i in range(3):
        one = slice(i, i + 1)
        torch.testing.assert_close(batched[one], encoder(images[one], MIXED[one]), rtol=1e-4, atol=1e-5)
        alone = encoder.forward_tokens(images[one], MIXED[one], keep[one])[0][:, 0]
        torch.testing.assert_close(batched_masked[one], alone, rtol=1e-4, atol=1e-5)


def test_inputs_are_checked():
    encoder = model().encoder
    with pytest.raises(ValueError, match="images must be"):
        encoder(torch.zeros(1, 4, 16, 32, 32), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"exams \[1\] .* no present sequence"):
        encoder(exams(2), torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))


# ----------------------------------------------------------------------------- losses


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, t: float, negatives: np.ndarray | None = None) -> float:
    """InfoNCE written out anchor by anchor in NumPy."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    bank = np.zeros((0, z.shape[1])) if negatives is None else negatives / np.linalg.norm(negatives, axis=1)[:, None]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        others = [z[i] @ z[j] / t for j in range(2 * n) if j != i] + [z[i] @ q / t for q in bank]
        total += np.log(np.sum(np.exp(others))) - z[i] @ z[(i + n) % (2 * n)] / t
    return total / (2 * n)


def test_info_nce_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    z1, z2, queue = rng.normal(size=(5, 8)), rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    t1, t2, tq = (torch.from_numpy(a).float() for a in (z1, z2, queue))
    got = info_nce(t1, t2, 0.2)
    assert got.item() == pytest.approx(nt_xent_reference(z1, z2, 0.2), rel=1e-5)
    got = info_nce(t1, t2, 0.2, queue=tq[:3], extra_negatives=tq[3:])
    assert got.item() == pytest.approx(nt_xent_reference(z1, z2, 0.2, queue), rel=1e-5)


@pytest.mark.parametrize("batch", [2, 8])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_info_nce_closed_forms(batch, temperature):
    eye = torch.eye(32)
    # collapse: every embedding the same -> all 2B - 1 candidates tie
    same = torch.ones(batch, 32)
    assert info_nce(same, same, temperature).item() == pytest.approx(math.log(2 * batch - 1), rel=1e-5)
    # perfect: each exam's two views agree, exams orthogonal -> log(1 + (2B - 2) e^(-1/t))
    views = eye[:batch]
    perfect = math.log(1 + (2 * batch - 2) * math.exp(-1 / temperature))
    assert info_nce(views, views, temperature).item() == pytest.approx(perfect, rel=1e-4, abs=1e-6)
    # K orthogonal queue entries add K more candidates at similarity 0; extra negatives count the same
    queue = eye[batch : batch + 5]
    with_queue = math.log(1 + (2 * batch - 2 + 5) * math.exp(-1 / temperature))
    expected = pytest.approx(with_queue, rel=1e-4, abs=1e-6)
    assert info_nce(views, views, temperature, queue=queue).item() == expected
    assert info_nce(views, views, temperature, extra_negatives=queue).item() == expected
    # negatives that look like the anchors make the task harder
    assert info_nce(views, views, temperature, queue=views).item() > perfect + 0.1


def test_reconstruction_loss_scores_only_masked_tokens():
    target = torch.randn(2, 6, 10) * 5 + 3
    normalised = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    loss_mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    pred = torch.where(loss_mask[..., None], normalised, torch.randn(2, 6, 10))  # right where scored
    assert reconstruction_loss(pred, target, loss_mask).item() == pytest.approx(0.0, abs=1e-8)
    assert reconstruction_loss(target, target, loss_mask, norm_pix=False).item() == 0.0
    off = pred.clone()
    off[0, 0] += 1.0
    assert reconstruction_loss(off, target, loss_mask).item() == pytest.approx(1.0 / 3)  # 1 of 3 scored tokens


# ----------------------------------------------------------------------------- pretrainer


def test_objectives():
    images = exams(2)
    present = MIXED[:2]
    mae = model(objective="mae")
    out = mae(images, None, present, generator())
    assert mae.projector is None and out["loss_con"].item() == 0.0 and out["loss"] == out["loss_rec"]
    contrastive = model(objective="contrastive")
    out = contrastive(images, images.flip(2), present, generator())
    assert contrastive.decoder is None and out["loss_rec"].item() == 0.0 and out["loss_con"] > 0
    with pytest.raises(ValueError, match="no decoder"):
        contrastive.reconstruct(images, present)
    hybrid = model(lambda_con=0.5)
    out = hybrid(images, images.flip(2), present, generator())
    torch.testing.assert_close(out["loss"], out["loss_rec"] + 0.5 * out["loss_con"])
    with pytest.raises(ValueError, match="needs two views"):
        hybrid(images, None, present)


def test_queue_is_a_fifo_of_past_projections_used_as_negatives():
    images, present = exams(2), MIXED[:2]
    pretrainer = model(queue_size=6)
    first = pretrainer(images, images.flip(2), present, generator(7))
    assert int(pretrainer.queue_count) == 4 and int(pretrainer.queue_ptr) == 4  # 2 exams x 2 views
    with torch.no_grad():
        pretrainer(images, images.flip(2), present, generator(8))
    assert int(pretrainer.queue_count) == 6 and int(pretrainer.queue_ptr) == 2  # wrapped round
    torch.testing.assert_close(pretrainer.queue.norm(dim=1), torch.ones(6))
    again = pretrainer(images, images.flip(2), present, generator(7))  # same masks, now 6 more negatives
    assert again["loss_con"] > first["loss_con"]
    again["loss"].backward()  # the queue was read before this step wrote to it
    pretrainer.eval()
    pretrainer(images, images.flip(2), present, generator(7))
    assert int(pretrainer.queue_ptr) == 0  # the training step above wrote slots 2-5; eval writes nothing


def test_gathered_negatives_enter_the_contrastive_loss():
    images, present = exams(2), MIXED[:2]
    pretrainer = model()
    seen = []

    def gather(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.shape)
        return z.detach()  # as if another rank held the same exams: hard negatives

    alone = pretrainer(images, images.flip(2), present, generator(11))
    gathered = pretrainer(images, images.flip(2), present, generator(11), gather_negatives=gather)
    assert seen == [(4, 16)] and gathered["loss_con"] > alone["loss_con"]
    torch.testing.assert_close(gathered["loss_rec"], alone["loss_rec"])


def test_overfitting_two_exams_lowers_the_loss():
    pretrainer = model(norm_pix_loss=False)
    images, present = exams(2), torch.tensor([[1, 1, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    optimizer = torch.optim.AdamW(pretrainer.parameters(), lr=3e-3)
    rng = generator(9)
    history = []
    for _ in range(50):
        out = pretrainer(images, images.flip(2), present, rng)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append([out["loss"].item(), out["loss_rec"].item()])
    first, last = np.mean(history[:5], axis=0), np.mean(history[-5:], axis=0)
    assert last[0] < 0.6 * first[0]
    assert last[1] < 0.9 * first[1]  # reconstruction improves too, not only the easy 2-exam contrast


def test_bf16_autocast_on_cpu_gives_finite_loss_and_gradients():
    pretrainer = model()
    images = exams(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pretrainer(images, images.flip(2), MIXED, generator())
    out["loss"].backward()
    assert all(v.isfinite() for v in out.values())
    grads = [p.grad for p in pretrainer.parameters()]
    assert all(g is not None and g.isfinite().all() for g in grads)
    assert pretrainer.encoder.patch_embed[3].weight.grad.abs().sum() > 0


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    images = exams(3)
    results = []
    for checkpointing in (False, True):
        pretrainer = model(grad_checkpointing=checkpointing)
        out = pretrainer(images, images.flip(2), MIXED, generator(10))
        out["loss"].backward()
        results.append((out["loss"], {n: p.grad for n, p in pretrainer.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], msg=name)


def test_reconstruct_returns_volumes_and_the_mask():
    pretrainer = model().eval()
    images = exams(3)
    pred, masked = pretrainer.reconstruct(images, MIXED, generator())
    assert pred.shape == masked.shape == images.shape
    assert (pred[~MIXED] == 0).all() and (masked[~MIXED] == 0).all()
    share = masked.mean((2, 3, 4))[MIXED]  # hidden share per present sequence
    assert 0.3 < share.mean() < 1.0
    assert set(masked.unique().tolist()) <= {0.0, 1.0}


def test_no_weight_decay_names_exist():
    pretrainer = model()
    names = dict(pretrainer.named_parameters())
    assert pretrainer.no_weight_decay() <= names.keys()
    assert "encoder.cls_token" in pretrainer.no_weight_decay()

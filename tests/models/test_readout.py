"""The lesion-aware readout and the patch-statistics reconstruction target."""

from __future__ import annotations

import pytest
import torch

from umbif.models.objectives import patch_stats, reconstruction_loss
from umbif.models.readout import compartment_fractions, pool_tokens, readout_features, token_grid
from umbif.models.umbif import ModelConfig, UMBIFEncoder, UMBIFPretrainer


def _encoder(seed: int = 0) -> UMBIFEncoder:
    torch.manual_seed(seed)
    return UMBIFEncoder(ModelConfig(image_size=(16, 16, 16), patch_size=8)).eval()


def test_compartment_fractions_are_patch_shares_of_core_and_oedema():
    seg = torch.zeros(1, 16, 16, 16, dtype=torch.uint8)
    seg[0, :8, :8, :8] = 4  # patch 0 all enhancing
    seg[0, :4, :8, 8:] = 1  # patch 1 half necrotic
    seg[0, 8:, 8:, 8:] = 2  # patch 7 all oedema
    fractions = compartment_fractions(seg, 8)
    assert fractions.shape == (1, 2, 8)
    assert fractions[0, 0].tolist() == [1.0, 0.5, 0, 0, 0, 0, 0, 0]
    assert fractions[0, 1].tolist() == [0, 0, 0, 0, 0, 0, 0, 1.0]


def test_pooling_weights_tokens_by_share_and_averages_present_sequences():
    grid = torch.arange(2 * 4 * 3 * 1, dtype=torch.float32).view(2, 4, 3, 1)  # [B, S, L, E]
    present = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    weights = torch.tensor([[[1.0, 0.0, 1.0]], [[0.0, 0.0, 0.0]]])  # [B, K=1, L]
    pooled, empty = pool_tokens(grid, present, weights)
    # exam 0: sequences 0 and 1, patches 0 and 2 -> mean of (0, 2) and (3, 5)
    assert pooled[0, 0, 0].item() == pytest.approx((0 + 2 + 3 + 5) / 4)
    # exam 1: no weight -> the mean of all its tokens (fallback), flagged
    assert pooled[1, 0, 0].item() == pytest.approx(grid[1].mean().item())
    assert empty.tolist() == [[False], [True]]


def test_lesion_readout_pools_the_encoder_tokens_inside_the_lesion():
    encoder = _encoder()
    images, present = torch.randn(2, 4, 16, 16, 16), torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]]).bool()
    seg = torch.zeros(2, 16, 16, 16, dtype=torch.uint8)
    seg[:, :8, :8, :8] = 4
    seg[:, 8:, :8, :8] = 2
    features, fallback = readout_features(encoder, images, present, seg, "lesion")
    assert features.shape == (2, 3 * 96) and fallback.tolist() == [False, False]
    cls, grid = token_grid(encoder, images, present)
    # core token of exam 1 = mean over its present sequences of the token of patch 0
    expected = grid[1, [0, 2, 3], 0].mean(0)
    torch.testing.assert_close(features[1, :96], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features[:, 192:], cls, rtol=1e-5, atol=1e-5)
    assert torch.equal(readout_features(encoder, images, present, None, "cls")[0], encoder(images, present))


def test_lesion_readout_without_segmentation_falls_back_and_says_so():
    encoder = _encoder()
    images, present = torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4, dtype=torch.bool)
    features, fallback = readout_features(encoder, images, present, None, "lesion")
    _, grid = token_grid(encoder, images, present)
    assert fallback.tolist() == [True]
    torch.testing.assert_close(features[0, :96], grid[0].mean((0, 1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown readout"):
        readout_features(encoder, images, present, None, "mean")


def test_stats_loss_scores_the_patch_mean_and_log_std():
    target = torch.randn(1, 3, 8) * 2 + 5
    loss_mask = torch.tensor([[True, True, False]])
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    exact = torch.cat([normed, patch_stats(target)], dim=-1)
    assert reconstruction_loss(exact, target, loss_mask, stats_loss=1.0).item() == pytest.approx(0.0, abs=1e-6)
    off = exact.clone()
    off[..., -2] += 2.0  # every patch mean off by 2 -> (4 + 0) / 2 per token, times the weight
    assert reconstruction_loss(off, target, loss_mask, stats_loss=0.5).item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(patch_stats(target)[..., 0], target.mean(-1))


def test_pretrainer_with_stats_loss_trains_and_previews():
    torch.manual_seed(0)
    model = UMBIFPretrainer(ModelConfig(image_size=(16, 16, 16), patch_size=8, stats_loss=1.0))
    assert model.decoder.pred.out_features == 8**3 + 2
    images, present = torch.randn(2, 4, 16, 16, 16), torch.ones(2, 4, dtype=torch.bool)
    out = model(images, images.flip(2), present)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    pred, masked = model.reconstruct(images, present)
    assert pred.shape == images.shape == masked.shape
    with pytest.raises(ValueError, match="non-negative"):
        ModelConfig(stats_loss=-1.0)

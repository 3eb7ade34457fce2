"""Model sizes: the memory estimate is what building the model allocates, and every preset fits the bounds."""

from __future__ import annotations

import pytest

from umbif.models.sizes import MAX_WEIGHT_BYTES, weight_bytes
from umbif.models.umbif import PRESETS, ModelConfig, UMBIFPretrainer


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(image_size=(32, 32, 8), patch_size=8, mlp_ratio=2.5),
        ModelConfig(preset="small", objective="contrastive", queue_size=32),
        ModelConfig(objective="mae", image_size=(48, 32, 32)),
    ],
)
def test_the_estimate_is_exactly_the_float32_weights_and_buffers(config: ModelConfig) -> None:
    model = UMBIFPretrainer(config)
    floats = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    assert weight_bytes(config) == config.weight_bytes() == 4 * sum(t.numel() for t in floats)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_fits_on_a_large_grid(preset: str) -> None:
    config = ModelConfig(preset=preset, image_size=(256, 256, 256))  # 4096 patches of 16^3 per sequence
    assert config.weight_bytes() < MAX_WEIGHT_BYTES / 4

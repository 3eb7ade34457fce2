from __future__ import annotations

import pytest
import torch

from umbif.train.augment import AugmentConfig, augment, random_crop

# nothing happens unless a test switches it on
OFF = AugmentConfig(crop=None, flip_prob=0.0, gamma_prob=0.0, bias_prob=0.0, intensity_prob=0.0, noise_prob=0.0)
ALL_ON = AugmentConfig(crop=(6, 5, 4), flip_axes=(0, 1, 2), flip_prob=1.0, gamma_prob=1.0, bias_prob=1.0,
                       intensity_prob=1.0, noise_prob=1.0, noise_std=(0.2, 0.3))  # fmt: skip


def _batch(seed: int = 0, shape: tuple[int, int, int] = (8, 7, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    """Three z-scored-looking exams, float16, zero background around a box of brain; exam 1 lacks T1c
    and FLAIR, exam 2 lacks T2."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 4, *shape, generator=g)
    images[:, :, :1] = 0  # background slab
    present = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    images[~present] = 0
    return images.half(), present


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_generator_seed_same_views():
    images, present = _batch()
    first = augment(images, present, ALL_ON, _gen(1))
    assert first.dtype == torch.float32 and first.shape == (3, 4, 6, 5, 4)
    assert torch.equal(first, augment(images, present, ALL_ON, _gen(1)))
    assert not torch.equal(first, augment(images, present, ALL_ON, _gen(2)))


def test_nothing_switched_on_is_identity():
    images, present = _batch()
    assert torch.equal(augment(images, present, OFF, _gen()), images.float())


SHIFT = OFF.model_copy(update={"intensity_prob": 1.0, "shift": (0.5, 1.0)})
NOISE = OFF.model_copy(update={"noise_prob": 1.0, "noise_std": (1.0, 1.0)})
GAMMA_BIAS = OFF.model_copy(update={"bias_prob": 1.0, "gamma_prob": 1.0})


@pytest.mark.parametrize("config", [ALL_ON, SHIFT, NOISE, GAMMA_BIAS], ids=["all", "shift", "noise", "gamma-bias"])
@pytest.mark.parametrize("keep_background", [True, False])
def test_absent_sequences_stay_zero(config, keep_background):
    images, present = _batch()
    out = augment(images, present, config.model_copy(update={"keep_background": keep_background}), _gen())
    assert (out[~present] == 0).all()
    assert ((out[present] != 0).float().mean(dim=(1, 2, 3)) > 0.5).all()  # present sequences keep their signal


@pytest.mark.parametrize("config", [SHIFT, NOISE, GAMMA_BIAS], ids=["shift", "noise", "gamma-bias"])
@pytest.mark.parametrize("keep_background", [True, False])
def test_background_stays_zero_when_asked(config, keep_background):
    images, present = _batch()
    out = augment(images, present, config.model_copy(update={"keep_background": keep_background}), _gen())
    slab = out[present][:, 0]  # the zero background slab of the present sequences
    assert bool((slab == 0).all()) is keep_background


def test_crop_is_one_box_per_exam_for_all_channels():
    grid = torch.arange(10 * 9 * 8, dtype=torch.float32).reshape(10, 9, 8)
    images = torch.stack([torch.stack([grid + 1000 * c for c in range(4)])] * 5)  # [5, 4, 10, 9, 8]
    out = random_crop(images, (4, 3, 2), _gen())
    assert out.shape == (5, 4, 4, 3, 2)
    starts = set()
    for exam in out:
        x, rest = divmod(int(exam[0, 0, 0, 0]), 9 * 8)
        y, z = divmod(rest, 8)
        starts.add((x, y, z))
        for c in range(4):
            assert torch.equal(exam[c], grid[x : x + 4, y : y + 3, z : z + 2] + 1000 * c)
    assert len(starts) > 1  # exams get their own boxes
    with pytest.raises(ValueError, match="larger than the image grid"):
        random_crop(images, (11, 3, 2), _gen())


@pytest.mark.parametrize("axes", [(0,), (1, 2)])
def test_flips_mirror_the_chosen_axes(axes):
    images, present = _batch()
    out = augment(images, present, OFF.model_copy(update={"flip_axes": axes, "flip_prob": 1.0}), _gen())
    assert torch.equal(out, images.float().flip([2 + a for a in axes]))


def test_scale_and_shift_are_affine_per_sequence():
    images, present = _batch()
    config = OFF.model_copy(update={"intensity_prob": 1.0, "scale": (0.5, 1.5), "shift": (-1.0, 1.0)})
    out = augment(images, present, config, _gen())
    x, y = images.float()[:, :, 1:], out[:, :, 1:]  # foreground
    scale = (y[..., 1] - y[..., 0]) / (x[..., 1] - x[..., 0])
    scale = scale.flatten(2).median(dim=2).values  # [B, C]
    shift = (y - scale[:, :, None, None, None] * x).flatten(2).median(dim=2).values
    fitted = scale[:, :, None, None, None] * x + shift[:, :, None, None, None]
    torch.testing.assert_close(torch.where(present[:, :, None, None, None], fitted, 0.0), y, atol=1e-4, rtol=1e-4)
    assert ((scale[present] >= 0.5) & (scale[present] <= 1.5)).all()
    assert ((shift[present] >= -1) & (shift[present] <= 1)).all()
    assert len(set(scale[0].tolist())) == 4  # drawn per sequence


def test_gamma_keeps_the_range_and_order_of_each_sequence():
    images, present = _batch()
    config = OFF.model_copy(update={"gamma_prob": 1.0, "gamma": (2.0, 2.0)})
    x, y = (
        images.float()[present][:, 1:].flatten(1),
        augment(images, present, config, _gen())[present][:, 1:].flatten(1),
    )
    torch.testing.assert_close(y.amin(1), x.amin(1))
    torch.testing.assert_close(y.amax(1), x.amax(1))
    assert (y.gather(1, x.argsort(1)).diff(dim=1) >= 0).all()  # order kept
    assert not torch.allclose(x, y)


def test_bias_field_is_smooth_and_multiplicative():
    images = torch.full((1, 1, 16, 16, 16), 3.0)
    images[..., :8] = 1.0  # two tissues: the low one maps to 0 in the unit range, the high one to 1
    config = OFF.model_copy(update={"bias_prob": 1.0, "bias_strength": 0.5, "bias_grid": 3, "keep_background": False})
    out = augment(images, torch.ones(1, 1, dtype=torch.bool), config, _gen())
    assert torch.equal(out[..., :8], images[..., :8])
    log_gain = ((out[..., 8:] - 1.0) / 2.0).log()  # the field, where the unit-range copy is 1
    assert log_gain.amax() - log_gain.amin() > 0.3
    assert all(log_gain.diff(dim=d).abs().max() < 0.4 for d in (2, 3, 4))  # smooth: small steps between voxels


def test_noise_has_the_drawn_strength_in_the_foreground_only():
    images, present = _batch(shape=(16, 16, 16))
    out = augment(images, present, OFF.model_copy(update={"noise_prob": 1.0, "noise_std": (0.5, 0.5)}), _gen())
    residual = (out - images.float())[present][:, 1:]
    assert abs(residual.std().item() - 0.5) < 0.02
    assert (out[:, :, 0] == 0).all()


def test_two_draws_from_one_generator_differ_but_share_shape():
    """The two views of the contrastive objectives: augment twice from one generator."""
    images, present = _batch()
    generator = _gen()
    first, second = augment(images, present, ALL_ON, generator), augment(images, present, ALL_ON, generator)
    assert first.shape == second.shape == (3, 4, 6, 5, 4)
    assert not torch.equal(first, second)


@pytest.mark.parametrize(
    "update",
    [{"flip_prob": 1.5}, {"gamma": (2.0, 1.0)}, {"gamma": (0.0, 1.0)}, {"flip_axes": (3,)}, {"crop": (0, 4, 4)}],
)
def test_bad_config_is_refused(update):
    with pytest.raises(ValueError):
        AugmentConfig(**update)


def test_bad_shapes_are_refused():
    images, present = _batch()
    with pytest.raises(ValueError, match=r"present \[B, C\]"):
        augment(images, present[:, :3], OFF, _gen())

"""MRI augmentations for pretraining, computed on the fly on a batch of cached exams.

Hand-written in torch rather than MONAI's transforms because they work on a whole batch
``[B, C, X, Y, Z]`` at once (on the GPU when the batch is there), draw every random number from one
``torch.Generator`` (so a run is reproducible and its state can be checkpointed), and know which
sequences are absent: absent channels are zero on the way in and stay exactly zero on the way out.

The cached images are z-scored inside the brain and zero outside it (``umbif preprocess``), so by
default (``keep_background``) voxels that are exactly 0 are treated as background and stay 0 too.

Order: random crop → flips → gamma and bias field → per-sequence scale and shift → Gaussian noise. Pretraining
cuts its crops in the loader (:mod:`umbif.train.views`, with the box arithmetic of :func:`crop_starts`) and runs
the rest here with ``crop=None``.

Gamma and the bias field need positive intensities, which z-scored data are not: both are applied to
a copy rescaled to [0, 1] per exam and sequence (min and max over the foreground) and mapped back
with the same min and max, so the intensity range of each sequence is kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import field_validator, model_validator

from umbif.config import FrozenConfig


class AugmentConfig(FrozenConfig):
    """What :func:`augment` does; every probability is drawn per exam, independently."""

    crop: tuple[int, int, int] | None = (64, 64, 64)  # random box per exam (same for its sequences); None: no crop
    flip_axes: tuple[int, ...] = (0,)  # spatial axes that may be mirrored; 0 is left-right in the RAS cache
    flip_prob: float = 0.5  # probability of mirroring, per exam and axis
    gamma_prob: float = 0.3  # probability of a gamma change (same exponent for all sequences of an exam)
    gamma: tuple[float, float] = (0.7, 1.5)  # exponent range, drawn log-uniformly
    bias_prob: float = 0.3  # probability of a smooth multiplicative bias field (one per sequence)
    bias_strength: float = 0.3  # std of the log gain at the coarse control points (0.3: gains of about 0.75-1.35)
    bias_grid: int = 4  # control points per axis, upsampled trilinearly: the field varies over ~1/3 of the image
    intensity_prob: float = 0.8  # probability of a scale and shift, drawn per sequence
    scale: tuple[float, float] = (0.9, 1.1)  # multiplicative factor range
    shift: tuple[float, float] = (-0.1, 0.1)  # additive offset range, in z-score units
    noise_prob: float = 0.2  # probability of additive Gaussian noise
    noise_std: tuple[float, float] = (0.0, 0.1)  # noise standard deviation range, in z-score units
    keep_background: bool = True  # voxels that are exactly 0 (outside the brain mask) stay 0

    @field_validator("flip_prob", "gamma_prob", "bias_prob", "intensity_prob", "noise_prob")
    @classmethod
    def _probability(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"probabilities must be between 0 and 1, got {v}")
        return v

    @field_validator("gamma", "scale", "shift", "noise_std")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"a range is (low, high) with low <= high, got {v}")
        return v

    @field_validator("crop")
    @classmethod
    def _crop(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError(f"crop sizes must be positive, got {v}")
        return v

    @field_validator("flip_axes")
    @classmethod
    def _axes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(a not in (0, 1, 2) for a in v) or len(set(v)) != len(v):
            raise ValueError(f"flip_axes are distinct spatial axes among 0, 1, 2, got {v}")
        return v

    @model_validator(mode="after")
    def _positive(self) -> AugmentConfig:
        if self.gamma[0] <= 0 or self.scale[0] < 0 or self.noise_std[0] < 0 or self.bias_strength < 0:
            raise ValueError("gamma must be positive; scale, noise_std and bias_strength must not be negative")
        if self.bias_grid < 2:
            raise ValueError(f"bias_grid must be at least 2, got {self.bias_grid}")
        return self


def _device(generator: torch.Generator | None) -> torch.device | None:
    return generator.device if generator is not None else None


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=_device(generator))


def _happens(batch: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """[B] bool, each True with probability ``p`` (drawn even when p is 0 or 1, to keep the stream fixed)."""
    return _uniform((batch,), 0.0, 1.0, generator) < p


def tumour_box_centre(seg: torch.Tensor) -> torch.Tensor | None:
    """Centre of the bounding box of the non-zero voxels of ``seg`` ``[X, Y, Z]`` (``[3]`` float64 voxel
    coordinates, the ``centres`` of :func:`crop_starts`), or None when it has none."""
    occupied = seg != 0
    spans = [torch.nonzero(occupied.any(dim=tuple(a for a in range(3) if a != axis))).flatten() for axis in range(3)]
    if not spans[0].numel():
        return None
    return torch.tensor([(float(s[0]) + float(s[-1])) / 2 for s in spans], dtype=torch.float64)


def crop_starts(
    draws: torch.Tensor,
    grid: tuple[int, ...],
    size: tuple[int, int, int],
    centres: torch.Tensor | None = None,
    jitter: int = 0,
) -> list[list[int]]:
    """The first voxel of a box of ``size`` in ``grid``, per box, from uniform draws.

    Pure: the same draws give the same boxes wherever they are made (the loader's worker or the device).

    Args:
        draws: ``[B, 3]`` uniform numbers in ``[0, 1)``, one per box and axis.
        grid: the image size per spatial axis.
        size: the box size per spatial axis, at most ``grid``.
        centres: optional ``[B, 3]`` voxel coordinates (e.g. of each exam's tumour): the box is centred
            there, moved by a whole number of voxels in ``[-jitter, jitter]`` per axis (from the draws), and
            shifted back inside the grid where it would stick out. A box of at least ``extent + 2 * jitter + 1``
            voxels per axis then holds a whole object of that extent centred at ``centres``.
        jitter: see ``centres``.

    Returns:
        ``B`` lists ``[x, y, z]``.
    """
    if any(c > s for c, s in zip(size, grid, strict=True)):
        raise ValueError(f"crop {tuple(size)} is larger than the image grid {tuple(grid)}; lower AugmentConfig.crop")
    room = torch.tensor([s - c + 1 for s, c in zip(grid, size, strict=True)], dtype=torch.float64)
    draws = draws.double().cpu()  # [B, 3]
    if centres is None:
        return (draws * room).floor().long().tolist()
    if jitter < 0 or tuple(centres.shape) != tuple(draws.shape):
        raise ValueError(f"centres must be [B, 3] = [{draws.shape[0]}, 3] and jitter >= 0, got "
                         f"{list(centres.shape)} and {jitter}")  # fmt: skip
    offset = (draws * (2 * jitter + 1)).floor() - jitter  # [B, 3] whole voxels in [-jitter, jitter]
    half = (torch.tensor(size, dtype=torch.float64) - 1) / 2
    starts = (centres.double().cpu() - half + offset).floor()
    return torch.minimum(starts.clamp_min(0), room - 1).long().tolist()


def random_crop(
    images: torch.Tensor,
    size: tuple[int, int, int],
    generator: torch.Generator | None = None,
    centres: torch.Tensor | None = None,
    jitter: int = 0,
) -> torch.Tensor:
    """A random box of ``size`` per exam, the same box for all its channels.

    Args:
        images: ``[B, C, X, Y, Z]``.
        size: crop size per spatial axis, at most the image size.
        generator: source of the box positions.
        centres, jitter: boxes centred on these ``[B, 3]`` voxels, give or take ``jitter`` (see :func:`crop_starts`).

    Returns:
        ``[B, C, *size]``, a copy.
    """
    draws = _uniform((images.shape[0], 3), 0.0, 1.0, generator)  # [B, 3], the same stream on any device
    starts = crop_starts(draws, tuple(images.shape[2:]), size, centres, jitter)
    # slicing views per exam and one stack is cheaper and clearer than a gather over index grids
    cx, cy, cz = size
    boxes = zip(images, starts, strict=True)
    return torch.stack([img[:, x : x + cx, y : y + cy, z : z + cz] for img, (x, y, z) in boxes])


def _bias_field(
    shape: torch.Size, strength: float, grid: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Smooth positive gain ``[B, C, X, Y, Z]``: exp of coarse Gaussian noise, upsampled trilinearly."""
    coarse = strength * torch.randn((*shape[:2], grid, grid, grid), generator=generator, device=_device(generator))
    return torch.exp(F.interpolate(coarse.to(device), size=tuple(shape[2:]), mode="trilinear", align_corners=True))


def augment(
    images: torch.Tensor,
    present: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
    centres: torch.Tensor | None = None,
    jitter: int = 0,
) -> torch.Tensor:
    """One random augmentation of each exam of a batch.

    Args:
        images: ``[B, C, X, Y, Z]`` (any float type; channels in canonical sequence order).
        present: ``[B, C]`` bool, which sequences each exam has.
        config: what to do and how strongly.
        generator: every random number comes from it (``None``: torch's global generator). Use one on the
            images' device: noise and bias fields are drawn on the generator's device.
        centres, jitter: crop boxes centred on these ``[B, 3]`` voxels, give or take ``jitter`` (see
            :func:`random_crop`); needs ``config.crop``.

    Returns:
        ``[B, C, *crop]`` float32; channels of absent sequences are zero.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> out = augment(batch["image"], batch["present"], AugmentConfig(crop=(64, 64, 64)), g)
    """
    if images.dim() != 5 or present.shape != images.shape[:2]:
        raise ValueError(
            f"expected images [B, C, X, Y, Z] and present [B, C], got {tuple(images.shape)} and {tuple(present.shape)}"
        )
    if centres is not None and config.crop is None:
        raise ValueError("crop centres were given but AugmentConfig.crop is None; set a crop size")
    batch, device = images.shape[0], images.device
    x = random_crop(images, config.crop, generator, centres, jitter) if config.crop is not None else images
    x = x.float()  # float16 cache → float32 for the arithmetic below (a copy when the input was float16)
    for axis in config.flip_axes:
        flip = _happens(batch, config.flip_prob, generator).to(device)
        x = torch.where(flip[:, None, None, None, None], x.flip(2 + axis), x)

    keep = present.to(device=device, dtype=torch.bool)[:, :, None, None, None]  # [B, C, 1, 1, 1]
    if config.keep_background:
        keep = keep & (x != 0)  # [B, C, X, Y, Z]

    # gamma and bias field on a copy rescaled to [0, 1] per exam and sequence, mapped back afterwards
    gamma = torch.exp(_uniform((batch,), math.log(config.gamma[0]), math.log(config.gamma[1]), generator))
    gamma = torch.where(_happens(batch, config.gamma_prob, generator), gamma, torch.ones_like(gamma)).to(device)
    bias = _happens(batch, config.bias_prob, generator).to(device)
    if bool((gamma != 1).any()) or bool(bias.any()):
        low = torch.where(keep, x, torch.inf).amin(dim=(2, 3, 4), keepdim=True)
        high = torch.where(keep, x, -torch.inf).amax(dim=(2, 3, 4), keepdim=True)
        low = torch.where(torch.isfinite(low), low, 0.0)  # exams without foreground in a channel
        span = (torch.where(torch.isfinite(high), high, 0.0) - low).clamp_min(1e-6)
        unit = ((x - low) / span).clamp(0.0, 1.0) ** gamma[:, None, None, None, None]
        if bool(bias.any()):
            field = _bias_field(x.shape, config.bias_strength, config.bias_grid, generator, device)
            unit = unit * torch.where(bias[:, None, None, None, None], field, 1.0)
        x = unit * span + low

    channels = images.shape[1]
    scale = _uniform((batch, channels), *config.scale, generator)
    shift = _uniform((batch, channels), *config.shift, generator)
    intensity = _happens(batch, config.intensity_prob, generator)[:, None]
    scale = torch.where(intensity, scale, 1.0).to(device)[:, :, None, None, None]
    shift = torch.where(intensity, shift, 0.0).to(device)[:, :, None, None, None]
    x = x * scale + shift

    std = _uniform((batch,), *config.noise_std, generator)
    std = torch.where(_happens(batch, config.noise_prob, generator), std, 0.0).to(device)
    if bool((std > 0).any()):
        noise = torch.randn(x.shape, generator=generator, device=_device(generator)).to(device)
        x = x + std[:, None, None, None, None] * noise

    return torch.where(keep, x, 0.0)

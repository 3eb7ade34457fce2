"""Lesion-aware readout: what a frozen UMBIF encoder hands to a probe for one exam.

A whole-brain CLS token of a 96-d encoder cannot say much about a 30 ml tumour, and a probe trained on
~100 patients cannot pick the right 96 of 1,000 token dimensions by itself. The readout therefore pools
the encoder's output tokens where the lesion is, per compartment, and keeps the CLS token as the
whole-brain context::

    feature = [ core token | oedema token | context (CLS) token ]          3 * E values

A compartment token is the mean of the exam's output tokens weighted by the share of each token's patch
that lies in the compartment (labels from the segmentation, BraTS convention: core = necrosis / non-
enhancing 1 + enhancing 4, oedema = 2), averaged over the present sequences: every sequence's view of
the same tissue. The weights only say *where* to look; they are normalised, so the tumour's size does
not enter the readout (compartment volumes are a feature set of their own, ``lesion-sizes``, reported
as a row beside UMBIF and its controls).

Without a segmentation (or where a compartment is absent) the compartment token falls back to the mean
of all the exam's tokens: a documented, parameter-free fallback that a probe can still use as a second
whole-brain summary. :func:`readout_features` records which exams fell back.

Written by hand because the pooling needs the encoder's token layout (sequence-major slots, absent
sequences removed; see :mod:`umbif.models.umbif`) and is a few lines of tensor arithmetic.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from umbif.models.umbif import UMBIFEncoder, unpack

Readout = Literal["cls", "lesion"]
READOUTS: tuple[str, ...] = ("cls", "lesion")
COMPARTMENTS: dict[str, tuple[int, ...]] = {"core": (1, 4), "oedema": (2,)}  # BraTS labels per compartment


def compartment_fractions(segmentation: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Share of each patch in each compartment: ``[B, X, Y, Z]`` labels -> ``[B, K, L]`` in ``[0, 1]``.

    ``K`` follows :data:`COMPARTMENTS`; patches in the encoder's row-major grid order.
    """
    if segmentation.ndim != 4:
        raise ValueError(f"segmentation must be [B, X, Y, Z], got {list(segmentation.shape)}")
    labels = segmentation.long()
    parts = [torch.isin(labels, torch.tensor(v, device=labels.device)) for v in COMPARTMENTS.values()]
    indicator = torch.stack(parts, dim=1).float()  # [B, K, X, Y, Z]
    return F.avg_pool3d(indicator, patch_size).flatten(2)  # [B, K, L]


def token_grid(encoder: UMBIFEncoder, images: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode and lay the output tokens back on the slot grid.

    Returns the CLS tokens ``[B, E]`` and the tokens ``[B, S, L, E]`` (zero for absent sequences).
    """
    c = encoder.config
    present = encoder.check_inputs(images, present)
    tokens, token_mask = encoder.forward_tokens(images, present)
    valid = present.repeat_interleave(c.num_patches, dim=1)  # [B, N]
    grid = unpack(tokens[:, 1:], token_mask[:, 1:], valid, tokens.new_zeros(()))  # [B, N, E]
    return tokens[:, 0], grid.view(images.shape[0], c.num_sequences, c.num_patches, -1)


def pool_tokens(grid: torch.Tensor, present: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of each exam's tokens over patches, then over its present sequences.

    Args:
        grid: ``[B, S, L, E]`` tokens (any values at absent sequences).
        present: ``[B, S]`` bool.
        weights: ``[B, K, L]`` non-negative weights per compartment.

    Returns:
        ``[B, K, E]`` pooled tokens, and ``[B, K]`` bool: True where the weights were all zero and the
        pooled token is the plain mean of all present tokens (the fallback).
    """
    empty = weights.sum(-1) <= 0  # [B, K]
    weights = torch.where(empty[..., None], torch.ones_like(weights), weights)
    weights = weights / weights.sum(-1, keepdim=True)
    per_sequence = torch.einsum("bkl,bsle->bkse", weights.to(grid.dtype), grid)  # [B, K, S, E]
    share = present.to(grid.dtype) / present.sum(1, keepdim=True).clamp(min=1)  # [B, S]
    return torch.einsum("bkse,bs->bke", per_sequence, share), empty


@torch.no_grad()
def readout_features(
    encoder: UMBIFEncoder,
    images: torch.Tensor,
    present: torch.Tensor,
    segmentation: torch.Tensor | None = None,
    readout: str = "lesion",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exam features of a frozen encoder.

    Args:
        encoder: a UMBIF encoder (eval mode).
        images: ``[B, S, X, Y, Z]``; present: ``[B, S]`` bool.
        segmentation: ``[B, X, Y, Z]`` BraTS labels (0 = no tumour), or None.
        readout: ``"cls"`` (``[B, E]``, the CLS token) or ``"lesion"`` (``[B, 3E]``: core, oedema, CLS).

    Returns:
        float32 features on the CPU, and ``[B]`` bool: exams whose compartment tokens fell back to the
        mean of all tokens (no segmentation, or no tumour in it); all False for ``"cls"``.
    """
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}")
    device = next(encoder.parameters()).device
    images, present = images.to(device, torch.float32), present.to(device).bool()
    if readout == "cls":
        return encoder(images, present).float().cpu(), torch.zeros(images.shape[0], dtype=torch.bool)
    cls, grid = token_grid(encoder, images, present)
    B, K, L = images.shape[0], len(COMPARTMENTS), encoder.config.num_patches
    if segmentation is None:
        weights = torch.zeros(B, K, L, device=device)
    else:
        weights = compartment_fractions(segmentation.to(device), encoder.config.patch_size)
    pooled, empty = pool_tokens(grid, present, weights)  # [B, K, E]
    features = torch.cat([pooled.flatten(1), cls], dim=1)  # [B, (K + 1) E]
    return features.float().cpu(), empty.all(1).cpu()

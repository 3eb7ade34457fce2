"""The pretraining losses of UMBIF (and of the SSL-ImageNet baseline's MAE): pure functions of tensors.

``reconstruction_loss`` is MAE's ``forward_loss`` (with the optional patch mean / log-SD target of
``ModelConfig.stats_loss``), ``info_nce`` SimCLR's NT-Xent with optional extra negatives (a queue, other
ranks' projections). Written by hand because MONAI has neither in this form: MONAI's ``ContrastiveLoss``
takes no extra negatives and its losses know nothing of masked tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_stats(patches: torch.Tensor) -> torch.Tensor:
    """``[..., P]`` -> ``[..., 2]``: each patch's mean and log standard deviation (the ``stats_loss`` target)."""
    patches = patches.float()
    return torch.stack([patches.mean(-1), 0.5 * torch.log(patches.var(-1) + 1e-6)], dim=-1)


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor, norm_pix: bool = True, stats_loss: float = 0.0
) -> torch.Tensor:
    """Mean squared error over the voxels of the tokens in ``loss_mask`` (MAE's ``forward_loss``).

    Args:
        pred: ``[B, N, P]`` predicted patches, or ``[B, N, P + 2]`` with ``stats_loss > 0``: the last two
            outputs predict :func:`patch_stats` of the true patch.
        target: ``[B, N, P]`` true patches; with ``norm_pix`` each is normalised to zero mean and unit
            variance first, so the loss weighs texture, not the intensity offset of a patch.
        loss_mask: ``[B, N]`` bool, the tokens to score (masked tokens of present sequences).
        stats_loss: weight of the squared error of the predicted patch mean and log standard deviation,
            added per token (it puts the absolute intensity back into the objective that ``norm_pix`` removes).

    Returns:
        scalar float32 tensor (0 when ``loss_mask`` is empty).
    """
    target, pred, P = target.float(), pred.float(), target.shape[-1]
    per_token = torch.zeros(target.shape[:-1], device=target.device)
    if stats_loss > 0:
        per_token = stats_loss * (pred[..., P:] - patch_stats(target)).pow(2).mean(-1)
        pred = pred[..., :P]
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_token = per_token + (pred - target).pow(2).mean(-1)  # [B, N]
    return (per_token * loss_mask).sum() / loss_mask.sum().clamp(min=1)


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    queue: torch.Tensor | None = None,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (SimCLR's NT-Xent) between two views of the same ``B`` exams.

    Each of the ``2B`` embeddings has its other view as the positive; the other ``2B - 2`` embeddings
    of the batch, the ``queue`` and ``extra_negatives`` (e.g. projections gathered from other ranks)
    are negatives. Similarities are cosines divided by ``temperature``.

    Args:
        z1, z2: ``[B, D]`` projections of view 1 and view 2 (row ``i`` is the same exam).
        temperature: softmax temperature.
        queue, extra_negatives: ``[K, D]`` more negatives, or None.

    Returns:
        scalar float32 tensor, the mean cross-entropy over the ``2B`` anchors.

    Example:
        >>> z = torch.randn(8, 16)
        >>> float(info_nce(z, z, 0.1)) < float(info_nce(z, torch.randn(8, 16), 0.1))
        True
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2B, D]
    logits = (z @ z.T) / temperature  # [2B, 2B]
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    negatives = [t for t in (queue, extra_negatives) if t is not None and t.shape[0] > 0]
    if negatives:
        bank = F.normalize(torch.cat(negatives).float(), dim=1)  # [K, D]
        logits = torch.cat([logits, (z @ bank.T) / temperature], dim=1)  # [2B, 2B + K]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # the other view
    return F.cross_entropy(logits, target)

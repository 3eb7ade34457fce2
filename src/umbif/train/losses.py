"""Losses of supervised training: pure functions of tensors (the pretraining losses live with the model,
``umbif.models.umbif``, whose forward pass returns them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over items of the BCE summed over the tasks each item is labelled for.

    Args:
        logits: ``[B, T]``.
        labels: ``[B, T]`` 0/1, NaN where missing (no loss, no gradient).
        pos_weight: ``[T]`` weight of positive examples per task, or None.

    Returns:
        scalar float32 tensor.

    Example:
        >>> masked_bce(torch.zeros(2, 2), torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
        tensor(1.0397)
    """
    labelled = ~torch.isnan(labels)
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), labels.nan_to_num(0.0).float(), pos_weight=pos_weight, reduction="none"
    )
    return torch.where(labelled, loss, 0.0).sum() / max(1, logits.shape[0])

"""Fixed 3D sine-cosine position embeddings (MAE's ``util/pos_embed.py``, extended to three axes)."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sine-cosine embedding of 1D ``positions`` ``[M]`` -> ``[M, dim]`` (``dim`` even)."""
    if dim % 2:
        raise ValueError(f"sincos_1d needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # [dim/2]
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # [M, dim]


def sincos_pos_embed_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Position embedding of a 3D token grid, flattened in row-major (x, y, z) order.

    Each axis gets the same even share of ``dim`` (``dim // 6 * 2`` channels); the few channels left
    over when ``dim`` is not a multiple of 6 are zero, so any width >= 6 works (1024, 512, ...).

    Args:
        dim: embedding width.
        grid: tokens per axis ``(gx, gy, gz)``.

    Returns:
        ``[gx * gy * gz, dim]`` float32 tensor.

    Example:
        >>> sincos_pos_embed_3d(96, (6, 6, 6)).shape
        torch.Size([216, 96])
    """
    if dim < 6:
        raise ValueError(f"a 3D sin-cos position embedding needs dim >= 6, got {dim}")
    axis_dim = dim // 6 * 2
    coords = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")  # 3 x [gx, gy, gz]
    parts = [sincos_1d(axis_dim, c.reshape(-1)) for c in coords]  # 3 x [L, axis_dim]
    length = parts[0].shape[0]
    parts.append(torch.zeros(length, dim - 3 * axis_dim))
    return torch.cat(parts, dim=1)  # [L, dim]

"""Transformer blocks shared by every ViT in umbif (timm ``layers/`` style): the UMBIF encoder and decoder
(:mod:`umbif.models.umbif`) and the 2D photo MAE of the SSL-ImageNet baseline
(:mod:`umbif.baselines.ssl_imagenet`) are built from these.

Parameter names are timm's ``VisionTransformer`` names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``), so 2D checkpoints map onto them key for key; renaming any of them breaks
every saved checkpoint.

Shape letters: ``B`` batch, ``M`` tokens, ``E`` width, ``H`` heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    """Multi-head self-attention on ``scaled_dot_product_attention`` (fused kernels where available)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, M, E = x.shape
        qkv = self.qkv(x).reshape(B, M, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, H, M, E/H]
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, M, E/H]
        return self.proj(x.transpose(1, 2).reshape(B, M, E))


class Mlp(nn.Module):
    """Two linear layers with a GELU between them: ``[..., E]`` -> ``[..., hidden]`` -> ``[..., E]``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


def run_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, token_mask: torch.Tensor, grad_checkpointing: bool
) -> torch.Tensor:
    """Apply ``blocks`` to ``x`` ``[B, M, E]``; padding (``token_mask`` False) is never attended to."""
    attn_mask = None if bool(token_mask.all()) else token_mask[:, None, None, :]  # [B, 1, 1, M] keys
    for block in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask)
    return x


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation, for ``model.apply(init_weights)``: Xavier-uniform ``Linear`` weights, zero
    biases, ``LayerNorm`` at identity. Other modules are left as they are."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

"""Small task heads on the UMBIF encoder's output, for fine-tuning.

A head reads the encoder's tokens ``[B, 1 + M, E]`` and their ``token_mask`` ``[B, 1 + M]`` (False at
padding) and returns one logit per exam ``[B]``. It is two parts, like timm's models:

- ``forward_features``: pool the tokens to a feature vector ``[B, F]`` — the CLS token (``F = E``) or
  attention pooling over the real tokens; a *pair* head pools the baseline and the follow-up exam and
  concatenates ``(baseline, followup, followup - baseline)`` (``F = 3E``, :func:`pair_features`).
- ``forward_head``: the classifier on those features — linear or a one-hidden-layer MLP.

A linear head on CLS features is exactly the ``"linear"`` head of a classifier folder (see
``umbif.train.finetune.save_finetuned``): ``logit = x @ weight + bias`` with ``x`` the CLS embedding of an
exam, or ``pair_features`` of two CLS embeddings.

Shape letters: ``B`` exams, ``M`` packed tokens, ``E`` encoder width, ``F`` head input features.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from umbif.models.umbif import UMBIFEncoder

HeadKind = Literal["linear", "mlp", "attention"]
TrainMode = Literal["full", "partial", "frozen"]
HEAD_KINDS: tuple[str, ...] = ("linear", "mlp", "attention")


def pair_features(baseline: torch.Tensor, followup: torch.Tensor) -> torch.Tensor:
    """Features of a (baseline, follow-up) pair: ``[B, E]``, ``[B, E]`` -> ``[B, 3E]``.

    ``concat(baseline, followup, followup - baseline)``: the head sees both exams and, explicitly, the
    change between them (the published UMBIF outcome input).

    Example:
        >>> pair_features(torch.zeros(2, 8), torch.ones(2, 8)).shape
        torch.Size([2, 24])
    """
    if baseline.shape != followup.shape:
        raise ValueError(f"baseline {list(baseline.shape)} and follow-up {list(followup.shape)} differ in shape")
    return torch.cat([baseline, followup, followup - baseline], dim=-1)


class ClsPool(nn.Module):
    """The CLS token: ``[B, 1 + M, E]`` -> ``[B, E]`` (the encoder's exam embedding)."""

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return tokens[:, 0]


class AttentionPool(nn.Module):
    """Attention pooling: learned queries attend over every real token (CLS included), padding never.

    One learned query per head (CaiT's class attention without the residual stream); keys and values
    are linear maps of the layer-normalised tokens; the heads' outputs are concatenated and projected.

    Args:
        dim: token width ``E`` (divisible by ``heads``).
        heads: attention heads.

    Example:
        >>> pool = AttentionPool(48, heads=2)
        >>> pool(torch.randn(3, 9, 48), torch.ones(3, 9, dtype=torch.bool)).shape
        torch.Size([3, 48])
    """

    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"attention pooling: dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.query = nn.Parameter(torch.zeros(1, heads, 1, dim // heads))
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` ``[B, 1 + M, E]``, ``token_mask`` ``[B, 1 + M]`` bool (None: all real) -> ``[B, E]``."""
        B, M, E = tokens.shape
        kv = self.kv(self.norm(tokens)).reshape(B, M, 2, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # [B, H, M, E/H]
        q = self.query.expand(B, -1, -1, -1).to(k.dtype)  # [B, H, 1, E/H]
        attn_mask = None if token_mask is None else token_mask[:, None, None, :].bool()  # [B, 1, 1, M] keys
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, 1, E/H]
        return self.proj(pooled.reshape(B, E))

    def no_weight_decay(self) -> set[str]:
        return {"query"}


class LinearHead(nn.Module):
    """Logistic-regression head: ``[B, F]`` -> ``[B]`` logits, ``x @ weight + bias``."""

    def __init__(self, features: int):
        super().__init__()
        self.fc = nn.Linear(features, 1)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)  # small start: the first epochs do not fight the encoder
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).squeeze(-1)


class MLPHead(nn.Module):
    """One hidden layer: ``[B, F]`` -> LayerNorm -> Linear(F, hidden) -> GELU -> dropout -> Linear(hidden, 1)."""

    def __init__(self, features: int, hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(features, eps=1e-6),
            nn.Linear(features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class TaskHead(nn.Module):
    """One task's head: pool the tokens (of one exam, or of a baseline/follow-up pair), then classify.

    ``kind``: ``"linear"`` (linear on CLS), ``"mlp"`` (MLP on CLS) or ``"attention"`` (attention pooling
    over the tokens, then linear). ``pair=True`` makes the input a pair (``F = 3E``, :func:`pair_features`).

    Args:
        dim: encoder width ``E``.
        kind: which head.
        pair: whether the head scores (baseline, follow-up) pairs.
        hidden: MLP hidden width (``"mlp"`` only).
        dropout: MLP dropout (``"mlp"`` only).
        pool_heads: attention-pooling heads (``"attention"`` only).

    Example:
        >>> head = TaskHead(48, "attention", pair=True)
        >>> t, m = torch.randn(2, 9, 48), torch.ones(2, 9, dtype=torch.bool)
        >>> head(t, m, t, m).shape
        torch.Size([2])
    """

    def __init__(
        self,
        dim: int,
        kind: HeadKind = "linear",
        pair: bool = False,
        hidden: int = 256,
        dropout: float = 0.0,
        pool_heads: int = 1,
    ):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
        self.kind = kind
        self.pair = pair
        self.features = 3 * dim if pair else dim
        self.pool: nn.Module = AttentionPool(dim, pool_heads) if kind == "attention" else ClsPool()
        self.classifier: nn.Module = (
            MLPHead(self.features, hidden, dropout) if kind == "mlp" else LinearHead(self.features)
        )

    def forward_features(
        self,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
        baseline_tokens: torch.Tensor | None = None,
        baseline_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Head input ``[B, F]`` from the (follow-up) exam's tokens ``[B, 1 + M, E]`` and, for a pair head,
        the baseline's tokens ``[B, 1 + M', E]`` (row ``i`` of both is the same pair)."""
        x = self.pool(tokens, token_mask)  # [B, E]
        if not self.pair:
            return x
        if baseline_tokens is None or baseline_mask is None:
            raise ValueError("a pair head needs the baseline exam's tokens and token_mask")
        return pair_features(self.pool(baseline_tokens, baseline_mask), x)  # [B, 3E]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` -> logits ``[B]``."""
        return self.classifier(features)

    def forward(
        self,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
        baseline_tokens: torch.Tensor | None = None,
        baseline_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B]`` (apply a sigmoid for probabilities); arguments as in :meth:`forward_features`."""
        return self.forward_head(self.forward_features(tokens, token_mask, baseline_tokens, baseline_mask))

    def no_weight_decay(self) -> set[str]:
        return {"pool.query"} if self.kind == "attention" else set()

    def linear_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight [F], bias [1])`` of a linear head on CLS features, for export.

        Raises:
            ValueError: the head is an MLP or attention pooling, which a linear classifier folder cannot hold.
        """
        if self.kind != "linear":
            raise ValueError(
                f"a {self.kind!r} head cannot be exported: a classifier folder holds only linear heads on the "
                "CLS embedding (weight, bias); fine-tune with head 'linear' to export a model"
            )
        fc = self.classifier.fc
        return fc.weight.detach().float().reshape(-1).clone(), fc.bias.detach().float().reshape(1).clone()


class MultiTaskModel(nn.Module):
    """The UMBIF encoder with one :class:`TaskHead` per task, scoring exams and (baseline, follow-up) pairs.

    ``mode`` decides what trains: ``"full"`` everything, ``"partial"`` the last ``trainable_blocks`` blocks,
    the final norm and the heads, ``"frozen"`` the heads only (the encoder then runs without autograd).

    Any module with ``forward_tokens(images, present) -> (tokens, token_mask)`` and ``no_weight_decay()``
    serves as the encoder: a CNN baseline (``umbif.baselines.cnn``) gives one token, its pooled features.

    Args:
        encoder: the (pretrained) encoder; its parameters' ``requires_grad`` is set here. ``"partial"``
            mode needs its transformer ``blocks``.
        heads: task -> head, in output order (a head with ``pair=True`` scores pairs).
        mode: what trains.
        trainable_blocks: blocks that train in ``"partial"`` mode (counted from the last).

    Example:
        >>> heads = {"idh": TaskHead(96), "outcome": TaskHead(96, pair=True)}
        >>> model = MultiTaskModel(encoder, heads, mode="partial", trainable_blocks=2)
        >>> logits = model(images, present, paired, baseline_images, baseline_present)  # [B, 2]
    """

    def __init__(
        self,
        encoder: UMBIFEncoder | nn.Module,
        heads: Mapping[str, TaskHead],
        mode: TrainMode = "full",
        trainable_blocks: int = 1,
    ):
        super().__init__()
        depth = len(getattr(encoder, "blocks", ()))
        if mode not in ("full", "partial", "frozen"):
            raise ValueError(f"unknown mode {mode!r}; choose full, partial or frozen")
        if mode == "partial" and not 1 <= trainable_blocks <= depth:
            raise ValueError(
                f"trainable_blocks must be between 1 and the encoder's {depth} blocks, got {trainable_blocks}"
            )
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        self.tasks = tuple(heads)
        self.mode = mode
        trainable = (*(f"blocks.{i}." for i in range(depth - trainable_blocks, depth)), "norm.")
        for name, param in encoder.named_parameters():
            param.requires_grad = mode == "full" or (mode == "partial" and name.startswith(trainable))

    def forward_features(self, images: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's ``tokens`` ``[B, 1 + M, E]`` and ``token_mask`` ``[B, 1 + M]`` (no autograd when frozen)."""
        with torch.no_grad() if self.mode == "frozen" else nullcontext():
            return self.encoder.forward_tokens(images, present)

    def forward_head(self, tokens: torch.Tensor, token_mask: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T]`` from the tokens of the ``B`` items' exams followed by the ``P`` baselines of the
        paired items (``tokens`` ``[B + P, 1 + M, E]``, ``paired`` ``[B]`` bool)."""
        B = paired.shape[0]
        pair_rows = paired.nonzero().flatten()  # [P]
        columns = []
        for head in self.heads.values():
            if not head.pair:
                columns.append(head(tokens[:B], token_mask[:B]).float())
                continue
            column = torch.zeros(B, device=tokens.device)
            if len(pair_rows):
                logits = head(tokens[pair_rows], token_mask[pair_rows], tokens[B:], token_mask[B:]).float()
                column = column.index_put((pair_rows,), logits)
            columns.append(column)
        return torch.stack(columns, dim=1)

    def forward(
        self,
        images: torch.Tensor,
        present: torch.Tensor,
        paired: torch.Tensor | None = None,
        baseline_images: torch.Tensor | None = None,
        baseline_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of every task.

        Args:
            images: ``[B, S, X, Y, Z]``, each item's exam (the follow-up of a pair).
            present: ``[B, S]`` bool.
            paired: ``[B]`` bool, which items are pairs (None: none).
            baseline_images, baseline_present: ``[P, S, X, Y, Z]`` and ``[P, S]``, the baselines of the ``P``
                paired items in batch order (one encoder pass embeds both exams of every pair).

        Returns:
            ``[B, T]`` float32 logits in ``tasks`` order; a pair task's column is 0 at items that are not pairs.
        """
        B = images.shape[0]
        paired = torch.zeros(B, dtype=torch.bool, device=images.device) if paired is None else paired.bool()
        n_pairs = 0 if baseline_images is None else baseline_images.shape[0]
        if int(paired.sum()) != n_pairs or (n_pairs and baseline_present is None):
            raise ValueError(f"{int(paired.sum())} items are marked paired but {n_pairs} baselines were given")
        if baseline_images is not None and baseline_present is not None and n_pairs:
            images = torch.cat([images, baseline_images.to(images.dtype)])  # [B + P, S, X, Y, Z]
            present = torch.cat([present, baseline_present])
        tokens, token_mask = self.forward_features(images, present)  # [B + P, 1 + M, E]
        return self.forward_head(tokens, token_mask, paired)

    def no_weight_decay(self) -> set[str]:
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        return names | {f"heads.{t}.{n}" for t, head in self.heads.items() for n in head.no_weight_decay()}

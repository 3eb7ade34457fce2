"""UMBIF: a masked-autoencoder and contrastive ViT over any subset of four co-registered MRI sequences.

Read top to bottom like MAE's ``models_mae.py``: the config, then the pure functions (patchify, masking,
packing), the encoder, the decoder, the pretrainer and the size presets. The transformer blocks
are shared with the other ViTs of umbif and live in :mod:`umbif.models.blocks`; the losses are in
:mod:`umbif.models.objectives`.

Tokens. Each sequence ``s`` of an exam ``[S, X, Y, Z]`` is cut into ``L = (X/p)(Y/p)(Z/p)`` cubes of
``p^3`` voxels; token ``(s, l)`` is ``PatchEmbed_s(patch) + pos(l) + seq_embed(s)``. Tokens are laid out
sequence-major, index ``s * L + l`` of a ``[B, N = S * L]`` grid. Tokens of absent sequences are
*removed*, not zero-filled: the encoder packs the tokens it may see (present and, when masking, visible)
to the front of a ``[B, M, E]`` tensor padded at the end, and an attention key mask keeps the padding
out of every softmax, so exams with different sequence subsets share a batch. The output of the CLS
token is the exam embedding.

Shape letters: ``B`` exams, ``S`` sequences, ``X, Y, Z`` voxels, ``L`` patches per sequence,
``N = S * L`` token slots, ``M`` packed tokens, ``P = p^3`` voxels per patch, ``E`` width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from umbif.config import FrozenConfig
from umbif.models.blocks import Block, init_weights, run_blocks
from umbif.models.objectives import info_nce, reconstruction_loss
from umbif.models.pos_embed import sincos_pos_embed_3d
from umbif.models.sizes import check_sizes, weight_bytes


class ModelConfig(FrozenConfig):
    """The UMBIF architecture and its pretraining objective.

    ``preset`` fills every size field the caller does not set (from :data:`PRESETS`, at the end of this
    module), so ``ModelConfig(preset="base", mask_ratio=0.8)`` is ViT-B with another mask ratio, and a
    YAML file can say just ``preset: base``.

    Example:
        >>> ModelConfig(preset="small").dim
        384
    """

    preset: Literal["tiny", "small", "base", "large"] = "tiny"  # size preset; explicit fields override it
    image_size: tuple[int, int, int] = (96, 96, 96)  # input grid in voxels: the cache's PreprocessConfig.shape
    patch_size: int = 16  # patch edge in voxels (32 mm at 2 mm): 6^3 = 216 tokens per sequence at 96^3
    num_sequences: int = 4  # T1, T1c, T2, FLAIR in umbif.SEQUENCES order
    dim: int = 96  # encoder width E
    depth: int = 4  # encoder blocks
    heads: int = 3  # encoder attention heads (dim / heads = 32 per head)
    mlp_ratio: float = 4.0  # MLP hidden width / model width, encoder and decoder
    decoder_dim: int = 64  # decoder width
    decoder_depth: int = 2  # decoder blocks
    decoder_heads: int = 2  # decoder attention heads
    mask_ratio: float = 0.75  # share of an exam's present tokens hidden from the encoder (MAE)
    sequence_mask_prob: float = 0.3  # probability of hiding one whole present sequence (exams with >= 2)
    proj_dim: int = 128  # output width of the contrastive projection head
    temperature: float = 0.1  # InfoNCE temperature
    lambda_con: float = 1.0  # weight of the contrastive term: L = L_rec + lambda_con * L_con
    objective: Literal["hybrid", "mae", "contrastive"] = "hybrid"  # which terms to train (see UMBIFPretrainer)
    queue_size: int = 0  # 0: off; > 0: FIFO queue of this many past projections used as extra negatives
    grad_checkpointing: bool = False  # recompute block activations in backward (less memory, ~30% slower)
    norm_pix_loss: bool = True  # reconstruct each patch normalised to zero mean, unit variance (MAE)
    # weight of a second reconstruction target: each masked patch's mean and log standard deviation. With
    # norm_pix_loss alone the decoder never has to know a patch's absolute intensity, so the encoder may
    # drop the contrast between sequences (enhancement, T2-FLAIR mismatch); 0 turns the term off.
    stats_loss: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            name = data.get("preset", "tiny")
            if name not in PRESETS:
                raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
            data = {**PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        floats = {"mlp_ratio": self.mlp_ratio, "temperature": self.temperature}
        floats |= {"lambda_con": self.lambda_con, "stats_loss": self.stats_loss}
        if not all(math.isfinite(v) for v in floats.values()) or self.mlp_ratio <= 0 or min(floats.values()) < 0:
            raise ValueError(f"mlp_ratio must be positive, the others non-negative, all finite; got {floats}")
        check_sizes(self)  # bounds and a memory estimate, before anything is allocated
        for width, heads, part in ((self.dim, self.heads, ""), (self.decoder_dim, self.decoder_heads, "decoder_")):
            if width < 6 or width % heads:
                raise ValueError(f"{part}dim ({width}) must be >= 6 and divisible by {part}heads ({heads})")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.sequence_mask_prob <= 1.0:
            raise ValueError(f"sequence_mask_prob must be in [0, 1], got {self.sequence_mask_prob}")
        if self.temperature <= 0 or self.queue_size < 0:
            raise ValueError("temperature must be positive and queue_size non-negative")
        return self

    def weight_bytes(self) -> int:
        """Bytes of the pretrainer's float32 parameters and fixed buffers (:func:`umbif.models.sizes.weight_bytes`)."""
        return weight_bytes(self)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Patches per axis."""
        gx, gy, gz = (n // self.patch_size for n in self.image_size)
        return gx, gy, gz

    @property
    def num_patches(self) -> int:
        """``L``, patches per sequence."""
        return math.prod(self.grid)


# ----------------------------------------------------------------------------- pure functions


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, S, X, Y, Z]`` -> ``[B, S, L, p^3]``, patches in row-major (x, y, z) grid order."""
    B, S, X, Y, Z = images.shape
    p = patch_size
    x = images.reshape(B, S, X // p, p, Y // p, p, Z // p, p)
    x = x.permute(0, 1, 2, 4, 6, 3, 5, 7)  # [B, S, gx, gy, gz, p, p, p]
    return x.reshape(B, S, -1, p**3)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """``[B, S, L, p^3]`` -> ``[B, S, X, Y, Z]``; the inverse of :func:`patchify`."""
    B, S = patches.shape[:2]
    p = patch_size
    x = patches.reshape(B, S, *grid, p, p, p).permute(0, 1, 2, 5, 3, 6, 4, 7)  # [B, S, gx, p, gy, p, gz, p]
    return x.reshape(B, S, *(n * p for n in grid))


def random_masking(
    present: torch.Tensor,
    num_patches: int,
    mask_ratio: float,
    sequence_mask_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the tokens the encoder sees: random patches plus, sometimes, one whole hidden sequence.

    Each exam keeps ``n_keep = round((1 - mask_ratio) * present tokens)`` visible tokens (at least one),
    drawn uniformly among the tokens of its present sequences by an argsort of noise (no loops). Exams
    with fewer present sequences keep fewer tokens; the encoder pads them to the batch's largest count
    and masks the padding in attention. With probability ``sequence_mask_prob`` an exam with at least
    two present sequences also hides one of them entirely (uniformly chosen); its visible tokens then
    all come from the other sequences (``n_keep`` is capped by their count), so an exam is never fully
    hidden and a one-sequence exam never loses its sequence.

    Args:
        present: ``[B, S]`` bool, which sequences each exam has.
        num_patches: ``L``, patches per sequence.
        mask_ratio: share of present tokens to hide, in ``[0, 1)``.
        sequence_mask_prob: probability of hiding one whole sequence.
        generator: random source, on ``present.device``.

    Returns:
        ``keep``: ``[B, S * L]`` bool, True for visible tokens (always a subset of present tokens).

    Example:
        >>> keep = random_masking(torch.ones(2, 4, dtype=torch.bool), 216, 0.75)
        >>> keep.sum(1)
        tensor([216, 216])
    """
    B, S = present.shape
    device = present.device
    present = present.bool()
    n_present = present.sum(1)  # [B]
    hide_one = (torch.rand(B, generator=generator, device=device) < sequence_mask_prob) & (n_present >= 2)
    seq_noise = torch.rand(B, S, generator=generator, device=device).masked_fill(~present, -1.0)  # [B, S]
    hidden = F.one_hot(seq_noise.argmax(1), S).bool() & hide_one[:, None]  # [B, S] the sequence hidden whole
    candidates = (present & ~hidden).repeat_interleave(num_patches, dim=1)  # [B, N]
    n_keep = torch.round((1.0 - mask_ratio) * n_present * num_patches).long().clamp(min=1)
    n_keep = torch.minimum(n_keep, candidates.sum(1))  # [B]
    noise = torch.rand(B, S * num_patches, generator=generator, device=device)
    noise = noise.masked_fill(~candidates, 2.0)  # non-candidates sort last
    rank = noise.argsort(dim=1).argsort(dim=1)  # [B, N] rank of each token's noise within its exam
    return rank < n_keep[:, None]


def pack(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each exam's valid tokens to the front, in order: ``[B, N, ...]`` -> ``[B, M, ...]``.

    Returns the packed tensor (zeros after each exam's tokens, ``M`` = most valid tokens in an exam)
    and its ``[B, M]`` bool mask of real tokens.
    """
    counts = valid.sum(1)  # [B]
    mask = torch.arange(int(counts.max()), device=x.device)[None, :] < counts[:, None]  # [B, M]
    out = x.new_zeros(x.shape[0], mask.shape[1], *x.shape[2:])
    out[mask] = x[valid]  # both in row-major order: exam by exam, token by token
    return out, mask


def unpack(packed: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack`: ``[B, M, ...]`` -> ``[B, N, ...]`` with ``fill`` at invalid slots."""
    out = fill.to(packed.dtype).expand(*valid.shape, *packed.shape[2:]).clone()
    out[valid] = packed[mask]
    return out


# ----------------------------------------------------------------------------- encoder


class UMBIFEncoder(nn.Module):
    """ViT encoder of an exam with any subset of sequences; the CLS output is the exam embedding.

    Args:
        config: a :class:`ModelConfig`.

    Example:
        >>> encoder = UMBIFEncoder(ModelConfig(image_size=(32, 32, 32), patch_size=8)).eval()
        >>> images, present = torch.randn(2, 4, 32, 32, 32), torch.tensor([[1, 1, 1, 1], [0, 0, 0, 1]]).bool()
        >>> encoder(images, present).shape
        torch.Size([2, 96])
    """

    pos_embed: torch.Tensor  # fixed buffer [L, E]

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        S, E, p = config.num_sequences, config.dim, config.patch_size
        self.grad_checkpointing = config.grad_checkpointing
        # One patch embedding per sequence, not one shared conv: T1, T2 and FLAIR put tissue contrast in
        # different intensity patterns, and separate filters cost only S * p^3 * E parameters (a few % of
        # ViT-B). kernel = stride = p Conv3d and Linear on patchified voxels are the same map; Linear lets
        # the encoder and the loss share patchify.
        self.patch_embed = nn.ModuleList(nn.Linear(p**3, E) for _ in range(S))
        self.seq_embed = nn.Parameter(torch.zeros(S, E))  # learned, which sequence a token comes from
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        # fixed, so not saved: an encoder's weights load into any image_size
        self.register_buffer("pos_embed", sincos_pos_embed_3d(E, config.grid), persistent=False)  # [L, E]
        self.blocks = nn.ModuleList(Block(E, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(E, eps=1e-6)
        self.apply(init_weights)
        nn.init.normal_(self.seq_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    def check_inputs(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Validate ``images`` ``[B, S, X, Y, Z]`` and ``present`` ``[B, S]``; return ``present`` as bool."""
        c = self.config
        expected = (c.num_sequences, *c.image_size)
        if images.ndim != 5 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [B, {', '.join(map(str, expected))}], got {list(images.shape)}")
        if tuple(present.shape) != tuple(images.shape[:2]):
            raise ValueError(f"present must be [B, S] = {list(images.shape[:2])}, got {list(present.shape)}")
        present = present.bool()
        empty = (~present.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"exams {empty} of the batch have no present sequence; drop them before the model")
        return present

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens of every sequence slot, present or not: ``[B, S, X, Y, Z]`` -> ``[B, N, E]``.

        Embedding all ``N`` slots and dropping the unused ones after (in :meth:`forward_tokens`) keeps
        this four plain matmuls; it costs about two blocks' worth of a masked ViT-B forward pass.
        """
        patches = patchify(images.to(self.cls_token.dtype), self.config.patch_size)  # [B, S, L, P]
        x = torch.stack([embed(patches[:, s]) for s, embed in enumerate(self.patch_embed)], dim=1)  # [B, S, L, E]
        x = x + self.pos_embed[None, None] + self.seq_embed[None, :, None]
        return x.flatten(1, 2)  # [B, N, E]

    def forward_tokens(
        self, images: torch.Tensor, present: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the present (and, with ``keep``, visible) tokens of each exam.

        Args:
            images: ``[B, S, X, Y, Z]``; channels of absent sequences are ignored (any values).
            present: ``[B, S]`` bool.
            keep: optional ``[B, S * L]`` bool, the visible tokens (from :func:`random_masking`).

        Returns:
            ``tokens`` ``[B, 1 + M, E]`` (CLS first, then the exam's tokens in slot order ``s * L + l``,
            then padding) and ``token_mask`` ``[B, 1 + M]`` bool, False at padding.
        """
        present = self.check_inputs(images, present)
        valid = present.repeat_interleave(self.config.num_patches, dim=1)  # [B, N]
        if keep is not None:
            valid = valid & keep
        x, token_mask = pack(self.embed(images), valid)  # [B, M, E], [B, M]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # [B, 1 + M, E]
        token_mask = F.pad(token_mask, (1, 0), value=True)  # [B, 1 + M]
        x = run_blocks(self.blocks, x, token_mask, self.grad_checkpointing)
        return self.norm(x), token_mask

    forward_features = forward_tokens  # timm's name

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + M, E]`` -> ``[B, E]``, the CLS token."""
        return tokens[:, 0]

    def forward(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Exam embeddings ``[B, E]`` from all present tokens (no masking)."""
        tokens, _ = self.forward_tokens(images, present)
        return self.forward_head(tokens)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "seq_embed"}


# ----------------------------------------------------------------------------- decoder


class UMBIFDecoder(nn.Module):
    """Light transformer that predicts the voxels of every present token from the visible ones."""

    pos_embed: torch.Tensor  # fixed buffer [L, E]

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        S, E = config.num_sequences, config.decoder_dim
        self.grad_checkpointing = config.grad_checkpointing
        self.embed = nn.Linear(config.dim, E)
        self.mask_token = nn.Parameter(torch.zeros(E))
        self.seq_embed = nn.Parameter(torch.zeros(S, E))
        self.register_buffer("pos_embed", sincos_pos_embed_3d(E, config.grid), persistent=False)  # [L, E]
        self.blocks = nn.ModuleList(
            Block(E, config.decoder_heads, config.mlp_ratio) for _ in range(config.decoder_depth)
        )
        self.norm = nn.LayerNorm(E, eps=1e-6)
        self.pred = nn.Linear(E, config.patch_size**3 + (2 if config.stats_loss > 0 else 0))
        self.apply(init_weights)
        nn.init.normal_(self.seq_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, visible: torch.Tensor, present_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Predict patches.

        Args:
            tokens, token_mask: the encoder's output for ``visible``.
            visible: ``[B, N]`` bool, the slots the encoder saw.
            present_tokens: ``[B, N]`` bool, the slots of present sequences (the decoder's tokens).

        Returns:
            ``[B, N, P]`` predicted voxels (normalised per patch with ``norm_pix_loss``), zero at absent slots;
            ``[B, N, P + 2]`` with ``stats_loss``, the last two the patch mean and log standard deviation.
        """
        B = visible.shape[0]
        S, L = self.config.num_sequences, self.config.num_patches
        x = self.embed(tokens)  # [B, 1 + M, E]
        full = unpack(x[:, 1:], token_mask[:, 1:], visible, self.mask_token)  # [B, N, E], mask token if hidden
        full = full.view(B, S, L, -1) + self.pos_embed[None, None] + self.seq_embed[None, :, None]
        y, y_mask = pack(full.flatten(1, 2), present_tokens)  # [B, M', E], absent sequences removed
        y = torch.cat([x[:, :1].to(y.dtype), y], dim=1)  # [B, 1 + M', E]
        y = run_blocks(self.blocks, y, F.pad(y_mask, (1, 0), value=True), self.grad_checkpointing)
        y = self.pred(self.norm(y))[:, 1:]  # [B, M', P]
        return unpack(y, y_mask, present_tokens, y.new_zeros(()))  # [B, N, P]

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "seq_embed"}


# ----------------------------------------------------------------------------- pretrainer


class UMBIFPretrainer(nn.Module):
    """Encoder + decoder + projection head, trained with ``L = L_rec + lambda_con * L_con``.

    Objectives (``config.objective``):
        ``"hybrid"``: both views are masked independently (random patches and, sometimes, a whole
            sequence), each is reconstructed (``loss_rec`` is the mean of the two) and the CLS
            embeddings of the two masked views are contrasted (CAN, Mishra et al. 2022: masking is
            itself a strong augmentation, and the encoder sees only the visible 25%).
        ``"mae"``: only ``view1`` is used; ``loss_con`` is 0 and no projection head is built.
        ``"contrastive"``: no decoder; both views are still masked with ``mask_ratio`` and
            ``sequence_mask_prob`` as augmentation (set ``mask_ratio=0`` for plain SimCLR).

    With ``queue_size > 0`` the normalised projections of both views are pushed into a FIFO queue
    after each training step and serve as extra negatives in later steps (a memory bank: its entries
    come from an older encoder and can include the same exam in an epoch of few exams).

    Same-patient positives (DESIGN) are not implemented; ``info_nce`` is where they would go.

    Example:
        >>> model = UMBIFPretrainer(ModelConfig(image_size=(32, 32, 32), patch_size=8))
        >>> images, present = torch.randn(2, 4, 32, 32, 32), torch.ones(2, 4, dtype=torch.bool)
        >>> out = model(images, images.flip(2), present)
        >>> out["loss"].backward()
    """

    queue: torch.Tensor  # buffers, registered when queue_size > 0
    queue_ptr: torch.Tensor
    queue_count: torch.Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = UMBIFEncoder(config)
        self.decoder = UMBIFDecoder(config) if config.objective != "contrastive" else None
        self.projector: nn.Module | None = None
        if config.objective != "mae":
            self.projector = nn.Sequential(
                nn.Linear(config.dim, config.dim), nn.GELU(), nn.Linear(config.dim, config.proj_dim)
            )
            self.projector.apply(init_weights)
        if config.queue_size and self.projector is not None:
            self.register_buffer("queue", torch.zeros(config.queue_size, config.proj_dim))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next slot to write
            self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # filled slots

    def mask(self, present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, S]`` -> ``keep`` ``[B, N]`` with the config's ratios."""
        c = self.config
        return random_masking(present, c.num_patches, c.mask_ratio, c.sequence_mask_prob, generator)

    def forward(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor | None,
        present: torch.Tensor,
        generator: torch.Generator | None = None,
        gather_negatives: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch.

        Args:
            view1, view2: ``[B, S, X, Y, Z]`` two augmentations of the same exams (``view2`` may be
                None for ``objective="mae"``).
            present: ``[B, S]`` bool, shared by both views.
            generator: random source of the masks, on the images' device.
            gather_negatives: optional function from this rank's projections ``[2B, D]`` to negatives
                from other ranks ``[K, D]`` (distributed training); they enter ``info_nce`` as
                ``extra_negatives``.

        Returns:
            ``{"loss", "loss_rec", "loss_con"}``: scalar float32 tensors.
        """
        c = self.config
        if c.objective != "mae" and view2 is None:
            raise ValueError(f"objective {c.objective!r} needs two views; pass view2")
        present = self.encoder.check_inputs(view1, present)
        views = [view1] if c.objective == "mae" else [view1, view2]
        encoded = []
        for view in views:
            keep = self.mask(present, generator)
            encoded.append((view, keep, *self.encoder.forward_tokens(view, present, keep)))

        zero = torch.zeros((), device=view1.device)
        loss_rec = zero
        if self.decoder is not None:
            present_tokens = present.repeat_interleave(c.num_patches, dim=1)  # [B, N]
            losses = []
            for view, keep, tokens, token_mask in encoded:
                pred = self.decoder(tokens, token_mask, keep, present_tokens)  # [B, N, P]
                target = patchify(view.float(), c.patch_size).flatten(1, 2)  # [B, N, P]
                mask = present_tokens & ~keep
                losses.append(reconstruction_loss(pred, target, mask, c.norm_pix_loss, c.stats_loss))
            loss_rec = torch.stack(losses).mean()

        loss_con = zero
        if self.projector is not None:
            z1, z2 = (self.projector(tokens[:, 0]) for _, _, tokens, _ in encoded)  # [B, D] each
            queue = self.queue[: int(self.queue_count)].clone() if c.queue_size else None
            extra = gather_negatives(torch.cat([z1, z2])) if gather_negatives is not None else None
            loss_con = info_nce(z1, z2, c.temperature, queue=queue, extra_negatives=extra)
            if c.queue_size and self.training:
                self._enqueue(torch.cat([z1, z2]))
        return {"loss": loss_rec + c.lambda_con * loss_con, "loss_rec": loss_rec, "loss_con": loss_con}

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        size = self.config.queue_size
        z = F.normalize(z.detach().float(), dim=1)[-size:]  # [n, D]
        slots = (int(self.queue_ptr) + torch.arange(z.shape[0], device=z.device)) % size
        self.queue[slots] = z
        self.queue_ptr.fill_((int(self.queue_ptr) + z.shape[0]) % size)
        self.queue_count.fill_(min(size, int(self.queue_count) + z.shape[0]))

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, present: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask, encode and decode ``images`` for a preview.

        Returns:
            ``pred`` ``[B, S, X, Y, Z]``, the decoder's patches in image intensities (with
            ``norm_pix_loss`` each patch is rescaled to the true patch's mean and standard deviation),
            zero for absent sequences; and ``masked`` ``[B, S, X, Y, Z]`` float, 1 where the encoder
            did not see the voxel's patch of a present sequence.
        """
        if self.decoder is None:
            raise ValueError("objective 'contrastive' has no decoder; nothing to reconstruct")
        c = self.config
        present = self.encoder.check_inputs(images, present)
        keep = self.mask(present, generator)
        tokens, token_mask = self.encoder.forward_tokens(images, present, keep)
        present_tokens = present.repeat_interleave(c.num_patches, dim=1)  # [B, N]
        pred = self.decoder(tokens, token_mask, keep, present_tokens).float()[..., : c.patch_size**3]  # [B, N, P]
        if c.norm_pix_loss:
            target = patchify(images.float(), c.patch_size).flatten(1, 2)
            pred = pred * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
            pred = pred * present_tokens[..., None]
        masked = (present_tokens & ~keep).float()[..., None].expand_as(pred)
        shape = (*present.shape, c.num_patches, -1)  # [B, S, L, P]
        pred, masked = (unpatchify(t.reshape(shape), c.patch_size, c.grid) for t in (pred, masked))
        return pred, masked

    def no_weight_decay(self) -> set[str]:
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        if self.decoder is not None:
            names |= {f"decoder.{n}" for n in self.decoder.no_weight_decay()}
        return names


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- presets

# Sizes. The field defaults of ModelConfig are the tiny preset (trains on 2 CPU cores); small, base and
# large follow ViT-S/B/L with MAE's light decoders. Parameter counts: docs/model.md.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {"dim": 384, "depth": 12, "heads": 6, "decoder_dim": 256, "decoder_depth": 4, "decoder_heads": 8},
    "base": {"dim": 768, "depth": 12, "heads": 12, "decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16},
    "large": {"dim": 1024, "depth": 24, "heads": 16, "decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16},
}

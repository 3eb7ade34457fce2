"""SSL-ImageNet baseline: a 2D ViT self-supervised on natural photographs, inflated into the 3D UMBIF encoder.

Read top to bottom: the photo corpus and its training views, the 2D masked autoencoder (:class:`PhotoMAE`,
built from UMBIF's own blocks, masking, packing and loss), its pretraining loop, then the inflation of a
2D ViT state dict (ours, or a timm / DINO / MAE checkpoint) into a :class:`UMBIFEncoder`.

The embedded corpus is tiny on purpose, and honest about it: the photographs that ship inside installed
packages, 20 from scikit-image's ``skimage/data`` folder (0.26: 102 x 102 to 1411 x 1411 pixels; drawings
and test patterns left out) and 2 from scikit-learn's ``load_sample_images`` (427 x 640), so 22 images
against ImageNet's 1.28 million. Random resized crops, flips and colour jitter make the views. Pass a
real ImageNet-pretrained checkpoint (``checkpoint=``) for the baseline the name promises.

Inflation (I3D, Carreira & Zisserman 2017): the 2D patch embedding ``[E, C, p, p]`` is summed over its
colour channels (timm's ``adapt_input_conv`` for one channel: a grey image shown as R = G = B gives the
same response), repeated ``p`` times along the third axis and divided by ``p``, so a volume that is
constant along that axis gives every patch exactly the 2D response; every sequence gets a copy.
Transformer blocks, final norm and CLS token are copied; the 3D sin-cos positions stay fixed (they agree
with the 2D model's on the first plane), sequence embeddings start at zero.

Token axes: image rows map to the volume's first axis (x), columns to the second (y), depth is z.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import save as safetensors_bytes
from torch import nn

from umbif.config import FrozenConfig
from umbif.models.blocks import Block, init_weights, run_blocks
from umbif.models.io import (
    STRIP_PREFIXES,
    check_weights,
    load_state_tolerant,
    name_listing,
    read_safetensors,
    save_encoder,
)
from umbif.models.objectives import reconstruction_loss
from umbif.models.pos_embed import sincos_pos_embed_3d
from umbif.models.umbif import ModelConfig, UMBIFEncoder, pack, random_masking, unpack
from umbif.provenance import provenance
from umbif.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from umbif.train.logging import MetricsLogger
from umbif.train.schedule import warmup_cosine
from umbif.utils import atomic_write, json_text, write_json

# skimage/data files that are drawings or synthetic test patterns, not photographs
NOT_PHOTOS = frozenset(
    {"chessboard_GRAY.png", "chessboard_RGB.png", "color.png", "horse.png", "logo.png", "phantom.png"}
)
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")  # still images; skimage's .gif/.tif/.npy/.npz files are not photos
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as timm checkpoints expect
WEIGHTS_FILE, CARD_FILE = "photo_vit.safetensors", "photo_vit.json"  # written by pretrain_photos
SOURCE_FILE = "ssl_imagenet.json"  # beside the encoder: where its weights came from


# ----------------------------------------------------------------------------- corpus and views


def photo_corpus() -> list[tuple[str, np.ndarray]]:
    """The natural photographs that ship inside installed packages; nothing is downloaded.

    Lists scikit-image's ``skimage/data`` folder (only the files present in the installed wheel; its
    fetching functions are never called) and adds scikit-learn's two ``load_sample_images``.

    Returns:
        ``(name, image)`` pairs, ``image`` ``[H, W, 3]`` uint8 (grey photographs repeated to RGB).

    Raises:
        FileNotFoundError: scikit-image is not installed or its data folder holds no photograph.

    Example:
        >>> [name for name, _ in photo_corpus()][:2]
        ['skimage/astronaut.png', 'skimage/brick.png']
    """
    import skimage.io
    from sklearn.datasets import load_sample_images

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed; `pip install scikit-image` (a umbif dependency)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.name not in NOT_PHOTOS)
    if not files:
        raise FileNotFoundError(f"{folder} holds no photograph; reinstall scikit-image")
    photos = [(f"skimage/{p.name}", _rgb(skimage.io.imread(p))) for p in files]
    samples = load_sample_images()
    photos += [(f"sklearn/{Path(f).name}", _rgb(i)) for f, i in zip(samples.filenames, samples.images, strict=True)]
    return photos


def _rgb(image: np.ndarray) -> np.ndarray:
    """``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` -> ``[H, W, 3]`` uint8."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def describe_corpus(photos: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """How big the corpus is: image count, pixel sizes (min, max), names."""
    sizes = np.array([image.shape[:2] for _, image in photos])
    return {
        "images": len(photos),
        "min_size": sizes.min(0).tolist(),
        "max_size": sizes.max(0).tolist(),
        "megapixels": round(float(sizes.prod(1).sum()) / 1e6, 2),
        "names": [name for name, _ in photos],
    }


def photo_views(
    photos: list[torch.Tensor], count: int, size: int, generator: torch.Generator, min_scale: float = 0.2
) -> torch.Tensor:
    """Random training views: resized crop (MAE's scale 0.2-1), horizontal flip, colour jitter, grey.

    Hand-written (torchvision cannot be installed here) and drawn from one generator, so a run resumes
    exactly. Each view: a photo uniformly, a box of ``min_scale``-1 of its area and aspect 3/4-4/3
    resized to ``size`` x ``size`` (antialiased), mirrored with probability 0.5, brightness, contrast
    and saturation each scaled by 0.6-1.4, turned grey with probability 0.2, then normalised with
    ImageNet's mean and standard deviation.

    Args:
        photos: ``[3, H, W]`` float tensors in [0, 1].
        count: views to make.
        size: output edge in pixels.
        generator: the random source (CPU).

    Returns:
        ``[count, 3, size, size]`` float32.
    """
    u = torch.rand(count, 10, generator=generator, dtype=torch.float64).tolist()  # every draw, up front
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    views = []
    for draw in u:
        photo = photos[min(int(draw[0] * len(photos)), len(photos) - 1)]
        height, width = photo.shape[1:]
        area = height * width * (min_scale + (1 - min_scale) * draw[1])
        aspect = float(np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * draw[2]))
        h = int(min(height, max(8, round(np.sqrt(area / aspect)))))
        w = int(min(width, max(8, round(np.sqrt(area * aspect)))))
        top, left = int(draw[3] * (height - h + 1)), int(draw[4] * (width - w + 1))
        view = photo[:, top : top + h, left : left + w][None]
        view = F.interpolate(view, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if draw[5] < 0.5:
            view = view.flip(2)
        grey = (0.299 * view[0] + 0.587 * view[1] + 0.114 * view[2])[None]  # [1, size, size] luma
        view = view * (0.6 + 0.8 * draw[6])  # brightness
        view = (view - grey.mean()) * (0.6 + 0.8 * draw[7]) + grey.mean()  # contrast
        view = (view - grey) * (0.6 + 0.8 * draw[8]) + grey  # saturation
        if draw[9] < 0.2:
            view = (0.299 * view[0] + 0.587 * view[1] + 0.114 * view[2]).expand(3, -1, -1)
        views.append((view.clamp(0, 1) - mean) / std)
    return torch.stack(views).float()


def _shrink(photo: torch.Tensor, short_side: int) -> torch.Tensor:
    """``[3, H, W]`` scaled down (antialiased) so its shorter side is at most ``short_side``: views of a
    1411-pixel photo then cost what views of a 384-pixel one do, and still come from its whole field."""
    factor = short_side / min(photo.shape[1:])
    if factor >= 1:
        return photo
    size = [max(1, round(n * factor)) for n in photo.shape[1:]]
    return F.interpolate(photo[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


# ----------------------------------------------------------------------------- 2D masked autoencoder


def patchify_2d(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, L, C * p * p]``, patches in row-major (row, column) order."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
    return x.reshape(B, (H // p) * (W // p), C * p * p)


class PatchEmbed2d(nn.Module):
    """timm's ``PatchEmbed``: a kernel = stride = p convolution, ``[B, C, H, W]`` -> ``[B, L, E]``."""

    def __init__(self, channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # [B, L, E], row-major (row, column)


class PhotoMAE(nn.Module):
    """A 2D ViT masked autoencoder (He et al. 2022) with UMBIF's width, depth and heads.

    The encoder's state-dict names are timm's ``VisionTransformer`` names (``patch_embed.proj``,
    ``cls_token``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``; UMBIF's
    ``Block`` uses the same), the decoder's are MAE's (``decoder_*``, ``mask_token``), so one loader
    inflates this model and any timm/DINO/MAE checkpoint. Positions are fixed sin-cos (not saved),
    built with UMBIF's 3D helper on a one-plane grid: the 2D model sees exactly the codes the 3D
    encoder gives the plane z = 0. No position is added to the CLS token (as in UMBIF).

    Args:
        config: the target UMBIF architecture (width, depth, heads, MLP ratio, patch size, decoder
            sizes, ``mask_ratio``, ``norm_pix_loss``).
        image_size: edge of the square training views in pixels (a multiple of the patch size).
        channels: 3 for RGB.

    Example:
        >>> model = PhotoMAE(ModelConfig(patch_size=16), image_size=64)
        >>> model(torch.randn(2, 3, 64, 64))["loss"].backward()
    """

    pos_embed: torch.Tensor  # fixed buffers [L, E], [L, D]
    decoder_pos_embed: torch.Tensor

    def __init__(self, config: ModelConfig, image_size: int = 128, channels: int = 3):
        super().__init__()
        p, E, D = config.patch_size, config.dim, config.decoder_dim
        if image_size % p:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {p}")
        self.config, self.image_size, self.channels = config, image_size, channels
        grid = (image_size // p, image_size // p, 1)
        self.patch_embed = PatchEmbed2d(channels, E, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        self.register_buffer("pos_embed", sincos_pos_embed_3d(E, grid), persistent=False)
        self.blocks = nn.ModuleList(Block(E, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(E, eps=1e-6)
        self.decoder_embed = nn.Linear(E, D)
        self.mask_token = nn.Parameter(torch.zeros(D))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_3d(D, grid), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(D, config.decoder_heads, config.mlp_ratio) for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(D, eps=1e-6)
        self.decoder_pred = nn.Linear(D, channels * p * p)
        self.apply(init_weights)
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(E, -1))  # as a Linear (MAE)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_features(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``[B, C, H, W]`` (only the ``keep`` ``[B, L]`` tokens, all equally many per image)
        -> ``[B, 1 + M, E]``, CLS first."""
        x = self.patch_embed(images) + self.pos_embed[None]  # [B, L, E]
        if keep is not None:
            x, _ = pack(x, keep)  # [B, M, E]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.norm(run_blocks(self.blocks, x, mask, False))

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + M, E]`` -> ``[B, E]``, the CLS token."""
        return tokens[:, 0]

    def forward_decoder(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encoder tokens of the visible patches -> ``[B, L, C * p * p]`` predicted pixels of all patches."""
        x = self.decoder_embed(tokens)  # [B, 1 + M, D]
        full = unpack(x[:, 1:], torch.ones_like(x[:, 1:, 0], dtype=torch.bool), keep, self.mask_token)  # [B, L, D]
        y = torch.cat([x[:, :1], full + self.decoder_pos_embed[None]], dim=1)  # [B, 1 + L, D]
        y = run_blocks(self.decoder_blocks, y, torch.ones(y.shape[:2], dtype=torch.bool, device=y.device), False)
        return self.decoder_pred(self.decoder_norm(y))[:, 1:]

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Mask ``mask_ratio`` of each image's patches, reconstruct them.

        Returns:
            ``{"loss"}`` (MSE on the hidden patches, per-patch normalised with ``norm_pix_loss``),
            ``"pred"`` ``[B, L, C * p * p]`` and ``"keep"`` ``[B, L]`` bool (visible patches).
        """
        c = self.config
        B, L = images.shape[0], self.pos_embed.shape[0]
        every = torch.ones(B, 1, dtype=torch.bool, device=images.device)
        keep = random_masking(every, L, c.mask_ratio, 0.0, generator)  # [B, L]
        pred = self.forward_decoder(self.forward_features(images, keep), keep)
        target = patchify_2d(images, c.patch_size)
        return {"loss": reconstruction_loss(pred, target, ~keep, c.norm_pix_loss), "pred": pred, "keep": keep}

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm's names (what a 2D checkpoint holds)."""
        skip = ("decoder_", "mask_token")
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith(skip)}

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "mask_token"}


# ----------------------------------------------------------------------------- pretraining


class PhotoPretrainConfig(FrozenConfig):
    """A 2D photo pretraining run; saved with its checkpoints and its weights."""

    model: ModelConfig = Field(default_factory=ModelConfig)  # the UMBIF architecture the weights are for
    total_steps: int = 300  # optimiser steps
    batch_size: int = 32  # views per step
    image_size: int = 128  # view edge in pixels (64 patches of 16 x 16)
    lr: float = 1e-3  # peak AdamW learning rate
    warmup_steps: int = 20  # linear warm-up, then cosine decay to lr * 0.05
    weight_decay: float = 0.05  # not on biases, norms and tokens
    seed: int = 0
    checkpoint_every: int = 100  # steps between resumable checkpoints (and one at the end)


def pretrain_photos(
    out_dir: str | Path,
    model_config: ModelConfig,
    steps: int = 300,
    batch_size: int = 32,
    seed: int = 0,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    image_size: int = 128,
    checkpoint_every: int = 100,
) -> Path:
    """Pretrain a 2D MAE with ``model_config``'s sizes on the embedded photographs.

    Resumable: a run stopped part-way continues from its last checkpoint with the same result; a
    finished run with the same settings returns at once.

    Args:
        out_dir: run folder: ``checkpoints/``, ``metrics.jsonl``, and at the end ``photo_vit.safetensors``
            (encoder weights, timm names) with ``photo_vit.json`` (settings, corpus, losses, provenance).
        model_config: the UMBIF architecture to inflate into later (width, depth, heads, patch size).
        steps, batch_size, seed: optimiser steps, views per step, random seed.
        on_step: called after every step with (step, total, {"loss", "lr"}).
        image_size: view edge in pixels.
        checkpoint_every: steps between resumable checkpoints.

    Returns:
        the path of ``photo_vit.safetensors``.

    Example:
        >>> weights = pretrain_photos("runs/photos", ModelConfig(preset="tiny"), steps=300)
    """
    out_dir = Path(out_dir)
    config = PhotoPretrainConfig(
        model=model_config,
        total_steps=steps,
        batch_size=batch_size,
        image_size=image_size,
        warmup_steps=max(1, min(20, steps // 10)),
        seed=seed,
        checkpoint_every=checkpoint_every,
    )
    weights, card = out_dir / WEIGHTS_FILE, out_dir / CARD_FILE
    if weights.is_file() and card.is_file():
        done = json.loads(card.read_text()).get("config", {})
        if {**done, "checkpoint_every": checkpoint_every} == config.to_dict():  # finished with these settings
            return weights
    photos = photo_corpus()
    tensors = [_shrink(torch.from_numpy(image).permute(2, 0, 1).float() / 255, 3 * image_size) for _, image in photos]

    torch.manual_seed(seed)
    model = PhotoMAE(config.model, image_size)
    skip = model.no_weight_decay()
    groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    for name, param in model.named_parameters():
        groups[param.ndim >= 2 and name not in skip].append(param)
    optimizer = torch.optim.AdamW(
        [{"params": groups[True], "weight_decay": config.weight_decay}, {"params": groups[False], "weight_decay": 0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    scheduler = warmup_cosine(optimizer, config.warmup_steps, steps, 0.05)
    generator = torch.Generator().manual_seed(seed)  # views and masks
    step = 0
    if latest_checkpoint(out_dir) is not None:
        step = int(load_checkpoint(out_dir, model, optimizer, scheduler, generators={"train": generator},
                                   config=config.to_dict())["step"])  # fmt: skip
    logger = MetricsLogger(out_dir, True, resume_step=step)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    while step < steps:
        views = photo_views(tensors, batch_size, image_size, generator)
        loss = model(views, generator)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        if not np.isfinite(float(loss.detach())):
            raise FloatingPointError(f"photo pretraining step {step}: loss is not finite")
        record = {"loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]}
        losses.append(record["loss"])
        logger.log(step, record)
        if step % config.checkpoint_every == 0 or step == steps:
            save_checkpoint(out_dir, step, model, optimizer, scheduler, config=config.to_dict(),
                            generators={"train": generator}, keep=1)  # fmt: skip
        if on_step is not None:
            on_step(step, steps, record)
    logger.close()

    state = model.encoder_state()
    config_text = json_text(config.to_dict(), indent=None)
    metadata = {"format": "pt", "umbif_format": "umbif-photo-vit", "umbif_config": config_text}
    with atomic_write(weights) as handle:
        handle.write(safetensors_bytes(state, metadata=metadata))
    summary = {
        "format": "umbif-photo-vit",
        "config": config.to_dict(),
        "corpus": describe_corpus(photos),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - start, 2),
        "provenance": provenance(seed=seed),
    }
    write_json(card, summary)
    return weights


# ----------------------------------------------------------------------------- inflation


def inflate_state(
    state_2d: dict[str, torch.Tensor], model_config: ModelConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a 2D ViT state dict (timm / DINO / MAE names, or :class:`PhotoMAE`'s) onto UMBIF encoder keys.

    What moves where:
        ``patch_embed.proj.weight`` ``[E, C, p, p]`` -> every ``patch_embed.<s>.weight`` ``[E, p^3]``:
            summed over C, repeated p times along depth, divided by p (bias copied);
        ``cls_token`` -> ``cls_token``, plus ``pos_embed``'s class position when the checkpoint has one
            (timm adds it to the CLS token; UMBIF adds no position there);
        ``blocks.N.*`` -> ``blocks.N.*`` (same names); LayerScale ``ls1.gamma`` / ``ls2.gamma`` (DeiT III,
            DINOv2) folded into ``attn.proj`` / ``mlp.fc2``; a missing ``qkv.bias`` (qkv_bias=False) is 0;
        ``norm`` (or ``fc_norm`` of global-pool models when there is no ``norm``) -> ``norm``;
        ``seq_embed`` -> zeros. Wrapper prefixes (``module.``, ``model.``, ``backbone.``, ...) are stripped.

    Returns:
        the encoder state dict and the 2D keys that were not used (e.g. ``pos_embed``, ``head.*``,
        ``decoder_*``: the 3D positions are fixed sin-cos, heads are task-specific).

    Raises:
        ValueError: no ``patch_embed.proj.weight``, or a patch size, width or depth that differs from
            ``model_config`` (the message says which to set).
    """
    state, given = {}, {}  # stripped name -> tensor, -> key as given
    for key, value in state_2d.items():
        name = key
        while not name.startswith(("patch_embed.", "blocks.", "cls_token", "norm.")) and name.startswith(
            STRIP_PREFIXES
        ):
            name = name.split(".", 1)[1]
        state[name], given[name] = value.detach().float().cpu(), key
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return state[name]

    if "patch_embed.proj.weight" not in state:
        raise ValueError(
            f"not a 2D ViT state dict: no patch_embed.proj.weight among its keys ({name_listing(sorted(state_2d))})"
        )
    c = model_config
    weight = take("patch_embed.proj.weight")
    E, p = c.dim, c.patch_size
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (p, p) or weight.shape[0] != E:
        raise ValueError(
            f"2D patch embedding {list(weight.shape)} does not fit width {E} and patch size {p}: choose a ModelConfig "
            f"with dim={weight.shape[0]} (and its heads) and patch_size={weight.shape[-1]}"
        )
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth != c.depth:
        raise ValueError(f"the 2D checkpoint has {depth} blocks, the model config {c.depth}: set depth={depth}")

    planar = weight.sum(1)  # [E, p, p], rows = x, columns = y
    volumetric = (planar[..., None] / p).expand(E, p, p, p).reshape(E, p**3)  # [E, p^3] in (x, y, z) order
    bias = take("patch_embed.proj.bias") if "patch_embed.proj.bias" in state else torch.zeros(E)
    out = {}
    for s in range(c.num_sequences):
        out[f"patch_embed.{s}.weight"], out[f"patch_embed.{s}.bias"] = volumetric.clone(), bias.clone()
    out["seq_embed"] = torch.zeros(c.num_sequences, E)
    cls = take("cls_token").reshape(1, 1, E) if "cls_token" in state else torch.zeros(1, 1, E)
    if "pos_embed" in state:
        positions = state["pos_embed"].reshape(-1, E)
        if round((positions.shape[0] - 1) ** 0.5) ** 2 == positions.shape[0] - 1:  # 1 + g^2 rows: a class position
            cls = cls + positions[:1].reshape(1, 1, E)
            used.add("pos_embed")
    out["cls_token"] = cls

    for i in range(depth):
        prefix = f"blocks.{i}."
        for key in [k for k in state if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            if rest not in ("ls1.gamma", "ls2.gamma") and not rest.startswith(("attn.q_norm", "attn.k_norm")):
                out[key] = take(key)
        if f"{prefix}attn.qkv.bias" not in out:
            out[f"{prefix}attn.qkv.bias"] = torch.zeros(3 * E)
        for gamma, layer in (("ls1.gamma", "attn.proj"), ("ls2.gamma", "mlp.fc2")):
            if prefix + gamma in state:  # x + g * (W y + b) = x + (g W) y + g b
                g = take(prefix + gamma)
                out[f"{prefix}{layer}.weight"] = g[:, None] * out[f"{prefix}{layer}.weight"]
                out[f"{prefix}{layer}.bias"] = g * out[f"{prefix}{layer}.bias"]
    norm = "norm" if "norm.weight" in state else "fc_norm" if "fc_norm.weight" in state else None
    if norm is not None:
        out["norm.weight"], out["norm.bias"] = take(f"{norm}.weight"), take(f"{norm}.bias")
    unused = [given[key] for key in state if key not in used]
    return out, unused


def inflate_to_encoder(state_2d: dict[str, torch.Tensor], model_config: ModelConfig) -> UMBIFEncoder:
    """A :class:`UMBIFEncoder` with a 2D ViT's weights inflated into it (see :func:`inflate_state`).

    2D keys that are not used are named in a warning; a shape that does not fit raises, naming the layer.

    Example:
        >>> state, _ = read_safetensors("vit_small_patch16_224.safetensors")
        >>> encoder = inflate_to_encoder(state, ModelConfig(preset="small"))
    """
    return _inflate(state_2d, model_config)[0]


def _inflate(state_2d: dict[str, torch.Tensor], model_config: ModelConfig) -> tuple[UMBIFEncoder, list[str]]:
    mapped, unused = inflate_state(state_2d, model_config)
    if unused:
        warnings.warn(f"{len(unused)} keys of the 2D checkpoint are not used: {name_listing(unused)}", stacklevel=3)
    encoder = UMBIFEncoder(model_config)
    load_state_tolerant(encoder, mapped, strict=True)
    return encoder.eval(), unused


def build_ssl_imagenet_encoder(
    out_dir: str | Path,
    model_config: ModelConfig,
    checkpoint: str | Path | None = None,
    steps: int = 300,
    batch_size: int = 32,
    seed: int = 0,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    image_size: int = 128,
) -> Path:
    """The SSL-ImageNet encoder folder: a 2D ViT, self-supervised on photographs, inflated to 3D.

    Args:
        out_dir: becomes an encoder folder (``encoder.safetensors`` + ``config.json``, loaded by
            ``umbif.load_encoder`` like any UMBIF encoder) with ``ssl_imagenet.json`` (where the 2D
            weights came from, unused keys) and, without ``checkpoint``, the photo run in ``photos/``.
        model_config: the UMBIF architecture (the 2D ViT gets its width, depth, heads and patch size).
        checkpoint: a 2D ViT state dict in ``.safetensors`` (timm / DINO / MAE names); None pretrains
            one on the embedded photographs (:func:`pretrain_photos`).
        steps, batch_size, seed, on_step, image_size: for :func:`pretrain_photos`.

    Returns:
        ``out_dir``. Rerunning with the same settings reuses what is there.

    Example:
        >>> folder = build_ssl_imagenet_encoder("runs/ssl_imagenet", ModelConfig(image_size=(64, 64, 64)), steps=300)
        >>> encoder = umbif.load_encoder(folder)
    """
    out_dir = Path(out_dir)
    if checkpoint is not None:
        source: dict[str, Any] = {"checkpoint": str(Path(checkpoint).resolve())}
        weights = Path(checkpoint)
    else:
        source = {"pretrained": "embedded photographs", "steps": steps, "batch_size": batch_size, "seed": seed,
                  "image_size": image_size}  # fmt: skip
        weights = pretrain_photos(out_dir / "photos", model_config, steps, batch_size, seed, on_step, image_size)
    record = {"format": "umbif-ssl-imagenet", "model": model_config.to_dict(), "source": source}
    done = out_dir / SOURCE_FILE
    if done.is_file() and (out_dir / "encoder.safetensors").is_file():
        previous = json.loads(done.read_text())
        if {k: previous.get(k) for k in record} == record:
            return out_dir
    state, _ = read_safetensors(weights)  # refuses pickles
    check_weights(weights, state)  # finite floats only: a diverged or foreign file gives no encoder
    encoder, unused = _inflate(state, model_config)
    save_encoder(encoder, model_config, out_dir)
    card = {**record, "unused_keys": unused, "provenance": provenance()}
    write_json(done, card)
    return out_dir

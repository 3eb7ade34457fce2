"""How big a UMBIF config may be, and how much memory it would take, worked out from its sizes alone.

:class:`umbif.models.umbif.ModelConfig` calls :func:`check_sizes` when it is validated, so a ``config.json``
from elsewhere (a shared encoder, a checkpoint) cannot ask for a negative model, or for one that fills the
machine before anything can say no (depth 10**6, a 10**5-voxel grid): the sizes are refused, with the memory
they would need, before a single tensor is allocated.

Example:
    >>> from umbif.models.umbif import ModelConfig
    >>> f"{weight_bytes(ModelConfig(preset='base')) / 2**20:.0f} MiB"
    '482 MiB'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from umbif import SEQUENCES

if TYPE_CHECKING:
    from umbif.models.umbif import ModelConfig

SIZES: tuple[str, ...] = (
    "image_size", "patch_size", "num_sequences", "dim", "depth", "heads", "decoder_dim", "decoder_depth",
    "decoder_heads", "proj_dim",
)  # fmt: skip
# Upper bounds, each on its own (ViT-L on a 256^3 grid is well inside them) ...
LIMITS: dict[str, int] = {
    "image_size": 1024,  # voxels per axis
    "patch_size": 64,  # voxels per patch edge
    "num_patches": 32_768,  # patches per sequence (L): attention is quadratic in the tokens
    "dim": 4096,
    "depth": 64,
    "heads": 64,
    "decoder_dim": 4096,
    "decoder_depth": 64,
    "decoder_heads": 64,
    "proj_dim": 4096,
    "queue_size": 1 << 20,
}
# ... and together: the float32 weights of the pretrainer (ViT-L with its decoder: about 1.3 GiB)
MAX_WEIGHT_BYTES = 16 << 30


def check_sizes(config: ModelConfig) -> None:
    """Refuse sizes below 1, a patch larger than the image or not tiling it, more sequences than umbif knows,
    sizes above :data:`LIMITS` and weights above :data:`MAX_WEIGHT_BYTES` (saying how much they would need).

    Raises:
        ValueError: naming each size that is out of range.
    """
    values = {name: getattr(config, name) for name in SIZES}
    small = [f"{name} {v}" for name, v in values.items() if (min(v) if isinstance(v, tuple) else v) < 1]
    if small:
        raise ValueError(f"sizes must be at least 1: {', '.join(small)}")
    p, image = config.patch_size, config.image_size
    if p > min(image):
        raise ValueError(f"patch_size {p} is larger than the image {image}; choose a smaller patch")
    if any(n % p for n in image):
        raise ValueError(f"image_size {image} must be a multiple of patch_size {p} on every axis")
    if config.num_sequences > len(SEQUENCES):
        raise ValueError(f"num_sequences {config.num_sequences}: umbif knows {len(SEQUENCES)} ({', '.join(SEQUENCES)})")
    values = {name: getattr(config, name) for name in LIMITS if name not in ("image_size", "num_patches")}
    values |= {"image_size": max(image), "num_patches": config.num_patches}
    over = [f"{name} {values[name]} (at most {limit})" for name, limit in LIMITS.items() if values[name] > limit]
    need = weight_bytes(config)
    if over or need > MAX_WEIGHT_BYTES:
        raise ValueError(
            f"model too large: {', '.join(over) or 'these sizes together'}; it would need about {_gib(need)} for "
            f"its float32 weights alone (at most {_gib(MAX_WEIGHT_BYTES)}, before optimiser state and activations). "
            "Check the config, or use a preset (tiny, small, base, large)"
        )


def weight_bytes(config: ModelConfig) -> int:
    """Bytes of the float32 parameters and fixed buffers (position embeddings, queue) that building
    :class:`umbif.models.umbif.UMBIFPretrainer` allocates; nothing is built."""
    S, E, D, P, L = config.num_sequences, config.dim, config.decoder_dim, config.patch_size**3, config.num_patches
    encoder = S * (P * E + E) + S * E + E + config.depth * _block_parameters(E, config.mlp_ratio) + 2 * E + L * E
    decoder = E * D + D + D + S * D + config.decoder_depth * _block_parameters(D, config.mlp_ratio)
    decoder += 2 * D + D * P + P + L * D
    projector = E * E + E + E * config.proj_dim + config.proj_dim + config.queue_size * config.proj_dim
    total = encoder + (decoder if config.objective != "contrastive" else 0)
    return 4 * (total + (projector if config.objective != "mae" else 0))


def _block_parameters(width: int, mlp_ratio: float) -> int:
    """Parameters of one :class:`~umbif.models.blocks.Block`: two norms, qkv, the projection, the MLP."""
    hidden = int(width * mlp_ratio)
    return (
        (2 * width) * 2
        + (3 * width * width + 3 * width)
        + (width * width + width)
        + (2 * width * hidden + hidden + width)
    )


def _gib(n: int) -> str:
    return f"{n / 2**40:.1f} TiB" if n >= 2**40 else f"{n / 2**30:.2f} GiB"

"""Exam embeddings from a frozen encoder, cached on disk per (encoder, preprocessing plan).

What an exam's embedding is depends on the *readout* (:data:`READOUTS`):

- ``"cls"``: the encoder's CLS token on the cache's whole grid.
- ``"lesion"``: tokens pooled inside the segmented tumour per compartment, plus the CLS token as the
  whole-brain context (:mod:`umbif.models.readout`; exams without a segmentation fall back to the mean
  of all tokens, and the store's note counts them).
- ``"tumour-crop"``: the CLS token of a box of the encoder's own input size centred on the tumour, the
  way SSL-Cerebral is pretrained (exams without a segmentation: the box at the grid's centre).

The store is one file ``embeddings/<encoder fingerprint>-<plan fingerprint>[-<readout>].npz`` holding
``exam_ids`` (``[N]`` text) and ``values`` (``[N, F]`` float32), plus a ``.json`` note of where they
came from. A rerun embeds only exams not stored yet; another encoder, preprocessing plan or readout
gets its own file, so a stale embedding is never reused. The ``.npz`` is replaced atomically, so an
interrupted run leaves the previous, consistent store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from umbif.data.cache import Cache
from umbif.data.datasets import CacheDataset
from umbif.models.io import ENCODER_FILE, load_encoder
from umbif.models.readout import readout_features
from umbif.models.umbif import UMBIFEncoder
from umbif.train.augment import crop_starts, tumour_box_centre
from umbif.train.device import pick_device
from umbif.utils import atomic_write, check_component, inside, sha256_file, write_json

STORE_FORMAT = "umbif-embeddings"
READOUTS: tuple[str, ...] = ("cls", "lesion", "tumour-crop")


@dataclass(frozen=True)
class Embeddings:
    """Exam embeddings: row ``i`` of ``values`` belongs to ``exam_ids[i]``."""

    exam_ids: tuple[str, ...]
    values: np.ndarray  # [N, E] float32
    key: str  # "<encoder fingerprint>-<plan fingerprint>"

    def lookup(self, exam_ids: Sequence[str]) -> np.ndarray:
        """Rows for ``exam_ids`` in that order; ``KeyError`` names the exams without an embedding."""
        row = {e: i for i, e in enumerate(self.exam_ids)}
        missing = [e for e in exam_ids if e not in row]
        if missing:
            raise KeyError(f"{len(missing)} exams have no embedding (not in the cache?): {missing[:5]}")
        return self.values[[row[e] for e in exam_ids]]


def encoder_fingerprint(encoder_dir: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of the encoder's weights file."""
    path = Path(encoder_dir)
    weights = path / ENCODER_FILE if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no encoder weights here; export one with `umbif export RUN --out DIR`")
    return sha256_file(weights)[:16]


@torch.no_grad()
def embed_batch(encoder: torch.nn.Module, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """CLS embeddings ``[B, E]`` (float32) of ``images`` ``[B, S, X, Y, Z]`` with ``present`` ``[B, S]``."""
    device = next(encoder.parameters()).device
    return encoder(images.to(device, torch.float32), present.to(device)).float().cpu()


def tumour_crop(images: torch.Tensor, seg: torch.Tensor, size: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
    """Boxes of ``size`` centred on each exam's tumour bounding box (as SSL-Cerebral's pretraining crops,
    without the jitter); an exam without tumour voxels gets the box at the grid's centre.

    Returns ``[B, S, *size]`` and the number of exams that had no tumour.
    """
    grid = tuple(images.shape[2:])
    found = [tumour_box_centre(labels) for labels in seg]
    middle = torch.tensor([(n - 1) / 2 for n in grid], dtype=torch.float64)
    centres = torch.stack([middle if c is None else c for c in found])
    starts = crop_starts(torch.zeros(len(seg), 3), grid, size, centres, 0)
    cx, cy, cz = size
    boxes = [img[:, x : x + cx, y : y + cy, z : z + cz] for img, (x, y, z) in zip(images, starts, strict=True)]
    return torch.stack(boxes), sum(c is None for c in found)


def _embed_one_batch(encoder: UMBIFEncoder, batch: dict, readout: str) -> tuple[np.ndarray, int]:
    """Features of one loader batch and how many of its exams fell back (no usable segmentation)."""
    if readout == "cls":
        return embed_batch(encoder, batch["image"], batch["present"]).numpy(), 0
    if readout == "lesion":
        features, fallback = readout_features(encoder, batch["image"], batch["present"], batch["seg"], "lesion")
        return features.numpy(), int(fallback.sum())
    crops, missing = tumour_crop(batch["image"], batch["seg"], encoder.config.image_size)
    return embed_batch(encoder, crops, batch["present"]).numpy(), missing


def _read_store(path: Path) -> Embeddings | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, values = data["exam_ids"], data["values"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: damaged embedding store ({error}); delete it and rerun") from error
    if ids.ndim != 1 or values.ndim != 2 or len(ids) != len(values):
        raise ValueError(f"{path}: damaged embedding store (ids and values disagree); delete it and rerun")
    return Embeddings(tuple(str(e) for e in ids), values.astype(np.float32), path.stem)


def embed_exams(
    encoder_dir: str | Path,
    cache: Cache | str | Path,
    exam_ids: Sequence[str] | None = None,
    store_dir: str | Path | None = None,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    readout: str = "cls",
) -> Embeddings:
    """Embed cached exams with a frozen encoder, reusing (and extending) an on-disk store.

    The encoder runs in float32 and eval mode on the cache's whole grid (its position embeddings are
    fixed sin-cos, so an encoder pretrained on crops takes the full exam), or with
    ``readout="tumour-crop"`` on a box of its pretraining input size around the tumour.

    Args:
        encoder_dir: an exported encoder (``umbif export``) or classifier folder.
        cache: a :class:`umbif.data.cache.Cache` or a folder written by ``umbif preprocess``.
        exam_ids: the exams to embed (default: every exam in the cache).
        store_dir: where the ``embeddings/`` store lives (default: no store, nothing written).
        batch_size: exams per forward pass.
        device: torch device (default CUDA if available, else CPU).
        on_progress: called with (done, total) after each batch.
        readout: ``"cls"``, ``"lesion"`` or ``"tumour-crop"`` (see the module's docstring).

    Returns:
        :class:`Embeddings` for exactly ``exam_ids`` (in that order).

    Example:
        >>> emb = embed_exams("models/umbif-tiny", "cache/", store_dir="runs/eval")
        >>> emb.lookup(["P-1-E2"]).shape
        (1, 96)
    """
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}")
    cache = cache if isinstance(cache, Cache) else Cache(cache)
    suffix = "" if readout == "cls" else f"-{readout}"
    key = check_component(f"{encoder_fingerprint(encoder_dir)}-{cache.fingerprint}{suffix}", "embedding store name")
    wanted = list(exam_ids) if exam_ids is not None else cache.exam_ids
    store = inside(store_dir, Path(store_dir) / "embeddings" / f"{key}.npz") if store_dir is not None else None
    stored = _read_store(store) if store is not None else None
    known = set(stored.exam_ids) if stored else set()
    todo = [e for e in dict.fromkeys(wanted) if e not in known]
    new_values, fallbacks = np.zeros((0, 0), dtype=np.float32), 0
    if todo:
        # tumour crops keep the encoder's pretraining input size; the other readouts see the whole grid
        size = None if readout == "tumour-crop" else cache.grid
        encoder = load_encoder(encoder_dir, device=pick_device(device), image_size=size)
        if readout == "tumour-crop" and any(c > g for c, g in zip(encoder.config.image_size, cache.grid, strict=True)):
            raise ValueError(f"the encoder's input {encoder.config.image_size} is larger than the cache grid "
                             f"{cache.grid}; use another readout or a larger cache")  # fmt: skip
        dataset = CacheDataset(cache, todo, masks=readout != "cls")
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        chunks, done = [], 0
        for batch in loader:
            values, fallen = _embed_one_batch(encoder, batch, readout)
            chunks.append(values)
            fallbacks += fallen
            done += len(batch["exam_id"])
            if on_progress is not None:
                on_progress(done, len(todo))
        new_values = np.concatenate(chunks).astype(np.float32)
    if stored is not None and todo:
        if stored.values.shape[1] != new_values.shape[1]:
            raise ValueError(f"{store}: stored embeddings have another width; delete it and rerun")
        merged = Embeddings(stored.exam_ids + tuple(todo), np.concatenate([stored.values, new_values]), key)
    elif stored is not None:
        merged = stored
    else:
        merged = Embeddings(tuple(todo), new_values, key)
    if store is not None and todo:
        _write_store(store, merged, Path(encoder_dir), cache.path, readout, fallbacks)
    return Embeddings(tuple(wanted), merged.lookup(wanted), key)


def _write_store(
    path: Path, embeddings: Embeddings, encoder_dir: Path, cache_dir: Path, readout: str, fallbacks: int
) -> None:
    with atomic_write(path) as handle:
        np.savez(handle, exam_ids=np.array(embeddings.exam_ids, dtype=str), values=embeddings.values)
    previous = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
    note = {
        "readout": readout,
        # exams embedded without a usable segmentation (lesion: mean of all tokens; tumour-crop: central box)
        "fallbacks": int(previous.get("fallbacks", 0)) + fallbacks,
        "format": STORE_FORMAT,
        "key": embeddings.key,
        "encoder": encoder_dir.name,  # folder names only: absolute paths can carry a user's name
        "cache": cache_dir.name,
        "exams": len(embeddings.exam_ids),
        "dim": int(embeddings.values.shape[1]),
    }
    write_json(path.with_suffix(".json"), note, indent=1)

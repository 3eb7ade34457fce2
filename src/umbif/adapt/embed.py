"""Exam embeddings from a frozen encoder, cached on disk per (encoder, preprocessing plan).

The store is one file ``embeddings/<encoder fingerprint>-<plan fingerprint>.npz`` holding
``exam_ids`` (``[N]`` text) and ``values`` (``[N, E]`` float32), plus a ``.json`` note of where they
came from. A rerun embeds only exams not stored yet; another encoder or another preprocessing plan
gets its own file, so a stale embedding is never reused. The ``.npz`` is replaced atomically, so an
interrupted run leaves the previous, consistent store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from umbif.data.cache import Cache
from umbif.data.datasets import CacheDataset
from umbif.models.io import ENCODER_FILE, load_encoder
from umbif.train.device import pick_device
from umbif.utils import atomic_write, check_component, inside, sha256_file, write_json

STORE_FORMAT = "umbif-embeddings"


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
) -> Embeddings:
    """Embed cached exams with a frozen encoder, reusing (and extending) an on-disk store.

    The encoder runs on the cache's whole grid (its position embeddings are fixed sin-cos, so an
    encoder pretrained on crops takes the full exam), in float32 and eval mode.

    Args:
        encoder_dir: an exported encoder (``umbif export``) or classifier folder.
        cache: a :class:`umbif.data.cache.Cache` or a folder written by ``umbif preprocess``.
        exam_ids: the exams to embed (default: every exam in the cache).
        store_dir: where the ``embeddings/`` store lives (default: no store, nothing written).
        batch_size: exams per forward pass.
        device: torch device (default CUDA if available, else CPU).
        on_progress: called with (done, total) after each batch.

    Returns:
        :class:`Embeddings` for exactly ``exam_ids`` (in that order).

    Example:
        >>> emb = embed_exams("models/umbif-tiny", "cache/", store_dir="runs/eval")
        >>> emb.lookup(["P-1-E2"]).shape
        (1, 96)
    """
    cache = cache if isinstance(cache, Cache) else Cache(cache)
    key = check_component(f"{encoder_fingerprint(encoder_dir)}-{cache.fingerprint}", "embedding store name")
    wanted = list(exam_ids) if exam_ids is not None else cache.exam_ids
    store = inside(store_dir, Path(store_dir) / "embeddings" / f"{key}.npz") if store_dir is not None else None
    stored = _read_store(store) if store is not None else None
    known = set(stored.exam_ids) if stored else set()
    todo = [e for e in dict.fromkeys(wanted) if e not in known]
    new_values = np.zeros((0, 0), dtype=np.float32)
    if todo:
        encoder = load_encoder(encoder_dir, device=pick_device(device), image_size=cache.grid)
        loader = DataLoader(CacheDataset(cache, todo), batch_size=batch_size, shuffle=False)
        chunks, done = [], 0
        for batch in loader:
            chunks.append(embed_batch(encoder, batch["image"], batch["present"]).numpy())
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
        _write_store(store, merged, Path(encoder_dir), cache.path)
    return Embeddings(tuple(wanted), merged.lookup(wanted), key)


def _write_store(path: Path, embeddings: Embeddings, encoder_dir: Path, cache_dir: Path) -> None:
    with atomic_write(path) as handle:
        np.savez(handle, exam_ids=np.array(embeddings.exam_ids, dtype=str), values=embeddings.values)
    note = {
        "format": STORE_FORMAT,
        "key": embeddings.key,
        "encoder": encoder_dir.name,  # folder names only: absolute paths can carry a user's name
        "cache": cache_dir.name,
        "exams": len(embeddings.exam_ids),
        "dim": int(embeddings.values.shape[1]),
    }
    write_json(path.with_suffix(".json"), note, indent=1)

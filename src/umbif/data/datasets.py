"""PyTorch datasets over the exam cache.

Loading is a memory map of an uncompressed ``.npy`` file and one copy into the output tensor: no
decompression, no resampling, no normalisation at training time (they happened once, in
``umbif preprocess``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from umbif import SEQUENCES
from umbif.data.cache import Cache


class CacheDataset(Dataset):
    """Exams from a cache folder, one dictionary per exam (MONAI's dictionary style).

    Each item has:
        ``image``: ``[4, X, Y, Z]`` tensor in canonical order (T1, T1c, T2, FLAIR); channels of
            absent sequences are zero and must be ignored through ``present``;
        ``present``: ``[4]`` bool, which sequences the exam has;
        ``exam_id``: str; and with ``masks=True`` also ``brain_mask`` ``[X, Y, Z]`` bool and
        ``seg`` ``[X, Y, Z]`` uint8.

    Args:
        cache: a :class:`umbif.data.cache.Cache`, or a folder written by ``umbif preprocess``.
        exam_ids: restrict to (and order by) these exams; ``KeyError`` names any not cached.
        dtype: tensor type of ``image`` (float16 is what is stored; float32 costs a conversion).
        masks: also return the brain mask and segmentation.
        verify: check each file's checksum before loading (slow; for audits, not training).
        strict: when ``cache`` is a folder, refuse an index that disagrees with the exam entries on disk
            (a :class:`umbif.data.cache.CacheError`) instead of warning (:class:`~umbif.data.cache.Cache`).

    Example:
        >>> ds = CacheDataset("cache/")
        >>> item = ds[0]; item["image"].shape, item["present"]
    """

    def __init__(
        self,
        cache: Cache | str | Path,
        exam_ids: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float16,
        masks: bool = False,
        verify: bool = False,
        strict: bool = False,
    ):
        self.cache = cache if isinstance(cache, Cache) else Cache(cache, strict=strict)
        entries = self.cache.entries
        if exam_ids is not None:
            missing = [e for e in exam_ids if e not in entries]
            if missing:
                raise KeyError(f"{len(missing)} exams are not in the cache {self.cache.path}: {missing[:5]}")
            self.entries = [entries[e] for e in exam_ids]
        else:
            self.entries = list(entries.values())
        self.dtype = dtype
        self.masks = masks
        self.verify = verify

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        if self.verify:
            self.cache.verify(entry["exam_id"])
        stored = self.cache.load(entry["exam_id"], "image")  # [P, X, Y, Z] float16, memory-mapped
        present = np.array([s in entry["sequences"] for s in SEQUENCES])
        if present.all():
            image = np.array(stored)  # the one copy, out of the page cache
        else:
            image = np.zeros((len(SEQUENCES), *stored.shape[1:]), dtype=stored.dtype)
            image[present] = stored
        item: dict[str, Any] = {
            "image": torch.from_numpy(image).to(self.dtype),
            "present": torch.from_numpy(present),
            "exam_id": entry["exam_id"],
        }
        if self.masks:
            masks = self.cache.load(entry["exam_id"], "masks")
            item["brain_mask"] = torch.from_numpy(np.array(masks[0], dtype=bool))
            item["seg"] = torch.from_numpy(np.array(masks[1]))
        return item

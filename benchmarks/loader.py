"""Benchmark: how many exams per second one core of the pretraining loader delivers, new loader against old.

Both sides make the same thing, one micro-batch after another: two 64³ float16 crops (a view pair) of each of
``--batch`` exams of a 4 x 96³ cache, ready for the device. An "exam" below is one such view pair: what one
sample of a training step costs the loader.

- reference, the loader before issue 15 (reproduced here from its code): ``CacheDataset`` reads the whole
  96³ volume of each exam out of the memory map, the default collate stacks the volumes into a batch, and two
  boxes per exam are cut from it (``random_crop``, as the old ``two_views`` did, on the device); one view pair
  per read. Also measured without the crops (what the old loader itself handed over, crops left to the GPU).
- ours, ``umbif.train.views``: ``CropDataset`` under ``crop_loader`` reads only each box's voxels from the memory
  map, straight into the batch (no collate copy), ``--views-per-read`` view pairs per read of an exam (and
  ``--more-views`` in a second row).

The headline runs both in the measuring process (``num_workers=0``, one torch thread): exams/s per core; the
in-process loaders take turns window by window, so a change in the machine's load falls on all of them. Rows
with loader worker processes follow (old and new with one worker; new with ``--workers``): there the batch goes
through shared memory, which costs fresh pages for every batch.

The cache: ``--exams`` synthetic exams (``umbif synth``, 2 mm) through ``run_preprocess`` (96³), read warm (in the
page cache), as during a training epoch on a node with enough memory.

Run: ``.venv/bin/python benchmarks/loader.py [--exams 16] [--batch 8] [--views-per-read 1] [--seconds 4]``.
Prints a table and writes ``benchmarks/results/loader.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from umbif.config import PreprocessConfig, SynthConfig
from umbif.data.cache import run_preprocess
from umbif.data.datasets import CacheDataset
from umbif.data.manifest import Manifest
from umbif.data.synthetic.generate import generate
from umbif.provenance import machine, versions
from umbif.train.augment import random_crop
from umbif.train.distributed import DistInfo
from umbif.train.views import CropDataset, DataPlan, crop_loader, step_batches
from umbif.utils import write_text_atomic

HERE = Path(__file__).resolve().parent
CROP = (64, 64, 64)
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def rates(loaders: dict[str, Iterator[object]], batch: int, seconds: float, repeats: int) -> dict[str, list[float]]:
    """Exams per second of each loader over ``repeats`` windows of about ``seconds``, the loaders taking turns
    window by window (so a change in the machine's load falls on all of them), after two warm-up batches each."""
    for batches in loaders.values():
        for _ in range(2):
            next(batches)
    out: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, batches in loaders.items():
            start, done = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                next(batches)
                done += batch
            out[name].append(done / (time.perf_counter() - start))
    return out


def old_batches(dataset: CacheDataset, batch: int, crop: bool, workers: int = 0) -> Iterator[torch.Tensor]:
    """The old path: whole volumes, collated, then (``crop``) two boxes per exam, as the old two_views did."""
    generator = torch.Generator().manual_seed(0)
    sampler = RandomSampler(dataset, generator=generator)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)  # fmt: skip
    while True:
        for item in loader:
            images = item["image"]  # [B, 4, 96, 96, 96] float16
            yield (
                torch.stack([random_crop(images, CROP, generator), random_crop(images, CROP, generator)], 1)
                if crop
                else images
            )


def new_batches(dataset: CacheDataset, batch: int, views_per_read: int, workers: int) -> Iterator[torch.Tensor]:
    """The new path: this process's micro-batches of crops, ``[B, 2, 4, 64, 64, 64]`` float16 each."""
    plan = DataPlan(len(dataset), batch, 1, 1, views_per_read, seed=0)
    loader = crop_loader(CropDataset(dataset, CROP, views_per_read, 2, seed=0), plan, CPU, 0, workers, 4)
    for (micro,) in step_batches(loader, plan, 0):
        yield micro["image"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=16, help="synthetic exams in the cache")
    parser.add_argument("--batch", type=int, default=8, help="exams per micro-batch")
    parser.add_argument("--views-per-read", type=int, default=1, help="view pairs per read, new loader")
    parser.add_argument("--more-views", type=int, default=4, help="views per read of the comparison row")
    parser.add_argument("--workers", type=int, default=2, help="loader processes for the scaling row")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per loader (median reported)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "loader.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per loader: the per-core rate
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        generate(SynthConfig(exams=args.exams, seed=0, spacing=2.0), Path(tmp) / "synth")
        manifest = Manifest.read(Path(tmp) / "synth" / "manifest.csv")
        report = run_preprocess(manifest, Path(tmp) / "cache", PreprocessConfig())
        assert report.ok, report.failures
        dataset = CacheDataset(Path(tmp) / "cache")
        for index in range(len(dataset)):  # warm the page cache
            dataset[index]
        partial = sum(len(e["sequences"]) < 4 for e in dataset.entries)
        runs = {
            "reference": old_batches(dataset, args.batch, crop=True),
            "reference_without_crop": old_batches(dataset, args.batch, crop=False),
            "ours": new_batches(dataset, args.batch, args.views_per_read, 0),
            "ours_more_views_per_read": new_batches(dataset, args.batch, args.more_views, 0),
        }
        measured = rates(runs, args.batch, args.seconds, args.repeats)
        # loaders with workers one at a time: their processes would load the machine during the others' windows
        for name, make in {
            "reference_1_worker_without_crop": lambda: old_batches(dataset, args.batch, crop=False, workers=1),
            "ours_1_worker": lambda: new_batches(dataset, args.batch, args.views_per_read, 1),
            "ours_workers": lambda: new_batches(dataset, args.batch, args.views_per_read, args.workers),
        }.items():
            batches = make()
            measured |= rates({name: batches}, args.batch, args.seconds, args.repeats)
            batches.close()  # ends its workers

    med = {name: statistics.median(r) for name, r in measured.items()}
    results = {
        "metric": "exams/s per core delivered by the pretraining loader (one exam = a view pair of 64³ float16 crops "
        "of a 4 x 96³ cached exam)",
        "ours": med["ours"],
        "reference": med["reference"],
        "reference_name": "loader before issue 15: whole-volume read + collate + two random_crop boxes, one view "
        "pair per read",
        "ratio": med["ours"] / med["reference"],
        "unit": "exams/s",
        "target_ratio": 3,
        "settings": {
            "batch": args.batch,
            "crop": list(CROP),
            "grid": [96, 96, 96],
            "views_per_read": args.views_per_read,
            "num_workers": 0,
            "torch_threads": 1,
            "exams_in_cache": args.exams,
            "exams_missing_a_sequence": partial,
            "page_cache": "warm",
            "window_s": args.seconds,
            "repeats": args.repeats,
        },
        "also": {
            "reference_without_crop": med["reference_without_crop"],
            f"ours_{args.more_views}_views_per_read": med["ours_more_views_per_read"],
            "one_loader_worker": {
                "ours": med["ours_1_worker"],
                "reference_without_crop": med["reference_1_worker_without_crop"],
                "ratio": med["ours_1_worker"] / med["reference_1_worker_without_crop"],
            },
            f"ours_{args.workers}_workers_total": med["ours_workers"],
        },
        "all_rates": measured,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},  # others on the machine
        "machine": machine(),
        "versions": versions(),
    }
    print(f"{'loader':<40}{'exams/s':>10}{'x reference':>14}")
    for name in measured:
        print(f"{name:<40}{med[name]:>10.1f}{med[name] / med['reference']:>14.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

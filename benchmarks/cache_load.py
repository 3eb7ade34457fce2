"""Benchmark: an exam from the umbif cache versus a MONAI pipeline that preprocesses it every time.

Measures, on the real UPENN-GBM exam (4 sequences, 240x240x155 at 1 mm, .nii.gz):

1. load: one preprocessed 4x96^3 float16 exam into a tensor from the cache (``CacheDataset``),
   versus the standard MONAI chain LoadImaged + Orientationd + Spacingd + NormalizeIntensityd
   (+ CropForegroundd + ResizeWithPadOrCropd to the same 96^3 grid) run on the NIfTI files;
2. preprocess: umbif's ``preprocess_exam`` per exam versus that MONAI chain, with umbif's stages;
3. throughput: exams/min of ``run_preprocess`` with ``--workers`` processes on copies of the exam;
4. the cache's bytes per exam.

Run: ``.venv/bin/python benchmarks/cache_load.py [--sample DIR] [--repeats N]``. Prints a table and
writes ``benchmarks/results/cache_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data import preprocess as pp
from umbif.data.cache import cache_bytes, run_preprocess
from umbif.data.datasets import CacheDataset
from umbif.data.io import read_nifti
from umbif.data.manifest import Manifest
from umbif.provenance import machine, versions
from umbif.utils import write_text_atomic

HERE = Path(__file__).resolve().parent
DEFAULT_SAMPLE = HERE.parents[1] / "shared" / "data" / "upenn-gbm-sample"
FILES = {"t1": "00001_t1n.nii.gz", "t1c": "00001_t1c.nii.gz", "t2": "00001_t2w.nii.gz", "flair": "00001_t2f.nii.gz"}


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def monai_chain(config: PreprocessConfig):
    """The standard MONAI dictionary pipeline for the same output: RAS, 2 mm, z-score, 96^3."""
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        CropForegroundd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        ResizeWithPadOrCropd,
        Spacingd,
    )

    keys = list(SEQUENCES)
    return Compose(
        [
            LoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
            Orientationd(keys=keys, axcodes="RAS"),
            Spacingd(keys=keys, pixdim=config.spacing, mode="bilinear"),
            NormalizeIntensityd(keys=keys, nonzero=True),
            ConcatItemsd(keys=keys, name="image"),
            CropForegroundd(keys=["image"], source_key="image"),
            ResizeWithPadOrCropd(keys=["image"], spatial_size=config.shape),
        ]
    )


def umbif_stages(files: dict[str, Path], config: PreprocessConfig) -> dict[str, float]:
    """Seconds per stage of ``preprocess_exam`` (same calls, timed one by one)."""
    marks = {}
    start = time.perf_counter()
    volumes = [read_nifti(files[s], config) for s in SEQUENCES]
    marks["read_nifti"] = time.perf_counter()
    grid_affine, grid_shape = pp.target_grid(volumes, config)
    image = np.stack([pp.resample(v.data, v.affine, grid_affine, grid_shape) for v in volumes])
    marks["resample"] = time.perf_counter()
    brain = pp.auto_brain_mask(image)
    marks["brain_mask"] = time.perf_counter()
    image, _ = pp.zscore_in_mask(image, brain, SEQUENCES, True)
    pp.crop_or_pad(image, pp.crop_window(brain, config.shape), config.shape)
    marks["normalise_crop"] = time.perf_counter()
    out, last = {}, start
    for name, mark in marks.items():
        out[name] = mark - last
        last = mark
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="folder with the UPENN-GBM exam")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each slow step")
    parser.add_argument("--copies", type=int, default=8, help="exams in the throughput run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes in the throughput run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cache_load.json")
    args = parser.parse_args()
    if not all((args.sample / name).is_file() for name in FILES.values()):
        parser.error(f"{args.sample} does not hold {', '.join(FILES.values())}; pass --sample")
    # both sides single-threaded per exam, as in `umbif preprocess` workers; parallelism is over exams
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    config = PreprocessConfig()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(args.sample, root)
        files = {s: root / name for s, name in FILES.items()}
        rows = [
            {"exam_id": f"bench{i:03d}", "patient_id": f"p{i:03d}", "site": "upenn", **{s: FILES[s] for s in FILES}}
            for i in range(args.copies)
        ]
        manifest = Manifest(pd.DataFrame(rows), root)

        # 3. throughput and 4. size: the whole run over copies of the exam into a fresh cache
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        report = run_preprocess(manifest, cache, config, workers=args.workers)
        throughput_s = time.perf_counter() - start
        assert report.ok and report.done == args.copies, report.failures
        bytes_per_exam = cache_bytes(cache) / args.copies

        # 1. load from the cache (warm page cache, as in a training epoch) versus the MONAI chain
        dataset = CacheDataset(cache, exam_ids=["bench000"])
        load_s = timed(lambda: dataset[0]["image"], repeats=200, warmup=5)
        chain = monai_chain(config)
        monai_out = chain({s: str(p) for s, p in files.items()})["image"]
        monai_s = timed(lambda: chain({s: str(p) for s, p in files.items()})["image"], args.repeats)

        # 2. umbif preprocessing of one exam, and its stages
        exam = manifest.exam(0)
        umbif_s = timed(lambda: pp.preprocess_exam(exam, config), args.repeats)
        stage_runs = [umbif_stages(files, config) for _ in range(args.repeats)]
        stages = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}

    med = statistics.median
    results = {
        "metric": "seconds to get one preprocessed 4-sequence exam into a tensor (median)",
        "ours": med(load_s),
        "reference": med(monai_s),
        "reference_name": "MONAI LoadImaged+Orientationd+Spacingd+NormalizeIntensityd"
        "+CropForegroundd+ResizeWithPadOrCropd",
        "ratio": med(monai_s) / med(load_s),
        "unit": "s",
        "target_ratio": 100,
        "shape": [4, *config.shape],
        "monai_output_shape": list(monai_out.shape),
        "preprocess": {
            "metric": "seconds to preprocess one exam from NIfTI (median)",
            "ours": med(umbif_s),
            "reference": med(monai_s),
            "ratio": med(monai_s) / med(umbif_s),
            "target_ratio": 2,
            "ours_stages_s": stages,
        },
        "throughput": {
            "exams_per_min": args.copies / throughput_s * 60,
            "workers": args.workers,
            "exams": args.copies,
        },
        "bytes_per_exam": bytes_per_exam,
        "repeats": {"load": len(load_s), "slow_steps": args.repeats},
        "input": "UPENN-GBM 00001: 4 x 240x240x155 int16 .nii.gz, 1 mm, LPS",
        "machine": machine(),
        "versions": versions(),
        "threads_per_exam": {"torch": torch.get_num_threads(), "SimpleITK": 1},
    }
    print(f"{'step':<44}{'umbif':>12}{'MONAI':>12}{'ratio':>10}")
    print(
        f"{'exam into a tensor (ms)':<44}{med(load_s) * 1e3:>12.3f}{med(monai_s) * 1e3:>12.1f}{results['ratio']:>10.0f}"
    )
    print(
        f"{'preprocess one exam (ms)':<44}{med(umbif_s) * 1e3:>12.1f}{med(monai_s) * 1e3:>12.1f}"
        f"{results['preprocess']['ratio']:>10.2f}"
    )
    print("umbif stages (ms): " + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in stages.items()))
    print(f"throughput: {results['throughput']['exams_per_min']:.1f} exams/min with {args.workers} workers")
    print(f"cache: {bytes_per_exam / 2**20:.2f} MiB per exam")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

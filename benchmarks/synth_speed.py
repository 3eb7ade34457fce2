"""Benchmark: how fast `umbif synth` writes a demo-sized synthetic archive.

Generates ``--exams`` exams (default 400, the default cohort) at ``--spacing`` mm with ``--workers``
processes into a temporary folder, end to end (planning, rendering, NIfTI writing, manifest, ground
truth, cohort card), and reports exams/minute against the issue's target: a few hundred exams at
~2 mm "in a few minutes" on 2 cores, taken here as 400 exams in 5 minutes (80 exams/min).

Run: ``.venv/bin/python benchmarks/synth_speed.py [--exams N] [--workers W] [--spacing MM]``.
Prints a line and writes ``benchmarks/results/synth_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from umbif.config import SynthConfig
from umbif.data.synthetic.generate import generate
from umbif.provenance import machine, versions
from umbif.utils import write_text_atomic

HERE = Path(__file__).resolve().parent
TARGET_EXAMS_PER_MIN = 80.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "synth_speed.json")
    args = parser.parse_args()

    config = SynthConfig(exams=args.exams, spacing=args.spacing, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = generate(config, Path(tmp) / "synth", workers=args.workers)
        seconds = time.perf_counter() - start
        files = list((Path(tmp) / "synth" / "images").rglob("*.nii.gz"))
        size = sum(f.stat().st_size for f in files)
    rate = args.exams / seconds * 60
    results = {
        "metric": "exams per minute, `umbif synth` end to end",
        "ours": rate,
        "reference": TARGET_EXAMS_PER_MIN,
        "reference_name": "target: 400 exams at 2 mm in 5 minutes on 2 cores",
        "ratio": rate / TARGET_EXAMS_PER_MIN,
        "unit": "exams/min",
        "seconds": seconds,
        "exams": args.exams,
        "workers": args.workers,
        "spacing_mm": args.spacing,
        "files": len(files),
        "bytes_per_exam": size / args.exams,
        "oracle_auc": report.oracle_auc,
        "machine": machine(),
        "versions": versions(),
    }
    print(
        f"{args.exams} exams at {args.spacing} mm with {args.workers} workers: {seconds:.0f} s, "
        f"{rate:.0f} exams/min (target {TARGET_EXAMS_PER_MIN:.0f}), {size / args.exams / 2**20:.2f} MiB per exam"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Benchmark: the exam cache at the scale of the reference study (51,029 exams on a cluster, 64 shards).

Simulates the cache cheaply: empty input files (validation only stats them), entry files with the fields
and size of real ones plus empty array files beside them (the merge and the reader read entries and list
the folder, nothing else), the exams of shard 0/64 preprocessed for real with tiny arrays (a stand-in
for ``preprocess_exam``), and a few exams with arrays of the real size (4x96^3 float16 + masks) for the
checksum throughput. Measures, in one run, on this machine's local disk (a shared file system pays more
per ``stat`` and per file read, which is what the ratios are about):

1. fixed cost of ``preprocess --shard 0/64`` when its exams are cached: ours (checks its own rows, writes
   its own part) versus what every shard did before (the whole manifest's file checks, a full index rebuild);
2. ``validate`` of every row, ours versus the same checks with ``Manifest.resolve`` + ``stat`` per path
   (how it checked files before), and ``stat``/``lstat`` calls per path;
3. the merge (``umbif cache index``), once with 1 and 4 threads, versus 64 rebuilds (one per shard, before);
4. ``Cache()`` with its disk check versus reading the index alone;
5. ``cache info --verify`` with 1 and 2 threads, projected to every exam.

Run: ``.venv/bin/python benchmarks/cache_scale.py [--exams 51029] [--shards 64]``. Prints a table and
writes ``benchmarks/results/cache_scale.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cache_load import timed  # same folder
from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data import cache
from umbif.data.cache import Cache, Shard, merge_index, plan_fingerprint, read_index, read_plan, run_preprocess
from umbif.data.cache_layout import index_disagreement
from umbif.data.manifest import PATH_COLUMNS, Manifest, validate
from umbif.data.preprocess import Preprocessed
from umbif.provenance import machine, versions
from umbif.utils import write_text_atomic

HERE = Path(__file__).resolve().parent
CONFIG = PreprocessConfig()


def stand_in(side: int) -> Callable[..., Preprocessed]:
    """``preprocess_exam`` without reading the inputs: arrays of ``side``^3 voxels (4 sequences + masks)."""

    def preprocess_exam(exam: object, config: PreprocessConfig) -> Preprocessed:
        rng = np.random.default_rng(abs(hash(getattr(exam, "exam_id", ""))) % 2**32)
        return Preprocessed(
            image=rng.standard_normal((len(SEQUENCES), side, side, side), dtype=np.float32),
            sequences=SEQUENCES,
            masks=rng.integers(0, 2, (2, side, side, side), dtype=np.uint8),
            affine=np.eye(4),
            has_seg=False,
            mask_source="auto",
            brain_clipped=0.0,
            stats={s: {"mean": 1.0, "std": 1.0} for s in SEQUENCES},
        )

    return preprocess_exam


def make_manifest(root: Path, exams: int) -> Manifest:
    """``exams`` exams of 4 empty sequence files, in ``data/site<k>/<patient>/<exam>/`` (a usual depth)."""
    rows = []
    for number in range(exams):
        relative = f"data/site{number % 8}/P{number:06d}/E{number:06d}"
        (root / relative).mkdir(parents=True)
        for sequence in SEQUENCES:
            (root / relative / f"{sequence}.nii.gz").touch()
        rows.append(
            {"exam_id": f"E{number:06d}", "patient_id": f"P{number:06d}", "site": f"site{number % 8}"}
            | {s: f"{relative}/{s}.nii.gz" for s in SEQUENCES}
        )
    return Manifest(pd.DataFrame(rows), root)


def simulate_cache(out: Path, manifest: Manifest, shards: int) -> None:
    """Shard 0 for real (tiny arrays), every other exam as an entry file like it plus empty array files,
    and the parts of shards 1.. as they would write them."""
    cache.preprocess_exam = stand_in(4)
    run_preprocess(manifest, out, CONFIG, shard=Shard(0, shards))
    template = json.loads(next((out / "exams").glob("*.json")).read_text())
    owners: dict[int, list[str]] = {}
    for exam_id in manifest.table["exam_id"]:
        shard = next(i for i in range(shards) if Shard(i, shards).owns(exam_id))
        owners.setdefault(shard, []).append(exam_id)
        if shard:
            files = {"image": f"{exam_id}.image.npy", "masks": f"{exam_id}.masks.npy"}
            (out / "exams" / f"{exam_id}.json").write_text(
                json.dumps(template | {"exam_id": exam_id, "files": files}, indent=1) + "\n"
            )
            for name in files.values():
                (out / "exams" / name).touch()
    for shard, exam_ids in owners.items():
        if shard:
            part = {"shard": f"{shard}/{shards}", "plan_fingerprint": plan_fingerprint(CONFIG), "exams": exam_ids}
            (out / "index.d" / f"shard-{shard}-of-{shards}.json").write_text(json.dumps(part))


def stat_calls(fn: Callable[[], object]) -> int:
    """How many ``os.stat`` and ``os.lstat`` calls ``fn`` makes."""
    count = 0
    real = {name: getattr(os, name) for name in ("stat", "lstat")}

    def counting(name: str) -> Callable[..., os.stat_result]:
        def call(*args: object, **kwargs: object) -> os.stat_result:
            nonlocal count
            count += 1
            return real[name](*args, **kwargs)  # type: ignore[arg-type]

        return call

    try:
        for name in real:
            setattr(os, name, counting(name))
        fn()
    finally:
        for name, function in real.items():
            setattr(os, name, function)
    return count


def resolve_and_stat(manifest: Manifest, rows: range | None = None) -> None:
    """How ``validate`` checked each file before: ``Manifest.resolve`` (one ``lstat`` per component) + ``stat``."""
    for column in PATH_COLUMNS:
        for value in manifest.table[column].iloc[slice(None) if rows is None else slice(rows.start, rows.stop)]:
            if value:
                manifest.resolve(value).stat()


def interleaved(variants: dict[int, Callable[[], object]], repeats: int) -> dict[int, list[float]]:
    """Seconds of each variant, run in turns (after one untimed turn), so a busy machine slows all alike."""
    times: dict[int, list[float]] = {key: [] for key in variants}
    for turn in range(repeats + 1):
        for key, fn in variants.items():
            start = time.perf_counter()
            fn()
            if turn:
                times[key].append(time.perf_counter() - start)
    return times


def hash_in_memory(threads: int, blocks: int = 256) -> None:
    """sha256 of ``blocks`` MiB held in memory on ``threads`` threads: the control for the verify measurement
    (2 threads twice as fast means a second core was free; on a shared machine it often is not)."""
    block = bytes(range(256)) * 4096

    def digest(_: int) -> str:
        return hashlib.sha256(block).hexdigest()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(digest, range(blocks)))


def row(metric: str, ours: float, reference: float, unit: str, reference_name: str) -> dict[str, object]:
    return {
        "metric": metric,
        "ours": ours,
        "reference": reference,
        "reference_name": reference_name,
        "ratio": reference / ours,
        "unit": unit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exams", type=int, default=51029, help="exams in the simulated cache")
    parser.add_argument("--shards", type=int, default=64, help="shards of the simulated cluster run")
    parser.add_argument("--verify-exams", type=int, default=48, help="exams with real-size arrays for --verify")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each measurement")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cache_scale.json")
    args = parser.parse_args()
    med, n, k = statistics.median, args.exams, args.shards
    load = {"start": os.getloadavg()[0]}

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = make_manifest(Path(tmp), n)
        out = Path(tmp) / "cache"
        simulate_cache(out, manifest, k)
        setup_s = time.perf_counter() - start
        own = [i for i, e in enumerate(manifest.table["exam_id"]) if Shard(0, k).owns(e)]

        shard_s = timed(lambda: run_preprocess(manifest, out, CONFIG, shard=Shard(0, k)), args.repeats)
        full_s = timed(lambda: validate(manifest), args.repeats)
        own_s = timed(lambda: validate(manifest, rows=own), args.repeats)
        cells_s = timed(lambda: validate(manifest, rows=[]), args.repeats)
        before_files_s = timed(lambda: resolve_and_stat(manifest), 1, warmup=0)
        sample = range(min(n, 2000))
        per_path = sum(bool(v) for c in PATH_COLUMNS for v in manifest.table[c].iloc[: sample.stop])
        calls_ours = stat_calls(lambda: validate(manifest, rows=sample)) / per_path
        calls_before = stat_calls(lambda: resolve_and_stat(manifest, sample)) / per_path
        merge = interleaved({w: lambda w=w: merge_index(out, workers=w) for w in (1, 4)}, args.repeats)
        report = merge_index(out)
        assert (report.exams, report.parts, report.missing_shards) == (n, k, []), report
        open_s = timed(lambda: Cache(out), args.repeats + 2)
        index_s = timed(lambda: (read_plan(out), read_index(out)), args.repeats + 2)
        index = read_index(out)
        check_s = timed(lambda: index_disagreement(out, index), args.repeats + 2)
        assert Cache(out).disagreement is None

        big = Path(tmp) / "big"
        cache.preprocess_exam = stand_in(96)
        run_preprocess(Manifest(manifest.table.iloc[: args.verify_exams], manifest.root), big, CONFIG)
        verify_bytes = cache.cache_bytes(big)
        verify = interleaved({w: lambda w=w: cache.describe(big, verify=True, workers=w) for w in (1, 2)}, args.repeats)
        control = interleaved({w: lambda w=w: hash_in_memory(w) for w in (1, 2)}, args.repeats)

    load["end"] = os.getloadavg()[0]
    validate_before = med(cells_s) + before_files_s[0]
    shard_before = med(shard_s) - med(own_s) + validate_before + med(merge[1])
    rate = {w: verify_bytes / med(t) / 2**20 for w, t in verify.items()}
    projected = {w: n * verify_bytes / args.verify_exams / 2**20 / rate[w] for w in rate}
    table = [
        row(f"fixed cost of one `preprocess --shard 0/{k}`, its exams cached", med(shard_s), shard_before, "s",
            "before: whole-manifest file checks (resolve+stat) + a full index rebuild, the same skip checks"),
        row(f"file checks + index, all {k} shards together", k * med(shard_s) + med(merge[1]), k * shard_before, "s",
            f"before: {k} shards each checking every row and rebuilding the index"),
        row(f"validate {n} rows", med(full_s), validate_before, "s", "the same checks with resolve+stat per path"),
        row(f"validate the rows of shard 0/{k} ({len(own)} rows)", med(own_s), med(full_s), "s",
            "validate every row (what each shard did)"),
        row("stat/lstat calls per path", calls_ours, calls_before, "calls", "Manifest.resolve + stat"),
        row(f"merge (`umbif cache index`) of {n} entries, 4 threads", med(merge[4]), med(merge[1]), "s",
            "1 thread (the old build_index read the same files serially)"),
        row(f"Cache() at {n} exams, with the disk check", med(open_s), med(index_s), "s",
            "reading plan.json + index.json alone (no check)"),
        row(f"the disk check alone (one listing of {3 * n} files)", med(check_s), med(index_s), "s",
            "reading plan.json + index.json"),
        row(f"`cache info --verify` of {n} exams, 2 threads (projected)", projected[2], projected[1], "s",
            f"1 thread; measured on {args.verify_exams} exams of {verify_bytes / args.verify_exams / 2**20:.2f} MiB"),
    ]  # fmt: skip
    results = {
        **table[0],
        "table": table,
        "exams": n,
        "shards": k,
        "rows_in_shard_0": len(own),
        "seconds": {
            "setup": setup_s,
            "shard_run": med(shard_s),
            "validate_full": med(full_s),
            "validate_shard": med(own_s),
            "validate_cells_only": med(cells_s),
            "resolve_and_stat_all_paths": before_files_s[0],
            "merge_1_thread": med(merge[1]),
            "merge_4_threads": med(merge[4]),
            "cache_open": med(open_s),
            "disk_check": med(check_s),
            "index_read": med(index_s),
        },
        "verify_mib_per_s": rate,
        "sha256_in_memory_2_threads_speedup": med(control[1]) / med(control[2]),  # ~2: a second core was free
        "note": "local disk, warm page cache (verify measures hashing, not the disk); 2 cores shared with other work",
        "load_average_1min": load,
        "machine": machine(),
        "versions": versions(),
    }
    print(f"{'metric':<62}{'ours':>10}{'before/ref':>12}{'ratio':>9}  unit")
    for line in table:
        print(
            f"{line['metric']:<62}{line['ours']:>10.3f}{line['reference']:>12.3f}{line['ratio']:>9.1f}  {line['unit']}"
        )
    print(
        f"setup {setup_s:.0f} s; verify {rate[1]:.0f} MiB/s (1 thread), {rate[2]:.0f} MiB/s (2 threads); in-memory "
        f"sha256 meanwhile {results['sha256_in_memory_2_threads_speedup']:.2f}x on 2 threads (2: a core was free)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

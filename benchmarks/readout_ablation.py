"""Benchmark: what frozen encoders' readouts carry for each task, beside their untrained twins and
features computed straight from the images (the measurements of ``docs/ablation.md``).

For every encoder given (``--encoder NAME=DIR``, exported by ``umbif export`` or ``umbif demo``), and for
untrained encoders of the first one's architecture (``--random-seeds``), the cached labelled exams are
embedded with the library's readout (``umbif.adapt.embed.embed_exams``, default ``lesion``: core and
oedema tokens plus CLS). ``--hand`` adds a row without an encoder: the mean and SD of each sequence in
each compartment of the ``lesion-sizes`` baseline, and that baseline's log volumes (a bound on what
simple measurements of the cached grid hold). Each row is scored the same way: standardised features, L2 logistic
regression with balanced class weights at a fixed ``C``, repeated patient-level stratified 5-fold; a
number is the mean over repeats of the pooled out-of-fold ROC-AUC. Outcome uses the library's pair
features (baseline, follow-up, difference). Torch and BLAS threads are pinned (``--threads``) and recorded.

Run: ``.venv/bin/python benchmarks/readout_ablation.py --cache C --manifest M --encoder umbif=DIR --hand``.
Prints a table and writes ``benchmarks/results/readout_ablation.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from umbif.adapt.embed import Embeddings, embed_exams
from umbif.adapt.probe import sample_features
from umbif.baselines.sizes import COMPARTMENT_LABELS, size_features
from umbif.data.cache import Cache
from umbif.data.datasets import CacheDataset
from umbif.data.manifest import Manifest
from umbif.data.samples import TASKS, build_cohort
from umbif.eval.methods import untrained_encoder
from umbif.provenance import machine, versions
from umbif.utils import write_json


def hand_features(cache: Cache, exam_ids: list[str]) -> Embeddings:
    """Per exam: mean and SD of each present sequence in each compartment of the ``lesion-sizes`` baseline
    (NaN where absent or empty, then the column mean), then that baseline's log volumes."""
    dataset = CacheDataset(cache, exam_ids)
    rows = []
    for i, exam_id in enumerate(exam_ids):
        item = dataset[i]
        image, present = np.asarray(item["image"], np.float32), np.asarray(item["present"], bool)
        seg = np.asarray(cache.load(exam_id, "masks"))[1]
        row = []
        for labels in COMPARTMENT_LABELS.values():
            inside = np.isin(seg, labels)
            for s in range(image.shape[0]):
                values = image[s][inside] if present[s] else np.zeros(0)
                row += [values.mean(), values.std()] if values.size else [np.nan, np.nan]
        rows.append(row)
    values = np.asarray(rows, np.float64)
    values = np.where(np.isnan(values), np.nanmean(values, axis=0), values)
    values = np.hstack([values, size_features(cache, exam_ids).values])
    return Embeddings(tuple(exam_ids), values.astype(np.float32), key="hand")


def cv_auc(X: np.ndarray, y: np.ndarray, groups: np.ndarray, C: float, repeats: int) -> list[float]:
    """Pooled out-of-fold ROC-AUC of each repeat of a patient-level stratified 5-fold."""
    aucs = []
    for repeat in range(repeats):
        scores = np.zeros(len(y))
        for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=repeat).split(X, y, groups):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=5000))
            scores[test] = model.fit(X[train], y[train]).predict_proba(X[test])[:, 1]
        aucs.append(float(roc_auc_score(y, scores)))
    return aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, type=Path, help="a cache written by umbif preprocess")
    parser.add_argument("--manifest", required=True, type=Path, help="the manifest with the labels")
    parser.add_argument("--encoder", action="append", default=[], help="NAME=DIR of an exported encoder (repeat)")
    parser.add_argument("--random-seeds", type=int, nargs="*", default=[0, 1], help="untrained twins of the first")
    parser.add_argument("--readout", default="lesion", help="cls, lesion or tumour-crop (umbif.adapt.embed)")
    parser.add_argument("--hand", action="store_true", help="add the row of features computed from the images")
    parser.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the 5-fold split")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (BLAS runs on one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "readout_ablation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Cache(args.cache)
    table = Manifest.read(args.manifest).table
    cohort = build_cohort(table, cache.exam_ids, TASKS, 4)
    exam_ids = cohort.exam_ids()
    encoders = dict(item.split("=", 1) for item in args.encoder)
    rows: dict[str, Embeddings] = {}
    with tempfile.TemporaryDirectory() as scratch:
        if encoders:
            first = Path(next(iter(encoders.values())))
            for seed in args.random_seeds:
                twin = untrained_encoder(first, Path(scratch) / f"random-{seed}", seed)
                rows[f"untrained seed {seed}"] = embed_exams(twin, cache, exam_ids, readout=args.readout)
        for name, folder in encoders.items():
            rows[name] = embed_exams(folder, cache, exam_ids, readout=args.readout)
    if args.hand:
        rows["images, no encoder"] = hand_features(cache, exam_ids)
    results, started = [], time.perf_counter()
    with threadpool_limits(limits=1):
        for name, embeddings in rows.items():
            aucs = {}
            for task, samples in cohort.samples.items():
                X = sample_features(embeddings, samples, task)
                runs = cv_auc(X, samples["y"].to_numpy(), samples["patient_id"].to_numpy(), args.C, args.repeats)
                patients = int(samples["patient_id"].nunique())
                aucs[task] = {"auc": float(np.mean(runs)), "repeats": runs, "patients": patients}
            results.append({"features": name, "dims": int(embeddings.values.shape[1]), "auc": aucs})
            cells = "  ".join(f"{task} {a['auc']:.2f}" for task, a in aucs.items())
            print(f"{name:24s} {embeddings.values.shape[1]:5d}  {cells}")
    untrained = [r for r in results if r["features"].startswith("untrained")]
    twins = {task: float(np.mean([u["auc"][task]["auc"] for u in untrained])) for task in cohort.samples}
    comparisons = [
        {
            "metric": f"{task} AUC, {row['features']}",
            "ours": row["auc"][task]["auc"],
            "reference": twins[task],  # the untrained twins' mean
            "difference": row["auc"][task]["auc"] - twins[task],
            "unit": "ROC-AUC",
        }
        for row in results
        if untrained and not row["features"].startswith("untrained")
        for task in row["auc"]
    ]
    document = {
        "benchmark": "readout_ablation",
        "comparisons": comparisons,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "readout": args.readout,
        "results": results,
        "seconds_probing": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        "versions": versions(),
    }
    write_json(args.out, document)  # atomic
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

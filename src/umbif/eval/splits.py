"""Patient-level cross-validation splits, made once, saved as ``splits.json`` and reused by every method.

Folds are sets of *patients*, so every exam of a patient (and every sample made from it) is on the
same side of a split. Two schemes:

- ``kfold``: stratified k-fold over patients (``sklearn.model_selection.StratifiedKFold``,
  shuffled, seeded per repeat); the stratum of a patient combines their labels across all tasks,
  so each fold keeps the class balance of every task.
- ``loso``: leave one site out; one fold per site (needs at least two sites).

``splits.json``::

    {"format": "umbif-splits", "version": 1, "seed": 0, "folds": 5, "repeats": 1,
     "patients": ["p001", ...],
     "kfold": [{"repeat": 0, "fold": 0, "test_patients": [...]}, ...],
     "loso": [{"repeat": 0, "fold": 0, "site": "A", "test_patients": [...]}, ...],
     "loso_skipped": null | "why there are no loso folds"}

Example::

    patients = patient_strata({task: labelled_samples(table, task).table for task in TASKS})
    save_splits(make_splits(patients, folds=5, repeats=2, seed=0), "runs/splits.json")
    for repeat, fold, train, test in fold_indices(load_splits("runs/splits.json"), samples, "kfold"):
        ...  # train/test are row positions of ``samples``
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from umbif.data.samples import SAMPLE_COLUMNS
from umbif.utils import write_json

FORMAT = "umbif-splits"
VERSION = 1
SCHEMES: tuple[str, ...] = ("kfold", "loso")
POOLED = "other"  # the stratum of patients whose label combinations are all too rare to keep apart
_NEW_SPLITS = "make new splits (run `umbif evaluate` without --splits)"


def _merge_rare(keys: list[tuple[str, ...]], folds: int) -> list[str]:
    """Stratum names with every stratum holding at least ``folds`` patients (where possible).

    A patient in a rare stratum drops its last label, then the one before, ... (so ``idh=1|mgmt=0``
    joins ``idh=1``) until its stratum is common enough; what is still rare with no label left is
    pooled into :data:`POOLED`, and a pool smaller than ``folds`` joins the largest stratum.
    """
    depth = [len(k) for k in keys]
    while True:
        names = ["|".join(k[:d]) or POOLED for k, d in zip(keys, depth, strict=True)]
        counts = pd.Series(names).value_counts()
        rare = [i for i, name in enumerate(names) if counts[name] < folds and depth[i] > 0]
        if not rare:
            break
        for i in rare:
            depth[i] -= 1
    counts = pd.Series(names).value_counts()
    if counts.get(POOLED, folds) < folds and len(counts) > 1:
        largest = counts.drop(POOLED).index[0]
        names = [largest if name == POOLED else name for name in names]
    return names


def patient_strata(samples: dict[str, pd.DataFrame], folds: int = 5) -> pd.DataFrame:
    """One row per patient with their site and a stratification key built from all tasks' labels.

    Args:
        samples: ``{task: samples table}`` (columns :data:`umbif.data.samples.SAMPLE_COLUMNS`), e.g.
            ``{t: labelled_samples(manifest.table, t).table for t in TASKS}``. The order of the
            tasks is the order in which labels are dropped when a combination is rare (last first).
        folds: the fold count the strata must support (rarer combinations are merged, see above).

    Returns:
        DataFrame ``[patient_id, site, stratum]`` sorted by ``patient_id``. A patient's label for a
        task is 1 if any of their samples is positive ("-" without samples); a patient seen at
        several sites is given the site of most of their samples.

    Example:
        >>> patient_strata({"idh": idh_table, "mgmt": mgmt_table}).head(2)
          patient_id site     stratum
        0       p001    A  idh=1|mgmt=0
        1       p002    B  idh=0|mgmt=-
    """
    if not samples:
        raise ValueError("patient_strata needs at least one task's samples table")
    labels: dict[str, pd.Series] = {}
    sites = []
    for task, table in samples.items():
        missing = [c for c in SAMPLE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"the samples table of task {task!r} lacks column(s) {missing}; expected {SAMPLE_COLUMNS}")
        labels[task] = table.groupby("patient_id")["y"].max().astype(int).astype(str)
        sites.append(table[["patient_id", "site"]])
    site_rows = pd.concat(sites, ignore_index=True).astype(str)
    if site_rows.empty:
        raise ValueError("the samples tables are empty: no labelled patients to split")
    site = (
        site_rows.groupby(["patient_id", "site"])
        .size()
        .reset_index(name="n")
        .sort_values(["patient_id", "n", "site"], ascending=[True, False, True])
        .drop_duplicates("patient_id")
        .set_index("patient_id")["site"]
    )
    label_table = pd.DataFrame(labels).reindex(site.index).fillna("-")
    keys = [tuple(f"{task}={row[task]}" for task in samples) for _, row in label_table.iterrows()]
    out = pd.DataFrame({"patient_id": site.index, "site": site.to_numpy(), "stratum": _merge_rare(keys, folds)})
    return out.reset_index(drop=True)


def make_splits(
    patients: pd.DataFrame, folds: int = 5, repeats: int = 1, seed: int = 0, loso: bool = True
) -> dict[str, Any]:
    """Patient-level stratified k-fold (and leave-one-site-out) folds as a JSON-able dict.

    Args:
        patients: ``[patient_id, site, stratum]`` from :func:`patient_strata`.
        folds: k of k-fold, at least 2.
        repeats: how many times k-fold is repeated with a new shuffle (seed per repeat derived
            from ``seed``).
        seed: the seed of the whole split.
        loso: make leave-one-site-out folds. With fewer than two sites there are none: ``"loso"``
            is an empty list and ``"loso_skipped"`` says why (never an error, so a single-site
            cohort still gets k-fold results).

    Returns:
        the ``splits.json`` document (module docstring); every patient is in exactly one test fold
        per repeat.

    Example:
        >>> splits = make_splits(patient_strata(samples), folds=5, repeats=3, seed=0)
        >>> len(splits["kfold"])
        15
    """
    missing = [c for c in ("patient_id", "site", "stratum") if c not in patients.columns]
    if missing:
        raise ValueError(f"patients table lacks column(s) {missing}; build it with patient_strata(samples)")
    if patients["patient_id"].duplicated().any():
        dup = patients.loc[patients["patient_id"].duplicated(), "patient_id"].iloc[0]
        raise ValueError(f"patient {dup!r} appears twice in the patients table; give one row per patient")
    if folds < 2 or repeats < 1:
        raise ValueError(f"need folds >= 2 and repeats >= 1; got folds={folds}, repeats={repeats}")
    if len(patients) < folds:
        raise ValueError(
            f"{len(patients)} patient(s) cannot fill {folds} folds; use --folds {max(2, len(patients))} or fewer, "
            "or add labelled patients"
        )
    table = patients.astype({"patient_id": str, "site": str, "stratum": str}).sort_values("patient_id")
    ids = table["patient_id"].to_numpy()
    strata = _merge_rare([tuple(s.split("|")) for s in table["stratum"]], folds)
    repeat_seeds = np.random.SeedSequence(seed).generate_state(repeats)  # independent shuffles per repeat
    kfold = []
    for repeat, repeat_seed in enumerate(repeat_seeds):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(repeat_seed))
        for fold, (_, test) in enumerate(splitter.split(ids, strata)):
            kfold.append({"repeat": repeat, "fold": fold, "test_patients": sorted(ids[test].tolist())})
    sites = sorted(table["site"].unique())
    loso_folds: list[dict[str, Any]] = []
    skipped = None
    if not loso:
        skipped = "not requested"
    elif len(sites) < 2:
        skipped = f"leave-one-site-out needs at least 2 sites; the cohort has {len(sites)} ({', '.join(sites)})"
    else:
        for fold, site in enumerate(sites):
            test = table.loc[table["site"] == site, "patient_id"]
            loso_folds.append({"repeat": 0, "fold": fold, "site": site, "test_patients": sorted(test.tolist())})
    return {
        "format": FORMAT,
        "version": VERSION,
        "seed": int(seed),
        "folds": int(folds),
        "repeats": int(repeats),
        "patients": sorted(ids.tolist()),
        "kfold": kfold,
        "loso": loso_folds,
        "loso_skipped": skipped,
    }


def save_splits(splits: dict[str, Any], path: str | Path) -> Path:
    """Write ``splits`` as JSON to ``path`` atomically (checked first, so a bad split is never saved)."""
    _check(splits, str(path))
    path = Path(path)
    write_json(path, splits, indent=1)
    return path


def load_splits(path: str | Path) -> dict[str, Any]:
    """Read and check a ``splits.json`` written by :func:`save_splits`.

    Raises:
        ValueError: naming the file and what is wrong (not JSON, another format or version, a
            patient in no or two test folds of a repeat, an unknown patient in a fold).
    """
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such splits file; {_NEW_SPLITS}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {_NEW_SPLITS}") from None
    _check(splits, str(path))
    return splits


def _check(splits: Any, where: str) -> None:
    """Raise ValueError naming ``where`` if ``splits`` is not a consistent umbif-splits document."""
    try:
        _check_document(splits, where)
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{where}: malformed splits ({type(error).__name__}: {error}); {_NEW_SPLITS}") from None


def _check_document(splits: Any, where: str) -> None:
    if not isinstance(splits, dict) or splits.get("format") != FORMAT:
        found = splits.get("format") if isinstance(splits, dict) else type(splits).__name__
        raise ValueError(f"{where}: not a splits file (format {found!r}, expected {FORMAT!r}); {_NEW_SPLITS}")
    if splits.get("version") != VERSION:
        raise ValueError(f"{where}: splits version {splits.get('version')!r} is not {VERSION}; {_NEW_SPLITS}")
    keys = ("seed", "folds", "repeats", "patients", "kfold", "loso")
    missing = [k for k in keys if k not in splits]
    if missing:
        raise ValueError(f"{where}: splits lack {missing}; {_NEW_SPLITS}")
    patients = set(splits["patients"])
    for repeat in range(splits["repeats"]):
        folds = [f for f in splits["kfold"] if f["repeat"] == repeat]
        tested = [p for f in folds for p in f["test_patients"]]
        if len(tested) != len(set(tested)) or set(tested) != patients:
            raise ValueError(
                f"{where}: kfold repeat {repeat} does not put every patient in exactly one test fold; {_NEW_SPLITS}"
            )
    tested = [p for f in splits["loso"] for p in f["test_patients"]]
    if len(tested) != len(set(tested)) or not set(tested) <= patients:
        raise ValueError(f"{where}: loso folds overlap or name unknown patients; {_NEW_SPLITS}")


def fold_indices(
    splits: dict[str, Any], samples_table: pd.DataFrame, scheme: str
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """The train/test row positions of a task's samples for every fold of a scheme.

    Args:
        splits: a splits document (:func:`make_splits` / :func:`load_splits`).
        samples_table: a task's samples (needs ``patient_id``); positions refer to its rows.
        scheme: ``"kfold"`` or ``"loso"``.

    Yields:
        ``(repeat, fold, train_idx, test_idx)``; folds where this task has no test sample or no
        training sample are skipped (e.g. a site without samples of the task).

    Raises:
        ValueError: for a sample whose patient is not in the splits (the splits were made for
            another cohort: make new splits), or ``loso`` on splits that have none (with why).

    Example:
        >>> for repeat, fold, train, test in fold_indices(splits, samples.table, "kfold"):
        ...     model.fit(x[train], y[train])
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    if scheme == "loso" and not splits["loso"]:
        reason = splits.get("loso_skipped") or "none were made"
        raise ValueError(f"these splits have no leave-one-site-out folds: {reason}")
    patient = samples_table["patient_id"].astype(str).to_numpy()
    unknown = sorted(set(patient) - set(splits["patients"]))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"patient(s) {shown} are not in the splits (made for another cohort); {_NEW_SPLITS}")
    for entry in splits[scheme]:
        in_test = np.isin(patient, entry["test_patients"])
        test, train = np.flatnonzero(in_test), np.flatnonzero(~in_test)
        if test.size and train.size:
            yield int(entry["repeat"]), int(entry["fold"]), train, test

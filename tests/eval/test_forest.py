"""The claim at a glance (umbif.eval.forest): which scheme and rows the forest plot shows, what it
draws, and the verdict on the headline method against its untrained control, from hand-set numbers
and end to end from predictions through umbif.eval.summary (AUCs checked against scikit-learn)."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from umbif.eval.forest import (
    HEADLINE_COLOUR,
    ORACLE_COLOUR,
    control_of,
    forest_plot,
    forest_rows,
    primary_scheme,
    verdict,
)
from umbif.eval.report import write_report
from umbif.eval.summary import PREDICTION_COLUMNS, metrics_document

HEADLINE, CONTROL = "umbif-probe", "umbif-random-probe"


def _row(method: str, task: str, auc: float | None, scheme: str = "kfold", **extra: Any) -> dict[str, Any]:
    """One result with an AUC and a +-0.1 interval; ``p`` (DeLong against the headline) and ``p_permutation``
    as given."""
    interval = {"low": None, "high": None} if auc is None else {"low": max(0, auc - 0.1), "high": min(1, auc + 0.1)}
    row: dict[str, Any] = {"method": method, "task": task, "scheme": scheme}
    row["metrics"] = {"auc": {"value": auc, **interval}}
    if "p" in extra:
        p = extra.pop("p")
        row["comparison"] = {"against": extra.pop("against", HEADLINE), "p_value": p}
    return row | extra


def _document(results: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"format": "umbif-metrics", "version": 1, "reference_method": HEADLINE, "results": results} | top


def _pair(ours: float, theirs: float, p: float | None, task: str = "idh", **extra: Any) -> list[dict[str, Any]]:
    control = _row(CONTROL, task, theirs) if p is None else _row(CONTROL, task, theirs, p=p)
    return [_row(HEADLINE, task, ours, **extra), control]


# ----------------------------------------------------------------------------------- what is shown
@pytest.mark.parametrize(
    ("schemes", "expected"), [(("loso", "kfold"), "kfold"), (("loso",), "loso"), (("other",), "other"), ((), None)]
)
def test_primary_scheme_is_kfold_else_loso(schemes: tuple[str, ...], expected: str | None) -> None:
    document = _document([_row(HEADLINE, "idh", 0.7, scheme=s) for s in schemes])
    assert primary_scheme(document) == expected


@pytest.mark.parametrize(
    ("method", "methods", "expected"),
    [
        ("umbif-probe", ["radiomics-lr", "umbif-random-probe", "umbif-random-finetune"], "umbif-random-probe"),
        ("umbif-finetune", ["umbif-random-probe", "umbif-random-finetune"], "umbif-random-finetune"),
        ("umbif-mae-probe", ["umbif-random-probe", "umbif-mae-random-probe"], "umbif-mae-random-probe"),
        ("umbif-hybrid-probe", ["umbif-random-probe"], "umbif-random-probe"),
        ("umbif-probe", ["other-random-probe"], "other-random-probe"),
        ("umbif-probe", ["umbif-random-finetune", "radiomics-lr"], None),
        ("umbif-random-probe", ["umbif-random-probe"], None),
        ("radiomics-lr", ["umbif-random-probe"], None),
    ],
)
def test_control_of(method: str, methods: list[str], expected: str | None) -> None:
    assert control_of(method, methods) == expected


def test_rows_put_the_headline_and_its_control_first() -> None:
    results = [_row(m, "idh", 0.6) for m in ("radiomics-lr", "umbif-mae-probe", CONTROL, HEADLINE)]
    results.append(_row("cnn-resnet18", "mgmt", 0.55))
    results.append(_row("ssl-imagenet-probe", "idh", 0.6, scheme="loso"))  # another scheme: not a row
    rows = forest_rows(_document(results, methods={"cnn-resnet18": {}}), "kfold")
    assert [r.method for r in rows] == [HEADLINE, CONTROL, "cnn-resnet18", "radiomics-lr", "umbif-mae-probe"]
    assert [r.kind for r in rows] == ["headline", "control", "method", "method", "method"]
    assert set(rows[2].auc) == {"mgmt"} and rows[0].auc["idh"].value == 0.6


def _colour_pixels(png: bytes, colour: str) -> int:
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).sum(axis=2) < 30).sum())


def test_forest_plot_highlights_the_headline_and_draws_the_oracle() -> None:
    results = [*_pair(0.8, 0.5, 0.01), *_pair(0.7, 0.6, 0.3, task="mgmt"), _row("radiomics-lr", "idh", 0.75)]
    document = _document(results, oracle_auc={"idh": 0.93, "mgmt": 0.81})
    png = forest_plot(document, "kfold")
    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
    assert png.startswith(b"\x89PNG") and width > 2 * height > 0  # two panels side by side
    assert _colour_pixels(png, HEADLINE_COLOUR) > 200 and _colour_pixels(png, ORACLE_COLOUR) > 20
    plain = forest_plot(_document(results, reference_method=None), "kfold")  # no headline, no oracle
    assert _colour_pixels(plain, HEADLINE_COLOUR) == 0 and _colour_pixels(plain, ORACLE_COLOUR) == 0


def test_forest_plot_draws_undefined_and_partial_rows() -> None:
    results = [_row(HEADLINE, "idh", None), _row("radiomics-lr", "idh", 0.05), _row("cnn-resnet18", "outcome", 0.9)]
    results[1]["metrics"]["auc"].update(low=None, high=None)  # a point without its interval
    assert forest_plot(_document(results), "kfold").startswith(b"\x89PNG")


def test_forest_plot_refuses_a_non_number() -> None:
    document = _document([_row(HEADLINE, "idh", 0.7, p_permutation="0.01")])
    with pytest.raises(ValueError, match=r"umbif-probe/idh/kfold p_permutation is '0.01'"):
        forest_plot(document, "kfold")


# ------------------------------------------------------------------------------------------ verdict
def test_verdict_says_pretraining_helped_when_clearly_better() -> None:
    document = _document([*_pair(0.85, 0.55, 0.002), _row("radiomics-lr", "idh", 0.7)], oracle_auc={"idh": 0.93})
    found = verdict(document, "kfold")
    (task,) = found.tasks
    assert (found.headline, task.task, task.outcome) == (HEADLINE, "idh", "helped")
    assert "umbif-probe (AUC 0.850, 95% CI 0.750–0.950) beats its untrained control umbif-random-probe" in task.text
    assert "(AUC 0.550, 95% CI 0.450–0.650; DeLong p = 0.002): pretraining helped." in task.text
    assert "oracle AUC 0.930" in task.text and "beats 1 of 1 baselines (radiomics-lr)" in task.text
    assert "not measurably" not in found.text and "permutation" not in found.text
    assert (
        found.summary.startswith("Headline method: umbif-probe")
        and "Pretraining measurably helped on IDH" in found.text
    )
    assert "beats every baseline by point estimate on 1 of 1 tasks" in found.summary


@pytest.mark.parametrize(
    ("ours", "theirs", "p", "shown"),
    [
        (0.62, 0.60, 0.40, "DeLong p = 0.400"),  # higher, but not significantly
        (0.60, 0.75, 0.01, "DeLong p = 0.010"),  # significantly, the wrong way: the control is better
        (0.70, 0.70, 0.99, "DeLong p = 0.990"),  # a tie
        (0.90, 0.50, None, "no DeLong comparison recorded"),  # higher, untested
    ],
)
def test_verdict_says_did_not_help_when_the_control_is_as_good(
    ours: float, theirs: float, p: float | None, shown: str
) -> None:
    found = verdict(_document(_pair(ours, theirs, p)), "kfold")
    (task,) = found.tasks
    assert task.outcome == "did-not-help"
    assert f"does not beat its untrained control umbif-random-probe (AUC {theirs:.3f}" in task.text
    assert shown in task.text and task.text.endswith("pretraining did not measurably help on this task.")
    assert "Pretraining did not measurably help on IDH" in found.summary


def test_verdict_ignores_a_comparison_against_another_method() -> None:
    results = [_row(HEADLINE, "idh", 0.9), _row(CONTROL, "idh", 0.5, p=0.001, against="radiomics-lr")]
    (task,) = verdict(_document(results), "kfold").tasks
    assert task.outcome == "did-not-help" and "no DeLong comparison recorded" in task.text


def test_verdict_without_control_oracle_or_permutation() -> None:
    results = [_row(HEADLINE, "idh", 0.8, p_permutation=None), _row(HEADLINE, "mgmt", None)]
    results += [_row(CONTROL, "mgmt", 0.5), _row("umbif-random-finetune", "idh", 0.5)]  # not a probe's control
    found = verdict(_document(results), "kfold")
    assert [(t.task, t.outcome) for t in found.tasks] == [("idh", "no-control"), ("mgmt", "no-auc")]
    assert "whether pretraining helped is not tested" in found.tasks[0].text
    assert "No untrained control tested pretraining on IDH; the headline method has no AUC on MGMT" in found.summary
    assert not re.search("oracle|permutation|baseline", found.text)


@pytest.mark.parametrize("reference", [None, "umbif-finetune"])
def test_verdict_without_a_headline_makes_no_claim(reference: str | None) -> None:
    found = verdict(_document(_pair(0.9, 0.5, 0.001), reference_method=reference), "kfold")
    assert found.headline is None and not found.tasks and "makes no claim" in found.text


def test_verdict_shows_label_permutation_p_values() -> None:
    results = _pair(0.8, 0.55, 0.03, p_permutation=0.004)
    results[1]["p_permutation"] = 0.0004
    text = verdict(_document(results), "kfold").text
    assert "(AUC 0.800, 95% CI 0.700–0.900, label-permutation p = 0.004)" in text
    assert "label-permutation p < 0.001; DeLong p = 0.030)" in text


@pytest.mark.parametrize("control_noise", [0.0, 0.05])
def test_verdict_end_to_end_from_predictions(control_noise: float) -> None:
    """Predictions -> umbif.eval.summary (DeLong) -> verdict: a control of random scores is beaten, a control
    scoring like the headline is not; the AUCs shown are scikit-learn's."""
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    ours = 1 / (1 + np.exp(-(3 * (y - 0.5) + rng.normal(0, 1, y.size))))
    scores = {
        HEADLINE: ours,
        CONTROL: rng.uniform(size=y.size) if control_noise == 0 else np.clip(ours + rng.normal(0, 0.05, y.size), 0, 1),
        "radiomics-lr": 1 / (1 + np.exp(-(1 * (y - 0.5) + rng.normal(0, 1, y.size)))),
    }
    rows = [
        (method, "idh", "kfold", 0, i % 5, f"e{i}", f"p{i}", f"s{i % 2}", int(y[i]), float(score[i]), 0.5)
        for method, score in scores.items()
        for i in range(y.size)
    ]
    predictions = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    methods = {m: {"description": m} for m in scores}
    document = metrics_document(predictions, methods=methods, provenance={}, reference_method=HEADLINE, n_bootstrap=20)
    (task,) = verdict(document, "kfold").tasks
    assert task.outcome == ("helped" if control_noise == 0 else "did-not-help")
    auc = {method: roc_auc_score(y, score) for method, score in scores.items()}
    assert f"{HEADLINE} (AUC {auc[HEADLINE]:.3f}" in task.text and f"{CONTROL} (AUC {auc[CONTROL]:.3f}" in task.text
    assert auc["radiomics-lr"] < auc[HEADLINE] and "beats 1 of 1 baselines (radiomics-lr)." in task.text


# ---------------------------------------------------------------------------------------- the report
def test_report_opens_with_the_forest_plot_and_verdict(tmp_path) -> None:
    document = _document([*_pair(0.8, 0.5, 0.01), *_pair(0.6, 0.6, 0.9, task="mgmt")], oracle_auc={"idh": 0.9})
    paths = write_report(tmp_path, document)
    page, markdown = paths["html"].read_text(), paths["markdown"].read_text()
    assert page.index('id="forest"') < page.index('id="verdict"') < page.index("<table")
    assert re.findall(r'data-task="(\w+)" data-verdict="([\w-]+)"', page) == [
        ("idh", "helped"),
        ("mgmt", "did-not-help"),
    ]
    assert paths["forest"] == tmp_path / "report" / "forest.png"
    assert paths["forest"].read_bytes() == forest_plot(document, "kfold")
    assert markdown.index("![forest plot](forest.png)") < markdown.index("**Verdict.**") < markdown.index("\n|")
    assert "pretraining did not measurably help on this task" in markdown


def test_report_of_loso_only_shows_loso(tmp_path) -> None:
    document = _document([_row(HEADLINE, "idh", 0.8, scheme="loso"), _row(CONTROL, "idh", 0.5, scheme="loso", p=0.01)])
    page = write_report(tmp_path, document)["html"].read_text()
    assert 'id="verdict" data-scheme="loso"' in page and "(Leave-one-site-out)" in page


def test_permutation_column_only_where_recorded(tmp_path) -> None:
    results = _pair(0.8, 0.55, 0.03, p_permutation=0.004)
    results[1]["p_permutation"] = None  # not computed for the control
    results += [_row(HEADLINE, "idh", 0.7, scheme="loso")]
    paths = write_report(tmp_path, _document(results))
    page, markdown = paths["html"].read_text(), paths["markdown"].read_text()
    cells = dict(re.findall(r'data-method="([^"]+)"[^>]*data-metric="p_permutation" data-value="([^"]*)">', page))
    assert cells == {HEADLINE: "0.004", CONTROL: ""}
    kfold, loso = page.split('data-table="main"')[1:3]
    assert "p (permutation)" in kfold and "p (permutation)" not in loso
    header = next(line for line in markdown.splitlines() if "p (permutation)" in line)
    assert header.endswith("| AUC | p (permutation) |")

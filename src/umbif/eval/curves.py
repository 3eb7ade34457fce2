"""The report's per-task curves: ROC curves and reliability diagrams of every method on one task and
scheme, drawn from ``metrics.json`` (each result's ``roc`` and ``reliability``) on matplotlib ``Figure``
objects (no pyplot), as PNG bytes for :mod:`umbif.eval.report`."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from umbif.data.samples import TITLES
from umbif.eval.forest import SCHEME_TITLES, fmt, json_number, plot_text


def curve_plot(
    results: Mapping[tuple[str, str, str], dict[str, Any]],
    methods: Sequence[str],
    oracle: Mapping[str, Any],
    task: str,
    scheme: str,
    kind: str,
) -> bytes:
    """ROC curves (``kind="roc"``) or the reliability diagram (``"reliability"``) of every method on one
    task and scheme, as PNG bytes.

    Args:
        results: the document's results by ``(method, task, scheme)``.
        methods: every method, in legend order (one colour each, the same on every plot).
        oracle: the document's ``oracle_auc`` (``{task: AUC}``), shown in the ROC legend.
        task, scheme: which results to draw.
        kind: ``"roc"`` or ``"reliability"``.

    Raises:
        ValueError: an AUC that is not a number, naming it.
    """
    fig = Figure(figsize=(4.6, 4.4), facecolor="white")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance" if kind == "roc" else "ideal")
    colours = [f"C{i % 10}" for i in range(len(methods))]
    drawn = 0
    for method, colour in zip(methods, colours, strict=True):
        result = results.get((method, task, scheme))
        if result is None:
            continue
        if kind == "roc":
            curve = result.get("roc") or {}
            x, y = curve.get("fpr") or [], curve.get("tpr") or []
            auc = json_number(
                ((result.get("metrics") or {}).get("auc") or {}).get("value"), f"{method}/{task}/{scheme} auc.value"
            )
            if x and len(x) == len(y):
                ax.plot(x, y, color=colour, linewidth=1.6, label=f"{plot_text(method)} (AUC {fmt(auc)})")
                drawn += 1
        else:
            bins = result.get("reliability") or {}
            x, y = bins.get("mean_score") or [], bins.get("fraction_positive") or []
            counts = bins.get("count") or [1] * len(x)
            if x and len(x) == len(y) == len(counts):
                ax.plot(x, y, color=colour, linewidth=1.2, marker="o", markersize=3, label=plot_text(method))
                ax.scatter(x, y, s=[8 + 4 * math.sqrt(max(c, 0)) for c in counts], color=colour, alpha=0.5)
                drawn += 1
    if kind == "roc" and task in oracle:
        oracle = json_number(oracle[task], f"oracle_auc.{task}")
        ax.plot([], [], linestyle="none", label=f"oracle AUC {fmt(oracle)}")
    if not drawn:
        ax.text(0.5, 0.5, "no curve data", ha="center", va="center", color="0.4", transform=ax.transAxes)
    names = (
        ("False positive rate", "True positive rate")
        if kind == "roc"
        else ("Mean predicted score", "Fraction positive")
    )
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.grid(color="0.92")
    ax.set_title(f"{TITLES.get(task, plot_text(task))}\n{SCHEME_TITLES.get(scheme, plot_text(scheme))}", fontsize=9)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()

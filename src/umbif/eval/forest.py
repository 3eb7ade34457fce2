"""The claim at a glance: a forest plot of every method's AUC and confidence interval (one panel per
task) and a plain-language verdict on the headline method, both from ``metrics.json`` alone. The
report (:mod:`umbif.eval.report`) puts them at the top of the page.

- The headline method is the document's ``reference_method`` (e.g. ``umbif-probe``): red and bold in
  the plot. The untrained-architecture controls (``<encoder>-random-<adaptation>``) are grey open
  circles; the oracle AUC of a synthetic cohort is a dashed blue line, chance (0.5) a dotted grey one.
- The verdict says, task by task, whether the headline beats its own untrained control: a higher AUC
  *and* DeLong p < :data:`ALPHA` (the control's ``comparison`` against the headline). Otherwise it says
  plainly that pretraining did not measurably help there. It names the baselines (methods not made of
  an UMBIF encoder) the headline beats by point estimate, and shows each row's label-permutation
  p-value (``p_permutation``) where the document has one.

The small readers the report shares also live here (:func:`json_number`, :func:`fmt`, :func:`fmt_p`,
:func:`plot_text`).

Example:
    >>> png = forest_plot(document, primary_scheme(document))  # doctest: +SKIP
    >>> verdict(document, "kfold").text  # doctest: +SKIP
    'Headline method: umbif-probe (Patient-level stratified k-fold). Pretraining measurably helped on IDH; ...'
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from umbif.data.samples import TASKS, TITLES

SCHEME_TITLES: dict[str, str] = {"kfold": "Patient-level stratified k-fold", "loso": "Leave-one-site-out"}
SHORT_TITLES: dict[str, str] = {"outcome": "Outcome", "idh": "IDH", "mgmt": "MGMT", "codeletion_1p19q": "1p/19q"}
MISSING = "—"
ALPHA = 0.05  # DeLong significance level for "beats its untrained control"
RANDOM_TAG = "-random-"  # <encoder>-random-<adaptation>: the untrained-architecture control
UMBIF_PREFIX = "umbif"  # methods of an UMBIF encoder; every other method is a baseline
FOREST_FILE = "forest.png"
OUTCOMES: dict[str, str] = {  # what the verdict found on a task -> how its bottom line says it
    "helped": "pretraining measurably helped on",
    "did-not-help": "pretraining did not measurably help on",
    "no-control": "no untrained control tested pretraining on",
    "no-auc": "the headline method has no AUC on",
}
HEADLINE_COLOUR, CONTROL_COLOUR, OTHER_COLOUR, ORACLE_COLOUR = "#c0392b", "0.5", "#2c3e50", "#1f6fb2"


# --------------------------------------------------------------------------------------- reading
def json_number(value: Any, where: str) -> float | None:
    """A JSON number as float; None for null (and for a non-finite number, which the schema forbids).

    Raises:
        ValueError: a value that is not a number, naming ``where`` in metrics.json.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metrics.json: {where} is {value!r}, expected a number or null")
    return float(value) if math.isfinite(value) else None


def fmt(value: float | None, digits: int = 3) -> str:
    """``0.831`` for a number, ``—`` for None."""
    return MISSING if value is None else f"{value:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value as written in the report: ``<0.001`` below a thousandth, else three decimals."""
    return "<0.001" if p is not None and p < 0.001 else fmt(p)


def plot_text(text: str) -> str:
    """Matplotlib text as written: no mathtext from '$', no legend entry hidden by a leading '_'."""
    text = text.replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def primary_scheme(document: dict[str, Any]) -> str | None:
    """The scheme the glance shows: k-fold when present, else leave-one-site-out, else any; None without results."""
    schemes = {r["scheme"] for r in document.get("results") or []}
    return next((s for s in SCHEME_TITLES if s in schemes), min(schemes, default=None))


def control_of(method: str, methods: list[str]) -> str | None:
    """The untrained-architecture control of a method among ``methods``: ``<encoder>-random-<adaptation>``
    for ``<encoder>-<adaptation>``, else ``umbif-random-<adaptation>``, else any ``*-random-<adaptation>``."""
    encoder, _, adaptation = method.rpartition("-")
    if RANDOM_TAG in method or not encoder:
        return None
    candidates = [f"{encoder}{RANDOM_TAG}{adaptation}", f"{UMBIF_PREFIX}{RANDOM_TAG}{adaptation}"]
    candidates += [m for m in methods if RANDOM_TAG in m and m.endswith(f"-{adaptation}")]
    return next((m for m in candidates if m in methods), None)


@dataclass(frozen=True)
class Estimate:
    value: float | None  # AUC point estimate; None when undefined
    low: float | None
    high: float | None
    p_permutation: float | None  # label-permutation p-value of the row, None when not computed


@dataclass(frozen=True)
class ForestRow:
    method: str
    kind: str  # "headline" (the reference method), "control" (-random-) or "method"
    auc: dict[str, Estimate]  # task -> estimate, tasks the method was run on


def _estimate(result: dict[str, Any]) -> Estimate:
    entry = (result.get("metrics") or {}).get("auc") or {}
    where = f"{result['method']}/{result['task']}/{result['scheme']}"
    value, low, high = (json_number(entry.get(k), f"{where} auc.{k}") for k in ("value", "low", "high"))
    return Estimate(value, low, high, json_number(result.get("p_permutation"), f"{where} p_permutation"))


def forest_tasks(document: dict[str, Any], scheme: str) -> list[str]:
    """Tasks with results in ``scheme``: the known ones in :data:`TASKS` order, then any other sorted."""
    present = {r["task"] for r in document.get("results") or [] if r["scheme"] == scheme}
    return [t for t in TASKS if t in present] + sorted(present - set(TASKS))


def forest_rows(document: dict[str, Any], scheme: str) -> list[ForestRow]:
    """The plot's rows, top to bottom: the headline method, its control, then every other method in document order."""
    results = [r for r in document.get("results") or [] if r["scheme"] == scheme]
    order = list(dict.fromkeys([*(document.get("methods") or {}), *(r["method"] for r in results)]))
    methods = [m for m in order if any(r["method"] == m for r in results)]
    headline = document.get("reference_method")
    first = [headline, control_of(headline, methods)] if headline in methods else []
    methods = [m for m in first if m] + [m for m in methods if m not in first]
    return [
        ForestRow(
            method,
            "headline" if method == headline else "control" if RANDOM_TAG in method else "method",
            {r["task"]: _estimate(r) for r in results if r["method"] == method},
        )
        for method in methods
    ]


# ------------------------------------------------------------------------------------------ plot
_STYLES: dict[str, dict[str, Any]] = {  # marker and interval of each kind of row, and its legend entry
    "headline": {"marker": "D", "color": HEADLINE_COLOUR, "mfc": HEADLINE_COLOUR, "ms": 7, "lw": 2.4, "ls": "-"},
    "control": {"marker": "o", "color": CONTROL_COLOUR, "mfc": "white", "ms": 6, "lw": 1.4, "ls": (0, (3, 2))},
    "method": {"marker": "s", "color": OTHER_COLOUR, "mfc": OTHER_COLOUR, "ms": 5, "lw": 1.4, "ls": "-"},
}
_LEGEND = {"headline": "headline (UMBIF)", "control": "untrained control (random init)", "method": "other method"}


def _x_range(rows: list[ForestRow]) -> tuple[float, float]:
    """From a tenth below the lowest bound shown (at most 0.4, so chance is always in view) to 1."""
    shown = [v for row in rows for e in row.auc.values() for v in (e.value, e.low) if v is not None]
    return max(0.0, min(0.4, math.floor(10 * min(shown, default=0.4)) / 10 - 0.05)), 1.0


def forest_plot(document: dict[str, Any], scheme: str) -> bytes:
    """The forest plot of one scheme as PNG bytes: a panel per task, a row per method (AUC and CI).

    Args:
        document: a metrics document (checked by :func:`umbif.eval.report.load_metrics`).
        scheme: ``"kfold"`` or ``"loso"`` (see :func:`primary_scheme`).

    Raises:
        ValueError: an AUC or p-value that is not a number, naming it.
    """
    tasks, rows = forest_tasks(document, scheme), forest_rows(document, scheme)
    oracle = document.get("oracle_auc") or {}
    x_range = _x_range(rows)
    fig = Figure(
        figsize=(2.2 + 2.6 * max(len(tasks), 1), 1.9 + 0.3 * len(rows)), facecolor="white", layout="constrained"
    )
    axes = fig.subplots(1, max(len(tasks), 1), sharey=True, squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=False):
        ax.axvline(0.5, color="0.55", linestyle=":", linewidth=1)
        line = json_number(oracle.get(task), f"oracle_auc.{task}")
        if line is not None:
            ax.axvline(line, color=ORACLE_COLOUR, linestyle="--", linewidth=1.3)
            ax.annotate(
                f"oracle {fmt(line, 2)}", (line, 1), xycoords=("data", "axes fraction"), xytext=(0, 2),
                textcoords="offset points", ha="right" if line > 0.8 else "center", va="bottom", fontsize=7,
                color=ORACLE_COLOUR,
            )  # fmt: skip
        for y, row in enumerate(rows):
            estimate, style = row.auc.get(task), _STYLES[row.kind]
            if row.kind == "headline":
                ax.axhspan(y - 0.5, y + 0.5, color=HEADLINE_COLOUR, alpha=0.08, linewidth=0)
            if estimate is None:
                continue
            if estimate.value is None:
                ax.text(x_range[0] + 0.02, y, "AUC undefined", va="center", fontsize=7, color="0.4")
                continue
            if estimate.low is not None and estimate.high is not None:
                ax.plot([estimate.low, estimate.high], [y, y], color=style["color"], lw=style["lw"], ls=style["ls"])
            ax.plot(
                [estimate.value], [y], linestyle="none", marker=style["marker"], color=style["color"],
                markerfacecolor=style["mfc"], markersize=style["ms"], markeredgewidth=1.4,
            )  # fmt: skip
        ax.set_xlim(*x_range)
        ax.grid(axis="x", color="0.92")
        ax.set_xlabel("AUC", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_title(textwrap.fill(TITLES.get(task, plot_text(task)), 40), fontsize=9, pad=12)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    axes[0].set_yticks(range(len(rows)), [plot_text(r.method) for r in rows])
    for label, row in zip(axes[0].get_yticklabels(), rows, strict=True):
        if row.kind == "headline":
            label.set_fontweight("bold")
            label.set_color(HEADLINE_COLOUR)
    if not tasks:
        axes[0].text(0.5, 0.5, "no results", ha="center", va="center", color="0.4", transform=axes[0].transAxes)
    level = (document.get("bootstrap") or {}).get("level", 0.95)
    fig.suptitle(f"AUC with {level:.0%} CI — {SCHEME_TITLES.get(scheme, plot_text(scheme))}", fontsize=10)
    kinds = [k for k in _STYLES if any(row.kind == k for row in rows)]  # the legend names only what is drawn
    handles = [
        Line2D([], [], marker=s["marker"], color=s["color"], markerfacecolor=s["mfc"], ls=s["ls"], lw=s["lw"])
        for s in (_STYLES[k] for k in kinds)
    ]
    labels = [_LEGEND[k] for k in kinds]
    if any(json_number(oracle.get(t), f"oracle_auc.{t}") is not None for t in tasks):
        handles, labels = [*handles, Line2D([], [], color=ORACLE_COLOUR, ls="--")], [*labels, "oracle AUC"]
    handles, labels = [*handles, Line2D([], [], color="0.55", ls=":")], [*labels, "chance"]
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def forest_caption(document: dict[str, Any], scheme: str) -> str:
    """The plain-text caption under the plot's heading."""
    level = (document.get("bootstrap") or {}).get("level", 0.95)
    headline = document.get("reference_method") or "none recorded"
    return (
        f"AUC and {level:.0%} confidence interval of every method (rows) on every task (panels), "
        f"{SCHEME_TITLES.get(scheme, scheme).lower()}. Red and bold: the headline method ({headline}); grey open "
        "circles on dashed bars: the untrained-architecture controls (same network, random weights); dashed blue "
        "line: the oracle AUC of a synthetic cohort; dotted line: chance (0.5)."
    )


# --------------------------------------------------------------------------------------- verdict
@dataclass(frozen=True)
class TaskVerdict:
    task: str
    outcome: str  # one of OUTCOMES
    text: str
    beaten: tuple[str, ...] = ()  # baselines with a lower AUC point estimate
    baselines: tuple[str, ...] = ()  # baselines with an AUC on this task


@dataclass(frozen=True)
class Verdict:
    scheme: str
    headline: str | None  # the reference method; None when the document names none with results
    summary: str  # the bottom line, first
    tasks: list[TaskVerdict]

    @property
    def text(self) -> str:
        """The whole paragraph as plain text."""
        return " ".join([self.summary, *(t.text for t in self.tasks)])


def _p_text(test: str, p: float) -> str:
    return f"{test} p < 0.001" if p < 0.001 else f"{test} p = {p:.3f}"


def _auc_text(estimate: Estimate, level: float) -> str:
    text = f"AUC {fmt(estimate.value)}"
    if estimate.low is not None and estimate.high is not None:
        text += f", {level:.0%} CI {fmt(estimate.low)}–{fmt(estimate.high)}"
    if estimate.p_permutation is not None:
        text += ", " + _p_text("label-permutation", estimate.p_permutation)
    return text


def _delong_p(document: dict[str, Any], control: str, task: str, scheme: str, headline: str) -> float | None:
    """DeLong p of the control against the headline (stored in the control's row), None when not compared."""
    row = next((r for r in document["results"] if (r["method"], r["task"], r["scheme"]) == (control, task, scheme)), {})
    comparison = row.get("comparison") or {}
    if comparison.get("against") != headline:
        return None
    return json_number(comparison.get("p_value"), f"{control}/{task}/{scheme} comparison.p_value")


def _task_verdict(document: dict[str, Any], rows: list[ForestRow], task: str, scheme: str) -> TaskVerdict:
    level = (document.get("bootstrap") or {}).get("level", 0.95)
    head = rows[0]
    control = control_of(head.method, [r.method for r in rows])
    ours = head.auc.get(task)
    theirs = next((r.auc.get(task) for r in rows if r.method == control), None)
    oracle = json_number((document.get("oracle_auc") or {}).get(task), f"oracle_auc.{task}")
    name = SHORT_TITLES.get(task, task) + (f" (oracle AUC {fmt(oracle)})" if oracle is not None else "") + ": "
    if ours is None or ours.value is None:
        return TaskVerdict(task, "no-auc", f"{name}{head.method} has no AUC here (not run, or one class only).")
    text = f"{name}{head.method} ({_auc_text(ours, level)})"
    if control is None or theirs is None or theirs.value is None:
        outcome = "no-control"
        text += " has no untrained control with an AUC on this task, so whether pretraining helped is not tested."
    else:
        p = _delong_p(document, control, task, scheme, head.method)
        helped = ours.value > theirs.value and p is not None and p < ALPHA
        outcome = "helped" if helped else "did-not-help"
        test = _p_text("DeLong", p) if p is not None else "no DeLong comparison recorded"
        text += f" {'beats' if helped else 'does not beat'} its untrained control {control}"
        text += f" ({_auc_text(theirs, level)}; {test})"
        text += ": pretraining helped." if helped else ": pretraining did not measurably help on this task."
    baselines = [(r.method, r.auc[task].value) for r in rows if _is_baseline(r) and task in r.auc]
    beaten = tuple(m for m, v in baselines if v is not None and v < ours.value)
    if baselines:
        text += f" By point estimate it beats {len(beaten)} of {len(baselines)} baselines"
        text += f" ({', '.join(beaten)})" if beaten else ""
        short = [f"{m} ({fmt(v)})" for m, v in baselines if m not in beaten]
        text += f"; it does not beat {_listing(short)}." if short else "."
    return TaskVerdict(task, outcome, text, beaten, tuple(m for m, _ in baselines))


def _is_baseline(row: ForestRow) -> bool:
    return row.kind == "method" and not row.method.startswith(UMBIF_PREFIX)


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def verdict(document: dict[str, Any], scheme: str) -> Verdict:
    """The plain-language verdict on the headline method in one scheme, computed from the numbers.

    Returns:
        A :class:`Verdict`: the bottom line (on which tasks pretraining measurably helped, on how many
        the headline beats every baseline), then one :class:`TaskVerdict` per task.

    Raises:
        ValueError: an AUC or p-value that is not a number, naming it.
    """
    rows = forest_rows(document, scheme)
    headline = document.get("reference_method")
    title = SCHEME_TITLES.get(scheme, scheme)
    if not rows or rows[0].kind != "headline":
        summary = (
            f"No headline method: reference_method {headline or 'is unset'}"
            f"{' has no results here' if headline else ''} ({title}), so this report makes no claim for UMBIF; "
            "the plot compares every method."
        )
        return Verdict(scheme, None, summary, [])
    tasks = [_task_verdict(document, rows, t, scheme) for t in forest_tasks(document, scheme)]
    names = {o: [SHORT_TITLES.get(t.task, t.task) for t in tasks if t.outcome == o] for o in OUTCOMES}
    clauses = [f"{phrase} {_listing(names[outcome])}" for outcome, phrase in OUTCOMES.items() if names[outcome]]
    bottom_line = "; ".join(clauses)
    summary = f"Headline method: {headline} ({title}). {bottom_line[:1].upper()}{bottom_line[1:]}"
    if any(t.baselines for t in tasks):
        every = sum(1 for t in tasks if t.baselines and len(t.beaten) == len(t.baselines))
        summary += f". It beats every baseline by point estimate on {every} of {len(tasks)} tasks"
    return Verdict(scheme, headline, summary + ".", tasks)

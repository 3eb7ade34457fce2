"""The evaluation report: ``RUN_DIR/metrics.json`` (written by ``umbif evaluate``) becomes
``RUN_DIR/report/`` with

- ``report.html``: one self-contained page (inline CSS, plots as base64 data URIs, no scripts, no
  fonts or links to fetch), so it opens offline and can be mailed as one file;
- ``report.md``: the same tables and text in Markdown, with the plots as neighbouring PNG files;
- ``report.json``: the metrics document itself, for anyone who wants the numbers;
- ``forest.png`` (at the top of both pages, with the verdict under it: :mod:`umbif.eval.forest`),
  ``roc_<scheme>_<task>.png`` and ``reliability_<scheme>_<task>.png``.

Tables are built once (:class:`_Table`) and rendered twice, so HTML and Markdown always agree.
Every numeric cell of the HTML tables carries its exact value as ``data-*`` attributes
(``data-method``, ``data-task``, ``data-scheme``, ``data-metric``, ``data-value``, ``data-low``,
``data-high``; ``""`` for null), so a program can read the page without parsing "0.831 (0.75–0.90)".
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umbif.data.samples import TASKS, TITLES
from umbif.eval.curves import curve_plot
from umbif.eval.forest import (
    FOREST_FILE,
    MISSING,
    SCHEME_TITLES,
    fmt,
    fmt_p,
    forest_caption,
    forest_plot,
    json_number,
    primary_scheme,
    verdict,
)
from umbif.utils import atomic_write, safe_name, write_json, write_text_atomic

FORMAT, VERSION = "umbif-metrics", 1
MAIN_METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "auc")
SECONDARY_METRICS: tuple[str, ...] = ("balanced_accuracy", "ppv", "npv", "brier")
METRIC_TITLES: dict[str, str] = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "auc": "AUC",
    "balanced_accuracy": "Balanced accuracy",
    "ppv": "PPV",
    "npv": "NPV",
    "brier": "Brier score",
}
REFERENCE_LABEL = "published UMBIF, real multicentre data — not measured here"
ORACLE_LABEL = "oracle: best achievable AUC on this synthetic cohort"
_PLOT_PREFIXES = ("roc_", "reliability_", "forest")


# --------------------------------------------------------------------------------------- reading
def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read and check a ``metrics.json`` written by ``umbif evaluate``.

    Args:
        path: the file (``RUN_DIR/metrics.json``).

    Returns:
        The document (see the schema in the module docs of ``umbif.eval.summary``).

    Raises:
        FileNotFoundError: no such file (the message says to run ``umbif evaluate`` first).
        ValueError: not JSON, or not an ``umbif-metrics`` version 1 document.

    Example:
        >>> document = load_metrics("runs/eval/metrics.json")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `umbif evaluate` first, it writes metrics.json into RUN_DIR")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun `umbif evaluate` to write it again") from err
    return _check(document, str(path))


def _check(document: Any, source: str) -> dict[str, Any]:
    """The structure the report relies on; everything else is optional and shown as far as present."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f'{source}: not a metrics document (expected "format": "{FORMAT}")')
    if document.get("version") != VERSION:
        raise ValueError(
            f"{source}: metrics version {document.get('version')!r} is not {VERSION}; "
            "rerun `umbif evaluate` with this umbif version"
        )
    results = document.get("results", [])
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ValueError(f'{source}: "results" must be a list of objects')
    seen: set[tuple[Any, ...]] = set()
    for number, result in enumerate(results):
        key = tuple(result.get(name) for name in ("method", "task", "scheme"))
        if not all(isinstance(part, str) and part for part in key):
            raise ValueError(f"{source}: results[{number}] needs text fields method, task and scheme, got {key}")
        if key in seen:
            raise ValueError(f"{source}: results[{number}] repeats method/task/scheme {key}")
        seen.add(key)
    return document


def _attr(value: float | None) -> str:
    return "" if value is None else repr(value)


# ---------------------------------------------------------------------------------------- tables
@dataclass
class _Cell:
    text: str
    attrs: dict[str, str] = field(default_factory=dict)  # data-* attributes of numeric cells
    numeric: bool = False


@dataclass
class _Table:
    name: str  # data-table attribute: main, secondary, sites, delong, time
    header: list[str]
    rows: list[list[_Cell]]
    kinds: list[str]  # per row: "" (measured), "reference" or "oracle"
    scheme: str = ""


class _Run:
    """The document indexed for rendering: results by (method, task, scheme), in a stable order."""

    def __init__(self, document: dict[str, Any]):
        self.document = document
        self.results = {(r["method"], r["task"], r["scheme"]): r for r in document.get("results", [])}
        described = list(document.get("methods") or {})
        self.methods = list(dict.fromkeys(described + [m for m, _, _ in self.results]))
        present = {t for _, t, _ in self.results}
        self.tasks = [t for t in TASKS if t in present] + sorted(present - set(TASKS))
        schemes = {s for _, _, s in self.results}
        self.schemes = [s for s in SCHEME_TITLES if s in schemes] + sorted(schemes - set(SCHEME_TITLES))
        self.reference = document.get("reference") or {}
        self.oracle = document.get("oracle_auc") or {}
        self.primary = primary_scheme(document)  # the scheme of the forest plot and the verdict

    def rows(self, scheme: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(task, method, result) for one scheme, tasks in TASKS order, methods in document order."""
        return [
            (t, m, self.results[(m, t, scheme)])
            for t in self.tasks
            for m in self.methods
            if (m, t, scheme) in self.results
        ]


def _estimate_cell(result: dict[str, Any], metric: str, where: dict[str, str]) -> _Cell:
    entry = (result.get("metrics") or {}).get(metric) or {}
    label = f"{where['data-method']}/{where['data-task']}/{where['data-scheme']} {metric}"
    value, low, high = (json_number(entry.get(k), f"{label}.{k}") for k in ("value", "low", "high"))
    text = fmt(value)
    if value is not None and low is not None and high is not None:
        text += f" ({fmt(low)}–{fmt(high)})"
    attrs = {
        **where,
        "data-metric": metric,
        "data-value": _attr(value),
        "data-low": _attr(low),
        "data-high": _attr(high),
    }
    return _Cell(text, attrs, numeric=True)


def _value_cell(value: Any, attrs: dict[str, str], where: str, digits: int = 3) -> _Cell:
    value = json_number(value, where)
    return _Cell(fmt(value, digits), {**attrs, "data-value": _attr(value)}, numeric=True)


def _p_cell(value: Any, attrs: dict[str, str], where: str) -> _Cell:
    p = json_number(value, where)
    return _Cell(fmt_p(p), {**attrs, "data-value": _attr(p)}, numeric=True)


def _metric_table(run: _Run, scheme: str, name: str, metrics: tuple[str, ...]) -> _Table:
    """Task x method rows of estimates with CIs; the main table adds the published and oracle rows, and a
    label-permutation p column when the scheme's results have one."""
    rows: list[list[_Cell]] = []
    kinds: list[str] = []
    permuted = name == "main" and any(r.get("p_permutation") is not None for _, _, r in run.rows(scheme))
    for task in run.tasks:
        for method in (m for m in run.methods if (m, task, scheme) in run.results):
            result = run.results[(method, task, scheme)]
            where = {"data-method": method, "data-task": task, "data-scheme": scheme}
            n = f"{result.get('n_samples', MISSING)} ({result.get('n_positive', MISSING)} pos.)"
            cells = [_Cell(task), _Cell(method), _Cell(n, numeric=True)]
            cells += [_estimate_cell(result, m, where) for m in metrics]
            if permuted:
                attrs, label = {**where, "data-metric": "p_permutation"}, f"{method}/{task}/{scheme} p_permutation"
                cells.append(_p_cell(result.get("p_permutation"), attrs, label))
            rows.append(cells)
            kinds.append("")
        yardsticks = (
            ("reference", REFERENCE_LABEL, run.reference.get(task) or {}),
            ("oracle", ORACLE_LABEL, {"auc": run.oracle[task]} if task in run.oracle else {}),
        )
        for kind, label, values in yardsticks if name == "main" else ():
            if not values:
                continue
            attrs = {"data-row": kind, "data-task": task}
            cells = [
                _value_cell(values[m], {**attrs, "data-metric": m}, f"{kind}.{task}.{m}")
                if m in values
                else _Cell(MISSING)
                for m in metrics
            ]
            rows.append([_Cell(task), _Cell(label), _Cell(MISSING), *cells, *[_Cell(MISSING)] * permuted])
            kinds.append(kind)
    header = ["Task", "Method", "n", *(METRIC_TITLES[m] for m in metrics), *["p (permutation)"] * permuted]
    return _Table(name, header, rows, kinds, scheme)


def _site_table(run: _Run, scheme: str) -> _Table:
    rows: list[list[_Cell]] = []
    for task, method, result in run.rows(scheme):
        for site_row in result.get("per_site") or []:
            site = str(site_row.get("site", MISSING))
            attrs = {"data-method": method, "data-task": task, "data-scheme": scheme, "data-site": site}
            cells = [
                _value_cell(site_row.get(m), {**attrs, "data-metric": m}, f"{method}/{task}/{scheme} {site} {m}")
                for m in MAIN_METRICS
            ]
            counts = [_Cell(str(site_row.get(k, MISSING)), numeric=True) for k in ("n", "n_positive")]
            rows.append([_Cell(task), _Cell(method), _Cell(site), *counts, *cells])
    header = ["Task", "Method", "Site", "n", "Positive", *(METRIC_TITLES[m] for m in MAIN_METRICS)]
    return _Table("sites", header, rows, [""] * len(rows), scheme)


def _delong_table(run: _Run) -> _Table:
    rows: list[list[_Cell]] = []
    for scheme in run.schemes:
        for task, method, result in run.rows(scheme):
            comparison = result.get("comparison")
            if not comparison:
                continue
            where = {"data-method": method, "data-task": task, "data-scheme": scheme}
            label = f"{method}/{task}/{scheme} comparison"
            numbers = [
                _value_cell(comparison.get(k), {**where, "data-metric": k}, f"{label}.{k}")
                for k in ("auc", "auc_against", "difference")
            ]
            p_cell = _p_cell(comparison.get("p_value"), {**where, "data-metric": "p_value"}, f"{label}.p_value")
            against = str(comparison.get("against", MISSING))
            n = _Cell(str(comparison.get("n", MISSING)), numeric=True)
            rows.append([_Cell(_scheme(scheme)), _Cell(task), _Cell(method), _Cell(against), n, *numbers, p_cell])
    header = ["Scheme", "Task", "Method", "Against", "n", "AUC", "AUC (against)", "Difference", "p (DeLong)"]
    return _Table("delong", header, rows, [""] * len(rows))


def _time_table(run: _Run) -> _Table:
    described = run.document.get("methods") or {}
    rows = []
    for method in run.methods:
        info = described.get(method) or {}
        seconds = _value_cell(info.get("wall_time_s"), {"data-method": method}, f"methods.{method}.wall_time_s", 1)
        rows.append([_Cell(method), _Cell(str(info.get("description", ""))), seconds])
    return _Table("time", ["Method", "Description", "Wall time (s)"], rows, [""] * len(rows))


# -------------------------------------------------------------------------------------- rendering
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1d232a;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #d8dde3}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.88rem}
th,td{border:1px solid #d8dde3;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f4f7}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.reference td{background:#fbf6e9;font-style:italic;color:#5b4a1f}tr.oracle td{background:#eaf3fa;color:#1f4a6b}
.figures{display:flex;flex-wrap:wrap;gap:.8rem}.figures img{width:460px;max-width:100%;border:1px solid #e3e7eb}
.note{background:#f6f8fa;border-left:4px solid #8aa4bf;padding:.6rem 1rem}pre{background:#f6f8fa;padding:.6rem;
overflow:auto;font-size:.8rem}details{margin:1rem 0}summary{cursor:pointer;font-weight:600}
#forest{width:100%;border:1px solid #e3e7eb}
#verdict{background:#fbf1ef;border-left:4px solid #c0392b;padding:.6rem 1rem}
"""


def _html_table(table: _Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for cells, kind in zip(table.rows, table.kinds, strict=True):
        tds = []
        for cell in cells:
            attrs = "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in cell.attrs.items())
            css = ' class="num"' if cell.numeric else ""
            tds.append(f"<td{css}{attrs}>{html.escape(cell.text)}</td>")
        row_class = f' class="{kind}"' if kind else ""
        body.append(f"<tr{row_class}>{''.join(tds)}</tr>")
    scheme = f' data-scheme="{html.escape(table.scheme, quote=True)}"' if table.scheme else ""
    if not body:
        return "<p><em>Nothing to show.</em></p>"
    return (
        f'<table data-table="{table.name}"{scheme}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _md_escape(text: str) -> str:
    """Markdown-safe cell text: backslash-escape the punctuation that would make markup or split a table."""
    return "".join(f"\\{c}" if c in "\\|*_`[]<>#" else c for c in text).replace("\n", " ")


def _md_table(table: _Table) -> str:
    if not table.rows:
        return "_Nothing to show._\n"
    numeric = [any(row[i].numeric for row in table.rows) for i in range(len(table.header))]
    lines = ["| " + " | ".join(_md_escape(h) for h in table.header) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for cells, kind in zip(table.rows, table.kinds, strict=True):
        texts = [_md_escape(c.text) for c in cells]
        if kind:
            texts = [f"*{t}*" if t and t != MISSING else t for t in texts]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _intro(run: _Run) -> str:
    """The 'what this is' paragraph, as plain text (escaped by each renderer)."""
    document = run.document
    provenance = document.get("provenance") or {}
    cohort = document.get("cohort") or {}
    version = (provenance.get("versions") or {}).get("umbif", "unknown")
    sites = cohort.get("sites") or []
    where = f"cohort {cohort['manifest']}" if cohort.get("manifest") else "a cohort whose manifest is not recorded"
    if cohort.get("n_exams") is not None:
        where += f" ({cohort['n_exams']} exams" + (
            f", {len(sites)} sites: {', '.join(map(str, sites))})" if sites else ")"
        )
    kind = (
        "The cohort is synthetic (an oracle AUC is recorded): the numbers show that the pipeline works and how close "
        "each method gets to the best achievable AUC; they are not clinical evidence."
        if run.oracle
        else "No oracle AUC is recorded, so the cohort is taken to be real data."
    )
    return (
        f"Patient-level evaluation of {len(run.methods)} method(s) ({', '.join(run.methods) or 'none'}) on "
        f"{len(run.tasks)} task(s) ({', '.join(run.tasks) or 'none'}) of {where}, computed "
        f"{provenance.get('created', 'at an unrecorded time')} with umbif {version} "
        f"(git commit {provenance.get('git_commit') or 'unknown'}). {kind}"
    )


def _how_to_read(document: dict[str, Any]) -> str:
    boot = document.get("bootstrap") or {}
    level = boot.get("level", 0.95)
    return (
        f"Each cell is the point estimate with its {level:.0%} confidence interval in brackets. The point estimate "
        "is the mean over repeats of the metric on that repeat's pooled out-of-fold predictions; the interval is a "
        f"{boot.get('unit', 'patient')}-level bootstrap percentile interval ({boot.get('n', '?')} resamples), so "
        "exams of one patient are resampled together. Decision thresholds were chosen on each fold's training data "
        "only, never on the patients they are tested on. Leave-one-site-out tests every site with a model that never "
        f"saw it. {MISSING} means undefined (e.g. an AUC where only one class is present) or not measured. The "
        "published figures come from real multicentre data and are shown for orientation only, never as results of "
        "this run. DeLong p-values are two-sided and not corrected for multiple comparisons."
    )


def _config_items(document: dict[str, Any]) -> tuple[list[tuple[str, str]], str]:
    provenance = document.get("provenance") or {}
    items = [
        ("created", str(provenance.get("created", MISSING))),
        ("git commit", str(provenance.get("git_commit") or MISSING)),
        ("seed", str(provenance.get("seed", MISSING))),
        ("machine", json.dumps(provenance.get("machine") or {}, sort_keys=True)),
        ("bootstrap", json.dumps(document.get("bootstrap") or {}, sort_keys=True)),
        ("reference method", str(document.get("reference_method") or MISSING)),
    ]
    items += [(name, str(v)) for name, v in (provenance.get("versions") or {}).items()]
    config = json.dumps({"cohort": document.get("cohort") or {}, "config": provenance.get("config")}, indent=2)
    return items, config


def _sections(run: _Run) -> list[tuple[str, str, _Table | str]]:
    """(heading, lead text, table or the scheme whose plots to show) of every section, in page order."""
    schemes = [(s, _scheme(s)) for s in run.schemes]
    lead = "Accuracy, sensitivity, specificity and AUC with confidence intervals."
    sections: list[tuple[str, str, _Table | str]] = [
        (f"Main results: {title}", lead, _metric_table(run, s, "main", MAIN_METRICS)) for s, title in schemes
    ]
    lead = (
        "ROC curves of the pooled out-of-fold predictions (first repeat), AUC in the legend; reliability: mean "
        "predicted score against the fraction of positives per score bin (marker size: samples in the bin)."
    )
    sections += [(f"ROC and reliability: {title}", lead, s) for s, title in schemes]
    against = run.document.get("reference_method") or "the reference method"
    lead = f"AUC of each method against {against} on the same samples."
    sections.append(("DeLong comparisons", lead, _delong_table(run)))
    lead = "Point estimates on each site's samples."
    sections += [(f"Per site: {title}", lead, _site_table(run, s)) for s, title in schemes]
    lead = "Balanced accuracy, PPV, NPV and Brier score (lower is better) with confidence intervals."
    sections += [
        (f"Secondary metrics: {title}", lead, _metric_table(run, s, "secondary", SECONDARY_METRICS))
        for s, title in schemes
    ]
    sections.append(("Wall time per method", "Time each method took for the whole evaluation.", _time_table(run)))
    return sections


def _scheme(scheme: str) -> str:
    return SCHEME_TITLES.get(scheme, scheme)


def _glance_html(run: _Run, plots: dict[str, bytes]) -> str:
    """The forest plot with the verdict under it, first on the page ("" without results)."""
    if run.primary is None:
        return ""
    e, found = html.escape, verdict(run.document, run.primary)
    spans = "".join(
        f' <span data-task="{e(t.task)}" data-verdict="{t.outcome}">{e(t.text)}</span>' for t in found.tasks
    )
    return (
        f'<section id="at-a-glance"><h2>At a glance</h2><p>{e(forest_caption(run.document, run.primary))}</p>'
        f'<img id="forest" alt="forest plot: AUC per method and task" src="data:image/png;base64,'
        f'{base64.b64encode(plots[FOREST_FILE]).decode()}"><p id="verdict" data-scheme="{e(run.primary)}">'
        f"<strong>Verdict.</strong> {e(found.summary)}{spans}</p></section>"
    )


def _render_html(run: _Run, plots: dict[str, bytes]) -> str:
    e = html.escape
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>umbif evaluation report</title><style>{_CSS}</style></head><body>",
        "<h1>umbif evaluation report</h1>",
        f'<p id="what">{e(_intro(run))}</p>',
        _glance_html(run, plots),
        f'<div class="note" id="how-to-read"><strong>How to read this.</strong> {e(_how_to_read(run.document))}</div>',
    ]
    if not run.results:
        parts.append("<p><strong>metrics.json holds no results.</strong></p>")
    for heading, lead, content in _sections(run):
        parts.append(f"<h2>{e(heading)}</h2><p>{e(lead)}</p>")
        if isinstance(content, _Table):
            parts.append(_html_table(content))
            continue
        for task in run.tasks:
            images = [
                f'<img alt="{e(kind)} {e(task)} {e(content)}" src="data:image/png;base64,'
                f'{base64.b64encode(plots[_plot_name(kind, content, task)]).decode()}">'
                for kind in ("roc", "reliability")
            ]
            parts.append(f'<h3>{e(TITLES.get(task, task))}</h3><div class="figures">{"".join(images)}</div>')
    items, config = _config_items(run.document)
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in items)
    parts.append(
        f'<details><summary>Run configuration and versions</summary><table data-table="config">{rows}</table>'
        f"<pre>{e(config)}</pre></details></body></html>"
    )
    return "\n".join(parts) + "\n"


def _render_md(run: _Run) -> str:
    parts = [
        "# umbif evaluation report",
        "",
        _md_escape(_intro(run)),
        "",
        f"> **How to read this.** {_md_escape(_how_to_read(run.document))}",
        "",
    ]
    if run.primary is not None:
        caption, found = forest_caption(run.document, run.primary), verdict(run.document, run.primary)
        parts += ["## At a glance", "", _md_escape(caption), "", f"![forest plot]({FOREST_FILE})", ""]
        parts += [f"**Verdict.** {_md_escape(found.text)}", ""]
    if not run.results:
        parts += ["**metrics.json holds no results.**", ""]
    for heading, lead, content in _sections(run):
        parts += [f"## {_md_escape(heading)}", "", _md_escape(lead), ""]
        if isinstance(content, _Table):
            parts.append(_md_table(content))
            continue
        for task in run.tasks:
            links = [
                f"![{kind} {_md_escape(task)}]({_plot_name(kind, content, task)})" for kind in ("roc", "reliability")
            ]
            parts += [f"### {_md_escape(TITLES.get(task, task))}", "", " ".join(links), ""]
    items, config = _config_items(run.document)
    parts += ["## Run configuration and versions", "", "| Item | Value |", "|---|---|"]
    parts += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in items]
    parts += ["", "```json", config.replace("```", "'''"), "```", ""]
    return "\n".join(parts)


def _plot_name(kind: str, scheme: str, task: str) -> str:
    return f"{kind}_{safe_name(scheme)}_{safe_name(task)}.png"


# ------------------------------------------------------------------------------------------ entry
def write_report(run_dir: str | Path, document: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the evaluation report of a run into ``RUN_DIR/report/`` (every file atomically).

    Args:
        run_dir: the run folder of ``umbif evaluate``.
        document: the metrics document; default: read ``RUN_DIR/metrics.json``.

    Returns:
        The written files: ``"html"``, ``"markdown"``, ``"json"``, and one entry per plot named by its
        file stem (``"forest"``, ``"roc_kfold_idh"``, ``"reliability_loso_idh"``, ...).

    Raises:
        FileNotFoundError: no ``metrics.json`` (run ``umbif evaluate`` first).
        ValueError: the document is not an ``umbif-metrics`` v1 document or holds a non-number metric.

    Example:
        >>> paths = write_report("runs/eval")  # doctest: +SKIP
        >>> paths["html"]  # doctest: +SKIP
        PosixPath('runs/eval/report/report.html')
    """
    run_dir = Path(run_dir)
    if document is None:
        document = load_metrics(run_dir / "metrics.json")
    else:
        _check(document, "document")
    run = _Run(document)
    folder = run_dir / "report"
    plots = {
        _plot_name(kind, scheme, task): curve_plot(run.results, run.methods, run.oracle, task, scheme, kind)
        for scheme in run.schemes
        for task in run.tasks
        for kind in ("roc", "reliability")
    }
    if run.primary is not None:
        plots[FOREST_FILE] = forest_plot(document, run.primary)
    page, markdown = _render_html(run, plots), _render_md(run)  # render all before writing anything
    paths: dict[str, Path] = {}
    for name, data in plots.items():
        with atomic_write(folder / name, "wb") as handle:
            handle.write(data)
        paths[Path(name).stem] = folder / name
    for stale in folder.glob("*.png"):  # plots of methods/tasks no longer in the document
        if stale.name.startswith(_PLOT_PREFIXES) and stale.name not in plots:
            stale.unlink()
    write_json(folder / "report.json", document)
    write_text_atomic(folder / "report.md", markdown)
    write_text_atomic(folder / "report.html", page)
    return {"html": folder / "report.html", "markdown": folder / "report.md", "json": folder / "report.json", **paths}

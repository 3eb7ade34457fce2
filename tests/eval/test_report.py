"""The evaluation report: the HTML rendered by a real browser (Debian chromium, headless) shows the
numbers of metrics.json, the forest plot (loaded) and its verdict above every table, embeds its plots
and fetches nothing; the Markdown agrees; odd and partial inputs render; bad inputs fail with a
message that says what to do; the `umbif report` command."""

from __future__ import annotations

import base64
import copy
import html
import io
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from handmade_metrics import handmade_metrics
from PIL import Image
from typer.testing import CliRunner

from umbif.cli import app
from umbif.eval.report import load_metrics, write_report
from umbif.eval.summary import PREDICTION_COLUMNS, metrics_document, write_metrics

MAIN = ("accuracy", "sensitivity", "specificity", "auc")
SECONDARY = ("balanced_accuracy", "ppv", "npv", "brier")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUMBER = re.compile(r"-?\d+\.\d+")


class _Page(HTMLParser):
    """Cells (with their table's data-table attribute), images, tags and attribute values of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.cells: list[dict[str, Any]] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.attribute_values: list[str] = []
        self._table = ""
        self._cell: dict[str, Any] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.attribute_values += values.values()
        if tag == "table":
            self._table = values.get("data-table", "")
        elif tag == "td":
            self._cell = {"table": self._table, "attrs": values, "text": ""}
        elif tag == "img":
            self.images.append(values.get("src", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data


def _close(text: str, value: float) -> bool:
    """A number shown with 3 decimals is the JSON value rounded (independent of the report's formatting)."""
    return re.fullmatch(r"-?\d+\.\d{3}", text) is not None and abs(float(text) - value) <= 0.0005 + 1e-9


def _check_estimate(text: str, entry: dict[str, float | None]) -> None:
    value, low, high = entry["value"], entry["low"], entry["high"]
    if value is None:
        assert text == "—"
        return
    numbers = NUMBER.findall(text)
    expected = [value, low, high] if low is not None and high is not None else [value]
    assert len(numbers) == len(expected), text
    assert all(_close(n, v) for n, v in zip(numbers, expected, strict=True)), (text, entry)


def _attr_value(text: str) -> float | None:
    return None if text == "" else float(text)


def _check_metric_cells(cells: list[dict[str, Any]], document: dict[str, Any], metrics: tuple[str, ...]) -> None:
    """Every result x metric has exactly one cell, and its attributes and text equal the JSON."""
    names = ("data-method", "data-task", "data-scheme", "data-metric")
    cells = [c for c in cells if c["attrs"]["data-metric"] in metrics]  # not the permutation p column
    by_key = {tuple(c["attrs"][n] for n in names): c for c in cells}
    assert len(by_key) == len(cells) == len(document["results"]) * len(metrics)
    for result in document["results"]:
        for metric in metrics:
            cell = by_key[(result["method"], result["task"], result["scheme"], metric)]
            entry = result["metrics"][metric]
            for name in ("value", "low", "high"):
                assert _attr_value(cell["attrs"][f"data-{name}"]) == entry[name]
            _check_estimate(cell["text"].strip(), entry)


def _check_yardsticks(cells: list[dict[str, Any]], document: dict[str, Any]) -> None:
    """Published and oracle rows show the document's figures, once per scheme."""
    schemes = len({r["scheme"] for r in document["results"]})
    expected = [("reference", t, m, v) for t, fig in document["reference"].items() for m, v in fig.items()]
    expected += [("oracle", t, "auc", v) for t, v in document["oracle_auc"].items()]
    seen = [(c["attrs"]["data-row"], c["attrs"]["data-task"], c["attrs"]["data-metric"], c) for c in cells]
    assert len(seen) == len(expected) * schemes
    values = {(kind, task, metric): v for kind, task, metric, v in expected}
    for kind, task, metric, cell in seen:
        assert float(cell["attrs"]["data-value"]) == values[(kind, task, metric)]
        assert _close(cell["text"].strip(), values[(kind, task, metric)])


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def metrics_template() -> dict[str, Any]:
    """The realistic metrics document, built once per session; do not change it (use ``metrics_doc``)."""
    return handmade_metrics()


@pytest.fixture
def metrics_doc(metrics_template: dict[str, Any]) -> dict[str, Any]:
    """A fresh copy of the realistic metrics document (tests may change it)."""
    return copy.deepcopy(metrics_template)


@pytest.fixture
def save_metrics(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Factory: ``save_metrics(document)`` writes ``tmp_path/run/metrics.json`` and returns the run folder."""

    def _write(document: dict[str, Any], name: str = "run") -> Path:
        run_dir = tmp_path / name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False))
        return run_dir

    return _write


@pytest.fixture(scope="module")
def report(metrics_template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The report of the realistic document, written once for the read-only tests of this module."""
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "metrics.json").write_text(json.dumps(metrics_template))
    return write_report(run_dir)


@pytest.fixture(scope="module")
def browser(report: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The page as headless chromium sees it: its DOM after parsing and a screenshot, with all network
    names unresolvable (the page must not need the network)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must have it (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium")
    command = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    command += [f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND"]
    url = report["html"].resolve().as_uri()
    dom = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    shot = profile / "page.png"
    subprocess.run(
        [*command, "--window-size=1280,1600", f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    probed = profile / "probed.html"  # the page plus a script that reports what the browser laid out
    probed.write_text(report["html"].read_text().replace("</body>", f"{_PROBE}</body>"))
    probe = subprocess.run(
        [*command, "--window-size=1280,1600", "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = re.search(r'data-probe="([^"]*)"', probe.stdout)
    assert found, "the probe script did not run"
    laid_out = json.loads(html.unescape(found.group(1)))
    return {"dom": dom.stdout, "page": _Page(dom.stdout), "screenshot": shot, "layout": laid_out}


_PROBE = """<script>addEventListener("load", () => {
  const forest = document.getElementById("forest"), table = document.querySelector("table");
  const verdict = document.getElementById("verdict");
  document.body.setAttribute("data-probe", JSON.stringify({
    complete: forest.complete, naturalWidth: forest.naturalWidth, naturalHeight: forest.naturalHeight,
    width: forest.getBoundingClientRect().width, forestTop: forest.getBoundingClientRect().top,
    verdictTop: verdict.getBoundingClientRect().top, tableTop: table.getBoundingClientRect().top,
    firstImage: document.images[0] === forest}));
});</script>"""


# ---------------------------------------------------------------------------------------- browser
def test_browser_main_tables_equal_json(browser: dict[str, Any], metrics_template: dict[str, Any]) -> None:
    cells = [c for c in browser["page"].cells if c["table"] == "main"]
    _check_metric_cells([c for c in cells if "data-method" in c["attrs"]], metrics_template, MAIN)
    _check_yardsticks([c for c in cells if "data-row" in c["attrs"]], metrics_template)
    assert "published UMBIF, real multicentre data — not measured here" in browser["dom"]


def test_browser_images_are_embedded_pngs_and_nothing_is_fetched(
    browser: dict[str, Any], metrics_template: dict[str, Any]
) -> None:
    page = browser["page"]
    tasks_x_schemes = len({(r["task"], r["scheme"]) for r in metrics_template["results"]})
    assert len(page.images) == 1 + 2 * tasks_x_schemes  # the forest plot, ROC + reliability per task and scheme
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        Image.open(io.BytesIO(data)).verify()
    assert not re.search(r"https?:", browser["dom"], re.IGNORECASE)
    assert not any(v.lstrip().startswith("//") for v in page.attribute_values)  # protocol-relative links
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}


def test_browser_shows_the_loaded_forest_plot_and_verdict_above_every_table(
    browser: dict[str, Any], metrics_template: dict[str, Any]
) -> None:
    layout = browser["layout"]
    assert layout["complete"] and layout["naturalWidth"] > 0 and layout["naturalHeight"] > 0  # decoded, not broken
    assert layout["firstImage"] and layout["width"] > 600  # the first image, drawn wide
    assert layout["forestTop"] < layout["verdictTop"] < layout["tableTop"]  # plot, then verdict, then the tables
    assert layout["forestTop"] < 1600  # in the first screenful
    dom = browser["dom"]
    assert dom.index('id="forest"') < dom.index("<table")
    # The verdict per task, against the document: helped iff higher AUC and the control's DeLong p < 0.05.
    results = {(r["method"], r["task"]): r for r in metrics_template["results"] if r["scheme"] == "kfold"}
    spans = dict(re.findall(r'<span data-task="([^"]+)" data-verdict="([^"]+)">', dom))
    assert set(spans) == {t for _, t in results}
    for task, shown in spans.items():
        ours, control = results[("umbif-probe", task)], results[("umbif-random-probe", task)]
        helped = (
            ours["metrics"]["auc"]["value"] > control["metrics"]["auc"]["value"]
            and control["comparison"]["p_value"] < 0.05
        )
        assert shown == ("helped" if helped else "did-not-help")
    with Image.open(browser["screenshot"]) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    red = np.abs(pixels - np.array([0xC0, 0x39, 0x2B])).sum(axis=2) < 30  # the headline's colour
    assert red.sum() > 100  # its markers and bars are on screen


def test_browser_screenshot_is_not_blank(browser: dict[str, Any]) -> None:
    with Image.open(browser["screenshot"]) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
    assert grey.size == (1280, 1600)
    assert max(histogram) < 0.97 * sum(histogram)  # text, tables and tints cover more than 3% of the view
    assert sum(1 for count in histogram if count) > 20


# ------------------------------------------------------------------------------- html, files, md
def test_other_html_tables_equal_json(report: dict[str, Path], metrics_template: dict[str, Any]) -> None:
    page = _Page(report["html"].read_text())
    secondary = [c for c in page.cells if c["table"] == "secondary" and "data-method" in c["attrs"]]
    _check_metric_cells(secondary, metrics_template, SECONDARY)
    results = {(r["method"], r["task"], r["scheme"]): r for r in metrics_template["results"]}
    sites = [c for c in page.cells if c["table"] == "sites" and "data-metric" in c["attrs"]]
    assert len(sites) == sum(len(r["per_site"]) for r in results.values()) * len(MAIN)
    for cell in sites:
        a = cell["attrs"]
        per_site = results[(a["data-method"], a["data-task"], a["data-scheme"])]["per_site"]
        row = next(s for s in per_site if s["site"] == a["data-site"])
        expected = row[a["data-metric"]]
        assert _attr_value(a["data-value"]) == expected
        assert cell["text"] == "—" if expected is None else _close(cell["text"], expected)
    site_d = [c["attrs"] | {"text": c["text"]} for c in sites if c["attrs"]["data-site"] == "site-D"]
    codeletion_auc = {a["text"] for a in site_d if a["data-task"] == "codeletion_1p19q" and a["data-metric"] == "auc"}
    assert codeletion_auc == {"—"}  # one class at that site: AUC undefined
    delong = [c for c in page.cells if c["table"] == "delong" and "data-metric" in c["attrs"]]
    compared = [r for r in results.values() if r["comparison"]]
    assert len(delong) == 4 * len(compared)
    for cell in delong:
        a = cell["attrs"]
        expected = results[(a["data-method"], a["data-task"], a["data-scheme"])]["comparison"][a["data-metric"]]
        assert float(a["data-value"]) == expected
        small_p = a["data-metric"] == "p_value" and expected < 0.001
        assert cell["text"] == "<0.001" if small_p else _close(cell["text"], expected)
    times = {c["attrs"]["data-method"]: c for c in page.cells if c["table"] == "time" and c["attrs"]}
    for method, info in metrics_template["methods"].items():
        shown = times[method]["text"]
        if info["wall_time_s"] is None:
            assert shown == "—"
        else:
            assert abs(float(shown) - info["wall_time_s"]) <= 0.05 + 1e-9
    assert "<details>" in report["html"].read_text()


def test_files_written_and_plots_are_the_embedded_ones(
    report: dict[str, Path], metrics_template: dict[str, Any]
) -> None:
    folder = report["html"].parent
    assert folder.name == "report"
    assert json.loads(report["json"].read_text()) == metrics_template
    plots = {k: p for k, p in report.items() if k not in ("html", "markdown", "json")}
    names = [*(p.name for p in plots.values()), "report.html", "report.md", "report.json"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # and no temporary files left
    embedded = set(_Page(report["html"].read_text()).images)
    for key, path in plots.items():
        assert path.stem == key and key.split("_", 1)[0] in ("forest", "roc", "reliability")
        assert "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() in embedded


def _md_rows(markdown: str, heading: str) -> list[list[str]]:
    """Body rows of the first table under ``## heading``, cells un-escaped."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")][2:]
    split = [re.split(r"(?<!\\)\|", line)[1:-1] for line in lines]
    return [[re.sub(r"\\(.)", r"\1", cell).strip().strip("*") for cell in row] for row in split]


@pytest.mark.parametrize(
    ("scheme", "title"), [("kfold", "Patient-level stratified k-fold"), ("loso", "Leave-one-site-out")]
)
def test_markdown_main_tables_equal_json(
    report: dict[str, Path], metrics_template: dict[str, Any], scheme: str, title: str
) -> None:
    markdown = report["markdown"].read_text()
    rows = _md_rows(markdown, f"Main results: {title}")
    results = {(r["method"], r["task"]): r for r in metrics_template["results"] if r["scheme"] == scheme}
    measured = [row for row in rows if (row[1], row[0]) in results]
    assert len(measured) == len(results)
    for task, method, _, *texts in measured:
        for metric, text in zip(MAIN, texts[: len(MAIN)], strict=True):
            _check_estimate(text, results[(method, task)]["metrics"][metric])
    published = [row for row in rows if row[1].startswith("published UMBIF")]
    assert len(published) == len(metrics_template["reference"])
    for task, _, _, accuracy, _, _, auc in published:
        assert _close(accuracy, metrics_template["reference"][task]["accuracy"])
        assert _close(auc, metrics_template["reference"][task]["auc"])
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (report["markdown"].parent / link).is_file()


# ------------------------------------------------------------------------------ odd and partial
def _rendered(document: dict[str, Any], tmp_path: Path) -> tuple[_Page, str]:
    paths = write_report(tmp_path, document)
    return _Page(paths["html"].read_text()), paths["markdown"].read_text()


def _subset(document: dict[str, Any], keep) -> dict[str, Any]:
    document["results"] = [r for r in document["results"] if keep(r)]
    return document


def test_special_characters_are_escaped(metrics_doc: dict[str, Any], tmp_path: Path) -> None:
    name = '<b>x</b> & "q" | $a_b$'
    document = _subset(metrics_doc, lambda r: r["task"] == "idh" and r["scheme"] == "kfold")
    for result in document["results"]:
        if result["method"] == "radiomics-lr":
            result["method"] = name
    document["methods"][name] = document["methods"].pop("radiomics-lr")
    page, markdown = _rendered(document, tmp_path)
    assert "b" not in page.tags
    assert "&lt;b&gt;x&lt;/b&gt; &amp; &quot;q&quot;" in (tmp_path / "report/report.html").read_text()
    cells = [c for c in page.cells if c["table"] == "main" and c["attrs"].get("data-method") == name]
    assert len(cells) == len(MAIN)  # the attribute round-trips exactly
    row = next(r for r in _md_rows(markdown, "Main results: Patient-level stratified k-fold") if r[1] == name)
    assert len(row) == 3 + len(MAIN)  # the '|' in the name did not split the row


def test_partial_methods_and_one_scheme(metrics_doc: dict[str, Any], tmp_path: Path) -> None:
    document = _subset(
        metrics_doc,
        lambda r: (
            r["scheme"] == "loso"
            and r["task"] in ("idh", "mgmt")
            and (r["method"] != "cnn-resnet18" or r["task"] == "idh")
        ),
    )
    page, markdown = _rendered(document, tmp_path)
    _check_metric_cells([c for c in page.cells if c["table"] == "main" and "data-method" in c["attrs"]], document, MAIN)
    assert len(page.images) == 1 + 4  # the forest plot of the only scheme; two tasks
    assert "k-fold" not in markdown and "Leave-one-site-out" in markdown
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == sorted(
        ["forest.png", *(f"{kind}_loso_{task}.png" for kind in ("roc", "reliability") for task in ("idh", "mgmt"))]
    )


def test_rewrite_removes_plots_of_dropped_results(metrics_doc: dict[str, Any], tmp_path: Path) -> None:
    document = _subset(metrics_doc, lambda r: r["task"] == "idh")
    write_report(tmp_path, copy.deepcopy(document))
    assert (tmp_path / "report/roc_kfold_idh.png").is_file()
    write_report(tmp_path, _subset(document, lambda r: r["scheme"] == "loso"))
    assert not list((tmp_path / "report").glob("*_kfold_*.png"))
    assert not list((tmp_path / "report").glob(".*.tmp"))
    assert (tmp_path / "report/forest.png").is_file()
    write_report(tmp_path, {"format": "umbif-metrics", "version": 1})  # no results: no plot at all
    assert not list((tmp_path / "report").glob("*.png"))


def test_all_null_metrics_and_empty_curves(metrics_doc: dict[str, Any], tmp_path: Path) -> None:
    document = _subset(metrics_doc, lambda r: r["task"] == "mgmt")
    for result in document["results"]:
        result["metrics"] = {k: {"value": None, "low": None, "high": None} for k in result["metrics"]}
        result["roc"] = {"fpr": [], "tpr": []}
        result["reliability"] = {"mean_score": [], "fraction_positive": [], "count": []}
        result["per_site"] = []
        result["comparison"] = None
    document["methods"] = {m: {"description": "", "wall_time_s": None} for m in document["methods"]}
    document["oracle_auc"] = {}
    page, markdown = _rendered(document, tmp_path)
    measured = [c for c in page.cells if c["table"] in ("main", "secondary") and "data-method" in c["attrs"]]
    assert len(measured) == len(document["results"]) * 8
    assert {c["text"] for c in measured} == {"—"}
    assert {c["attrs"]["data-value"] for c in measured} == {""}
    assert "oracle" not in {c["attrs"].get("data-row") for c in page.cells}
    assert "taken to be real data" in markdown
    assert markdown.count("_Nothing to show._") == 3  # DeLong and both per-site tables


def test_empty_results_and_minimal_document(tmp_path: Path) -> None:
    page, markdown = _rendered({"format": "umbif-metrics", "version": 1}, tmp_path)
    assert not page.images and {c["table"] for c in page.cells} == {"config"}
    assert "metrics.json holds no results" in markdown


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda d: d.update(format="something-else"), ValueError, "not a metrics document"),
        (lambda d: d.update(version=2), ValueError, "version 2"),
        (lambda d: d["results"][0].pop("task"), ValueError, r"results\[0\] needs text fields"),
        (lambda d: d["results"].append(copy.deepcopy(d["results"][0])), ValueError, "repeats"),
        (lambda d: d["results"][3]["metrics"]["auc"].update(value="0.8"), ValueError, "auc.value is '0.8'"),
    ],
)
def test_bad_documents_are_refused(metrics_doc: dict[str, Any], save_metrics, change, error, match) -> None:
    change(metrics_doc)
    with pytest.raises(error, match=match):
        write_report(save_metrics(metrics_doc))


def test_missing_or_broken_metrics_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"metrics\.json not found; run `umbif evaluate` first"):
        write_report(tmp_path)
    (tmp_path / "metrics.json").write_text('{"format": "umbif-metrics", ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_metrics(tmp_path / "metrics.json")
    assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------------------------------- CLI
def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_cli_writes_report_and_prints_paths(metrics_doc: dict[str, Any], save_metrics) -> None:
    run_dir = save_metrics(_subset(metrics_doc, lambda r: r["task"] == "idh"))
    result = _invoke("report", str(run_dir))
    assert result.exit_code == 0, result.output
    printed = [Path(line) for line in result.stdout.splitlines()]
    assert printed[0] == run_dir / "report" / "report.html"
    assert len(printed) == 3 + 1 + 4 and all(p.is_file() for p in printed)  # forest, ROC/reliability of k-fold/LOSO
    assert _invoke("report", str(run_dir / "metrics.json")).exit_code == 0  # the file itself is accepted too


def test_cli_missing_metrics_is_one_clear_error(tmp_path: Path) -> None:
    result = _invoke("report", str(tmp_path))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "run `umbif evaluate` first" in lines[0]


def test_cli_help() -> None:
    result = _invoke("report", "--help")
    assert result.exit_code == 0
    assert "RUN_DIR" in result.output and "report.html" in result.output and "offline" in result.output


def test_renders_what_the_summary_writes(tmp_path: Path) -> None:
    """The contract end to end: a predictions table -> umbif.eval.summary's metrics.json -> the report."""
    rng = np.random.default_rng(0)
    rows = []
    runs = (("kfold", 0), ("kfold", 1), ("loso", 0))
    for method, task, (scheme, repeat) in itertools.product(("umbif-probe", "radiomics-lr"), ("idh", "mgmt"), runs):
        for i in range(24):
            y, site = i % 2, f"s{i % 3}"
            fold = i % 3 if scheme == "loso" else (i + repeat) % 3
            score = float(np.clip(0.5 + (0.25 if y else -0.25) + rng.normal(0, 0.2), 0, 1))
            rows.append((method, task, scheme, repeat, fold, f"e{i}", f"p{i}", site, y, score, 0.5))
    predictions = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    methods = {"umbif-probe": {"description": "probe", "wall_time_s": 1.5}, "radiomics-lr": {"description": "lr"}}
    document = metrics_document(
        predictions, methods=methods, provenance={}, reference_method="umbif-probe", n_bootstrap=50
    )
    write_metrics(document, tmp_path / "metrics.json")
    paths = write_report(tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    page = _Page(paths["html"].read_text())
    _check_metric_cells([c for c in page.cells if c["table"] == "main" and "data-method" in c["attrs"]], written, MAIN)
    assert len(page.images) == 1 + 2 * 2 * 2
    assert len([c for c in page.cells if c["table"] == "delong" and "data-metric" in c["attrs"]]) == 4 * 4

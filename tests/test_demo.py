"""`umbif demo --quick` end to end: every stage, every method in the report, a rerun reuses everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from umbif.cli import app
from umbif.demo import PROFILES, profile, run_demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    return out


def test_quick_demo_reports_every_method(demo_dir: Path) -> None:
    document = json.loads((demo_dir / "benchmark" / "metrics.json").read_text())
    methods = set(PROFILES["quick"]["methods"])
    assert set(document["methods"]) == methods
    assert {r["method"] for r in document["results"]} == methods
    assert document["oracle_auc"] and document["reference_method"] == "umbif-probe"
    html = (demo_dir / "benchmark" / "report" / "report.html").read_text()
    for method in methods:
        assert f'data-method="{method}"' in html
    assert "published UMBIF" in html and "oracle" in html
    stages = json.loads((demo_dir / "stages.json").read_text())
    expected = {"synth", "preprocess", "benchmark"} | {
        f"pretrain:{e}" for e in ("umbif", "umbif-mae", "ssl-cerebral", "ssl-imagenet")
    }
    assert set(stages) == expected and all(s["done"] for s in stages.values())
    for name in ("umbif", "umbif-mae", "ssl-cerebral", "ssl-imagenet"):
        assert (demo_dir / "models" / name / "encoder.safetensors").is_file()


def test_rerun_reuses_every_stage(demo_dir: Path) -> None:
    said: list[str] = []
    document = run_demo(demo_dir, profile("quick"), on_stage=said.append)
    assert len(said) == 7 and all("reused" in s for s in said)
    assert set(document["methods"]) == set(PROFILES["quick"]["methods"])


def test_the_control_is_in_every_profile_and_threads_are_pinned_and_recorded(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    assert all("umbif-random-probe" in profile(name).methods for name in PROFILES)
    assert json.loads((demo_dir / "demo.json").read_text())["threads"] == 2
    seen: list[int] = []
    monkeypatch.setattr("umbif.demo._run_stages", lambda *args: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    run_demo(demo_dir, profile("quick", threads=1))
    assert seen == [1] and torch.get_num_threads() == before  # pinned while it runs, restored after


def test_profiles_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown demo profile 'huge'"):
        profile("huge")
    assert profile("default").folds == 5 and profile("quick").exams < profile("default").exams < profile("full").exams

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


# ------------------------------------------------------------------ seed, generator settings, stage keys
@pytest.fixture
def fast_benchmark(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The benchmark stage without methods (the cohort stages run for real); each call's arguments kept."""
    calls: list[dict] = []

    def benchmark(table, cache, run_dir, methods, encoders, config, **_: object) -> dict:
        calls.append(
            {"exams": sorted(zip(table["exam_id"], table["cohort"], table["idh"], strict=True)), "config": config}
        )
        document = {"results": [], "methods": list(methods)}
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "metrics.json").write_text(json.dumps(document))
        return document

    monkeypatch.setattr("umbif.eval.methods.benchmark", benchmark)
    return calls


def _tiny(synth_file: Path | None = None, **overrides: object):
    """Six exams at 4 mm and no method to run: the cohort stages in a few seconds."""
    tiny = {"exams": 6, "sites": 2, "glioma_fraction": 0.7, "synth_spacing": 4.0, "workers": 1}
    return profile("quick", synth_file, methods=("radiomics-lr",), **tiny, **overrides)


def _labels(out: Path) -> list[tuple[str, str]]:
    import pandas as pd

    table = pd.read_csv(out / "synth" / "manifest.csv", dtype=str, keep_default_na=False)
    return sorted(zip(table["exam_id"], table["idh"], strict=True))


def test_seed_and_generator_settings_remake_the_cohort_and_are_recorded(
    tmp_path: Path, fast_benchmark: list[dict]
) -> None:
    out = tmp_path / "demo"
    run_demo(out, _tiny(seed=1))
    first, keys = _labels(out), json.loads((out / "stages.json").read_text())
    run_demo(out, _tiny(seed=2))  # the same folder: the stale cohort, cache and benchmark are removed
    recorded = json.loads((out / "demo.json").read_text())
    assert recorded["seed"] == 2 and recorded["synth_config"]["seed"] == 2
    assert json.loads((out / "synth" / "synth_config.json").read_text())["seed"] == 2
    assert _labels(out) != first
    assert fast_benchmark[0]["exams"] != fast_benchmark[1]["exams"]
    assert fast_benchmark[1]["config"].seed == 2 and fast_benchmark[1]["config"].repeats == 1
    assert fast_benchmark[1]["config"].permutations == 50
    again = json.loads((out / "stages.json").read_text())
    assert all(again[stage]["key"] != keys[stage]["key"] for stage in ("synth", "preprocess", "benchmark"))

    weak = tmp_path / "weak.yaml"
    weak.write_text("strength: {idh_enhancement: 0.5}\nlabel_noise: 0.0\n")
    said: list[str] = []
    run_demo(out, _tiny(weak, seed=2), on_stage=said.append)
    assert not any("reused" in text for text in said)  # another cohort: every stage again
    card = json.loads((out / "synth" / "cohort_card.json").read_text())
    assert card["associations"]["idh_enhancement"]["strength"] == 0.5
    assert card["label_model"]["label_noise"] == 0.0
    recorded = json.loads((out / "demo.json").read_text())
    assert recorded["synth"] == {"strength": {"idh_enhancement": 0.5}, "label_noise": 0.0}
    assert recorded["synth_config"]["strength"] == {"idh_enhancement": 0.5}
    assert json.loads((out / "stages.json").read_text())["synth"]["key"] != again["synth"]["key"]
    said.clear()
    run_demo(out, _tiny(weak, seed=2), on_stage=said.append)
    assert len(said) == 3 and all("reused" in text for text in said)
    assert len(fast_benchmark) == 3


def test_synth_config_file_lies_over_the_profile_and_seed_wins(tmp_path: Path) -> None:
    path = tmp_path / "cohort.json"
    path.write_text(json.dumps({"exams": 60, "seed": 9, "strength": {"prog_growth": 2.0}, "wmh": 0.25}))
    p = profile("quick", path)
    assert (p.exams, p.seed, p.sites, p.synth) == (60, 9, 3, {"strength": {"prog_growth": 2.0}})  # wmh: the default
    config = profile("quick", path, seed=4).synth_config()
    assert (config.exams, config.seed, config.spacing, config.strength) == (60, 4, 3.0, {"prog_growth": 2.0})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("idh_strength: 0.5\n", "idh_strength: unknown key"),
        ("strength: {idh_enhancment: 0.5}\n", "unknown association 'idh_enhancment'"),
        ("glioma_fraction: 1.5\n", "glioma_fraction: must be between 0 and 1"),
        ("exams: [1, 2\n", "not valid YAML"),
    ],
)
def test_cli_refuses_a_bad_synth_config_naming_file_and_key(tmp_path: Path, settings: str, message: str) -> None:
    path = tmp_path / "cohort.yaml"
    path.write_text(settings)
    args = ["demo", "--quick", "--out", str(tmp_path / "out"), "--synth-config", str(path)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert "cohort.yaml" in result.output and message in result.output
    assert not (tmp_path / "out").exists()


def test_cli_passes_seed_and_synth_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen, document = [], {"results": [], "stages": {}}
    monkeypatch.setattr("umbif.demo.run_demo", lambda out, settings, **_: seen.append(settings) or document)
    path = tmp_path / "cohort.yaml"
    path.write_text("strength: {idh_enhancement: 0.5}\n")
    args = ["demo", "--quick", "--out", str(tmp_path), "--seed", "3", "--synth-config", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen[0].seed == 3 and seen[0].synth_config().strength == {"idh_enhancement": 0.5}


def test_default_profile_has_the_power_the_issue_asks_for() -> None:
    """At least 150 labelled glioma patients (a baseline and a follow-up each) and 5 x 5-fold."""
    from umbif.data.synthetic.generate import plan_cohort

    _, truth = plan_cohort(profile().synth_config())
    labelled = truth[truth["cohort"] == "glioma"]
    assert labelled["patient_id"].nunique() >= 150 and len(labelled) == 2 * labelled["patient_id"].nunique()
    assert profile().repeats * profile().folds >= 25 and profile("full").repeats >= 5
    assert profile().permutations >= 200 and (profile("quick").repeats, profile("quick").permutations) == (1, 50)
    with pytest.raises(ValueError, match="synth: seed: set by the profile's fields"):
        profile("quick", synth={"seed": 3})

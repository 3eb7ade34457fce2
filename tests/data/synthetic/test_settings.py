"""The generator's settings from a file (``umbif synth --config``, ``umbif demo --synth-config``): the file
lies over the defaults and the options over the file, and a bad key or value is refused naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from umbif.cli import app
from umbif.config import SynthConfig
from umbif.data.synthetic.generate import cohort_card, plan_cohort
from umbif.data.synthetic.settings import load_config
from umbif.data.synthetic.sites import sites


def _write(path: Path, settings: dict) -> Path:
    path.write_text(json.dumps(settings) if path.suffix == ".json" else yaml.safe_dump(settings))
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_lies_over_defaults_and_options_over_file(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path / f"cohort{suffix}", {"exams": 20, "seed": 7, "strength": {"idh_enhancement": 0.5}})
    config = load_config(path, {"exams": 48, "seed": 0, "sites": 3, "label_noise": 0.1}, seed=5, sites=None)
    assert (config.exams, config.seed, config.sites, config.label_noise) == (20, 5, 3, 0.1)
    assert config.strength == {"idh_enhancement": 0.5}
    assert load_config(None, {"exams": 48}) == SynthConfig(exams=48)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"idh_strength": 0.5}, "idh_strength: unknown key"),
        ({"strength": {"idh_enhancment": 0.5}}, "unknown association 'idh_enhancment'; choose from idh_age"),
        ({"strength": {"idh_enhancement": -1}}, "strength.idh_enhancement: -1.0: a multiplier must be finite"),
        ({"strength": {"idh_enhancement": "strong"}}, "strength.idh_enhancement"),
        ({"label_noise": 2}, "label_noise: must be between 0 and 1"),
    ],
)
def test_bad_settings_are_refused_naming_the_file_and_key(tmp_path: Path, settings: dict, message: str) -> None:
    path = _write(tmp_path / "bad.yaml", settings)
    with pytest.raises(ValueError, match=r"bad\.yaml") as caught:
        load_config(path, {"exams": 48})
    assert message in str(caught.value)


def test_nan_strength_is_refused_by_the_generator_too() -> None:
    with pytest.raises(ValueError, match=r"strength\.idh_age: nan"):
        plan_cohort(SynthConfig(exams=8, strength={"idh_age": float("nan")}))
    with pytest.raises(ValueError, match="unknown association 'idh_agee'"):
        plan_cohort(SynthConfig(exams=8, strength={"idh_agee": 1.0}))


def test_strength_reaches_the_phenotype_and_the_card() -> None:
    """IDH-mutant tumours enhance less by 1.1 logits x strength: switched off, the gap closes."""
    gaps = {}
    for strength in (0.0, 2.0):
        config = SynthConfig(exams=1200, glioma_fraction=0.5, seed=2, strength={"idh_enhancement": strength})
        _, truth = plan_cohort(config)
        gliomas = truth[truth["true_idh_mut"].notna() & (truth["timepoint"] == 0)]
        mutant = gliomas["true_idh_mut"] == 1
        gaps[strength] = gliomas.loc[~mutant, "enh_logit"].mean() - gliomas.loc[mutant, "enh_logit"].mean()
        card = cohort_card(config, truth, sites(config.sites))
        assert card["associations"]["idh_enhancement"]["strength"] == strength
        assert card["provenance"]["config"]["strength"] == {"idh_enhancement": strength}
    # MGMT shifts enhancement too (-0.3 when methylated, commoner in IDH-mutant): about 0.12 of the gap
    assert abs(gaps[0.0] - 0.12) < 0.25 and abs(gaps[2.0] - 2.3) < 0.35, gaps
    assert not np.isclose(gaps[0.0], gaps[2.0])


def test_cli_synth_reads_the_file_and_names_a_bad_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "weak.yaml", {"exams": 6, "spacing": 4.0, "strength": {"idh_enhancement": 0.5}})
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--config", str(path), "--seed", "3"])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "synth_config.json").read_text())
    assert (written["exams"], written["seed"], written["strength"]) == (6, 3, {"idh_enhancement": 0.5})
    card = json.loads((out / "cohort_card.json").read_text())
    assert card["associations"]["idh_enhancement"]["strength"] == 0.5
    bad = _write(tmp_path / "typo.yaml", {"exams": 6, "strength": {"idh_enhancment": 0.5}})
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--config", str(bad)])
    assert result.exit_code == 1
    assert "typo.yaml" in result.output and "idh_enhancment" in result.output
    assert not (tmp_path / "x").exists()

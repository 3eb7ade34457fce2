"""`umbif synth` end to end on a tiny archive (4 mm): deterministic files whatever the worker count,
a manifest that validates and that the ingest adapters read back, site geometry in the headers,
resume, the cohort card's numbers reproduced from the ground truth, and the command line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from typer.testing import CliRunner

from umbif import SEQUENCES
from umbif.cli import app
from umbif.config import SynthConfig
from umbif.data.manifest import LABELS, Manifest, errors, validate
from umbif.data.sources.brats import ingest_brats
from umbif.data.sources.folder import ingest_folder
from umbif.data.synthetic import anatomy, cohort, lesions
from umbif.data.synthetic.generate import cohort_card, generate, observed_indicators, patient_table, plan_cohort
from umbif.data.synthetic.sites import sites

SMALL = SynthConfig(exams=16, seed=3, sites=6, spacing=4.0)


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every image and table (not the card: it records when it was made)."""
    files = [*sorted(root.glob("images/**/*.nii.gz")), root / "manifest.csv", root / "ground_truth.csv"]
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "archive"
    report = generate(SMALL, out, workers=1, preview=True)
    assert report.done == SMALL.exams and report.skipped == 0
    return out


def test_same_seed_same_files_whatever_the_workers(archive: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(SMALL, again, workers=2)
    assert _digests(again) == _digests(archive)
    other = tmp_path / "other"
    generate(SMALL.model_copy(update={"seed": 4}), other, workers=1)  # same size: files pair up by name
    first, second = _digests(archive), _digests(other)
    assert sum(first[k] == second.get(k) for k in first) == 0  # a new seed changes everything


def test_manifest_validates_and_holds_the_cohort(archive: Path) -> None:
    manifest = Manifest.read(archive / "manifest.csv")
    assert errors(validate(manifest)) == []
    table = manifest.table
    assert len(table) == SMALL.exams
    labelled = table[table["cohort"] == "glioma"]
    routine = table[table["cohort"] == "routine"]
    assert len(routine) > 2 * len(labelled) > 0  # the pretraining pool is several times larger
    assert labelled.groupby("patient_id")["timepoint"].apply(lambda t: sorted(t) == ["0", "1"]).all()
    assert (labelled["idh"] != "").all() and (labelled["mgmt"] != "").all()
    assert ((labelled["codeletion_1p19q"] != "") == (labelled["idh"] == "mutant")).all()
    assert ((labelled["outcome"] != "") == (labelled["timepoint"] == "1")).all()
    assert (labelled["seg"] != "").all() and (routine["seg"] == "").all()
    assert (routine[["idh", "mgmt", "codeletion_1p19q", "outcome"]] == "").all().all()
    assert set(table["site"]) <= {s.name for s in sites(6)}


def test_ingest_adapters_read_every_site_back(archive: Path) -> None:
    manifest = Manifest.read(archive / "manifest.csv").table
    for site_dir in sorted((archive / "images").iterdir()):
        report = ingest_folder(site_dir)
        assert report.problems == [], (site_dir.name, report.problems)
        expected = manifest[manifest["site"] == site_dir.name]
        ingested = report.manifest.table
        assert len(ingested) == len(expected)
        for sequence in (*SEQUENCES, "seg"):  # every file is placed under the same column
            found = {(site_dir / p).resolve() for p in ingested[sequence] if p}
            wanted = {(archive / p).resolve() for p in expected[sequence] if p}
            assert found == wanted, (site_dir.name, sequence)
    brats_site = archive / "images" / "site_a"
    if brats_site.is_dir():
        assert ingest_brats(brats_site).problems == []


def test_files_carry_each_sites_acquisition(archive: Path) -> None:
    manifest = Manifest.read(archive / "manifest.csv")
    site_by_name = {s.name: s for s in sites(6)}
    for exam in manifest.exams():
        site = site_by_name[exam.site]
        for sequence, path in exam.sequences.items():
            image = nib.load(path)
            geometry = site.geometry[sequence]
            assert image.get_data_dtype() == np.int16
            axes = nib.aff2axcodes(image.affine)
            assert axes == (("R", "A", "S") if geometry.orientation == "ras" else ("L", "P", "S")), (exam.site, axes)
            voxel = np.asarray(image.header.get_zooms())
            np.testing.assert_allclose(voxel, np.asarray(geometry.voxel) * SMALL.spacing, rtol=1e-5)
            oblique = not np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine[:3, :3])))
            assert oblique == (geometry.orientation == "oblique")
            data = np.asarray(image.dataobj)
            if site.skull_stripped:  # corners are air either way; skull-stripped files are 0 outside the brain
                assert (data == 0).mean() > 0.5
            else:
                assert (data == 0).mean() < 0.1  # Rician noise everywhere
        if exam.seg is not None:
            assert set(np.unique(np.asarray(nib.load(exam.seg).dataobj))) <= {0, 1, 2, 4}


def test_rerun_resumes_and_refuses_other_settings(archive: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    manifest = Manifest.read(copy / "manifest.csv").table
    exam_id, t1c = manifest.iloc[0]["exam_id"], manifest.iloc[0]["t1c"]
    (copy / t1c).unlink()  # an exam interrupted half-way
    report = generate(SMALL, copy, workers=1)
    assert (report.done, report.skipped) == (1, SMALL.exams - 1)
    assert _digests(copy) == _digests(archive), exam_id
    with pytest.raises(ValueError, match="other settings"):
        generate(SMALL.model_copy(update={"seed": 99}), copy)


def test_card_and_preview_are_written(archive: Path) -> None:
    card = json.loads((archive / "cohort_card.json").read_text())
    assert set(card["oracle_auc"]) == set(cohort.TASKS) == set(card["oracle_auc_with_age"])
    assert all(0.8 <= v <= 0.96 for v in card["oracle_auc_expected"].values()), card["oracle_auc_expected"]
    assert set(card["associations"]) == set(cohort.ASSOCIATIONS)
    assert all(a["source"] for a in card["associations"].values())
    assert card["provenance"]["seed"] == SMALL.seed and card["provenance"]["config"]["exams"] == SMALL.exams
    assert "oracle AUC" in (archive / "cohort_card.md").read_text()
    assert (archive / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def large_plan():
    """A demo-sized archive planned but not rendered (labels, phenotype, tumours)."""
    config = SynthConfig(exams=1600, seed=11)
    plans, truth = plan_cohort(config)
    return config, plans, truth


def test_card_oracle_auc_is_reproduced_from_the_ground_truth(large_plan) -> None:
    config, _, truth = large_plan
    card = cohort_card(config, truth, sites(config.sites))
    patients = patient_table(truth)
    for task in cohort.TASKS:
        text = patients[f"label_{task}"]
        keep = text != ""
        y = (text[keep] == LABELS[task][0]).astype(int)
        auc = roc_auc_score(y, patients.loc[keep, f"oracle_{task}"])
        assert card["oracle_auc"][task] == pytest.approx(auc, abs=1e-4), task
        assert 0.75 < auc < 0.97, (task, auc)  # hard but learnable


def test_label_balance_per_site_follows_each_sites_prevalence(large_plan) -> None:
    config, _, truth = large_plan
    site_list = sites(config.sites)
    balance = cohort_card(config, truth, site_list)["label_balance_per_site"]
    patients = patient_table(truth)
    counts = patients.groupby("site").size()
    assert counts.max() - counts.min() <= 1  # labelled patients dealt evenly over the sites
    for site in site_list:
        rows = patients[patients["site"] == site.name]
        mutant = int((rows["label_idh"] == "mutant").sum())
        assert balance[site.name]["idh"] == {"mutant": mutant, "wildtype": len(rows) - mutant}
        for task, classes in balance[site.name].items():
            assert min(classes.values()) > 0, (site.name, task)  # both classes at every site
        true_rate = rows["true_idh_mut"].mean()
        # binomial tolerance around the site's configured IDH prevalence
        assert abs(true_rate - site.idh_prevalence) < 4 * np.sqrt(site.idh_prevalence * 0.75 / len(rows)) + 0.02


def test_volumes_alone_stay_well_below_perfect(large_plan) -> None:
    """A classifier on the tumour's compartment volumes (what a segmentation gives) cannot read the
    labels off: well below 1.0 and below the oracle (volumes do carry IDH signal: enhancement,
    necrosis and oedema are among its documented correlates)."""
    _config, plans, truth = large_plan
    template = anatomy.load_template(4)  # volumes at 4 mm are plenty for this
    ml = template.spacing**3 / 1000.0
    rows = []
    for plan in plans:
        if plan.cohort != "glioma":
            continue
        maps = lesions.empty_maps(template.brain.shape)
        rng = np.random.default_rng(plan.patient)
        for tumour in plan.gliomas:
            lesions.draw_glioma(template, maps, tumour, rng)
        seg = lesions.segmentation(maps)
        volumes = [np.log1p((seg == label).sum() * ml) for label in (1, 2, 4)]
        rows.append({"patient_id": plan.patient_id, "timepoint": plan.timepoint, **dict(enumerate(volumes))})
    features = pd.DataFrame(rows).pivot(index="patient_id", columns="timepoint")
    patients = patient_table(truth).set_index("patient_id").loc[features.index]
    observed = observed_indicators(patients.reset_index()).set_index(features.index)
    for task in cohort.TASKS:
        keep = observed[task].notna().to_numpy()
        x = features.to_numpy()[keep] if task == "outcome" else features.xs(0, axis=1, level=1).to_numpy()[keep]
        y = observed[task].to_numpy()[keep].astype(int)
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        score = cross_val_predict(LogisticRegression(max_iter=1000), x, y, cv=folds, method="predict_proba")[:, 1]
        auc = roc_auc_score(y, score)
        oracle = roc_auc_score(y, patients[f"oracle_{task}"].to_numpy()[keep])
        assert auc < 0.9 and auc < oracle, (task, auc, oracle)


def test_enhancing_fraction_follows_the_latent_phenotype(large_plan) -> None:
    """The drawn enhancing share of the tumour core tracks the latent enhancement logit."""
    _, plans, truth = large_plan
    template = anatomy.load_template(2)
    latent, drawn = [], []
    for plan, row in zip(plans, truth.itertuples(), strict=True):
        if plan.cohort != "glioma" or plan.timepoint != 0 or len(drawn) >= 60:
            continue
        maps = lesions.empty_maps(template.brain.shape)
        lesions.draw_glioma(template, maps, plan.gliomas[0], np.random.default_rng(0))
        core = maps["enhancing"].sum() + maps["necrosis"].sum() + maps["nonenhancing"].sum()
        drawn.append(maps["enhancing"].sum() / core)
        latent.append(expit(row.enh_logit) * (1 - expit(row.nec_logit)))
    assert np.corrcoef(latent, drawn)[0, 1] > 0.6


# --------------------------------------------------------------------------------------------- CLI
def test_cli_synth_writes_an_archive(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--exams", "6", "--spacing", "4", "--seed", "1", "--sites", "4"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "oracle AUC" in result.output and (out / "manifest.csv").is_file()
    assert len(pd.read_csv(out / "manifest.csv")) == 6
    again = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "0 exams rendered, 6 already there" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sites", "9"], "sites"),
        (["--spacing", "0.1"], "spacing"),
        (["--exams", "2"], "exams"),
    ],
)
def test_cli_synth_refuses_bad_settings(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), *args], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "error:" in result.output and message in result.output

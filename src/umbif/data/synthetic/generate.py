"""``umbif synth``: plan a synthetic multi-site archive, render it in parallel, and write the
manifest, the ground truth and the cohort card.

Output folder::

    DIR/images/<site>/<exam folder>/<file>.nii.gz   NIfTI files, each site with its own naming
    DIR/manifest.csv                                accepted by `umbif manifest validate`
    DIR/ground_truth.csv                            one row per exam: latent variables, true labels,
                                                    oracle posteriors, rendered tumour volumes
    DIR/cohort_card.json, cohort_card.md            oracle AUCs, associations and sources, sites
    DIR/preview.png                                 with ``preview=True``
    DIR/.records/<exam_id>.json                     one per finished exam (resume)

Determinism: the whole plan (who is where, labels, phenotype, lesion geometry) is drawn in the
calling process from ``seed``; every exam then renders from its own seed
(``SeedSequence([seed, stream, patient, timepoint])``), so the files do not depend on the worker
count or on the order in which workers finish.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from umbif import SEQUENCES
from umbif.config import SynthConfig
from umbif.data.io import write_nifti
from umbif.data.manifest import LABELS, Manifest
from umbif.data.synthetic import anatomy, cohort, lesions, render
from umbif.data.synthetic.settings import check_strength
from umbif.data.synthetic.sites import NAMINGS, Site, sites
from umbif.provenance import provenance
from umbif.utils import atomic_write, csv_safe, json_text, write_json, write_text_atomic

KINDS = ("normal", "wmh", "infarct", "extra_axial", "glioma")
ROUTINE_AGE = {"normal": (20, 85), "wmh": (55, 90), "infarct": (50, 90), "extra_axial": (35, 85), "glioma": (25, 80)}
FOV_MM = np.array([192.0, 228.0, 192.0])  # field of view of every acquisition (covers the head)
HEAD_CENTRE_MNI = np.array([0.0, -18.0, 10.0])
# timepoint numbers as they appear in the file names of each naming style (baseline, follow-up)
TIMEPOINT_NAMES = {"brats2023": (0, 1), "upenn": (11, 21)}
FOLLOW_UP_CAVITY = 0.55  # resection cavity radius at follow-up, as a fraction of the tumour radius
# seed streams: one independent random stream per purpose
_PLAN, _SUBJECT, _EXAM = 1, 2, 3


@dataclass(frozen=True)
class ExamPlan:
    """Everything a worker needs to render one exam (picklable)."""

    exam_id: str
    patient_id: str
    patient: int  # global patient number (seeds)
    site: int  # index into the site list
    local: int  # patient number within the site (file names)
    timepoint: int  # 0 baseline, 1 follow-up
    kind: str  # one of KINDS
    cohort: str  # "glioma" (labelled) or "routine"
    age: float
    gliomas: tuple[lesions.Glioma, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)  # manifest label columns (recorded values)


@dataclass
class SynthReport:
    done: int = 0
    skipped: int = 0
    out: Path | None = None
    oracle_auc: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- plan
def _label_text(task: str, value: float) -> str:
    if np.isnan(value):
        return ""
    positive, negative = LABELS[task]
    return positive if value > 0.5 else negative


def _gliomas(template: anatomy.Template, phenotype: pd.Series, rng: np.random.Generator) -> tuple:
    """Baseline and follow-up tumours of one patient from their latent phenotype."""
    volume = float(np.exp(phenotype["log_volume"]))
    radius = (3 * volume * 1000 / (4 * np.pi)) ** (1 / 3)
    centre = lesions.pick_centre(template, bool(phenotype["frontal"]), bool(phenotype["cortical"]), rng, radius)
    # latent values are unbounded (the oracle is exact on them); drawing clips them to what a
    # tumour can look like, which loses a little information, as imaging does
    baseline = lesions.Glioma(
        centre_mm=tuple(float(c) for c in centre),
        volume_ml=volume,
        enhancing=float(expit(phenotype["enh_logit"])),
        necrosis=float(expit(phenotype["nec_logit"])),
        sharpness=float(np.clip(phenotype["sharpness"], 0, 1)),
        oedema=float(np.clip(phenotype["oedema"], 0.05, 2.0)),
        heterogeneity=float(np.clip(phenotype["heterogeneity"], 0, 1)),
        mismatch=bool(phenotype["mismatch"]),
        calcification=bool(phenotype["calcification"]),
        nodularity=1.0,  # untreated: solid enhancement
    )
    # after resection and chemoradiation: a cavity, the residual lesion grown (progression) or
    # reacting (treatment effect), its enhancement solid/nodular or feathery, maybe a new focus
    follow_up = [
        replace(
            baseline,
            volume_ml=baseline.volume_ml * float(np.exp(phenotype["growth"])),
            enhancing=float(np.clip(0.25 + 0.5 * baseline.enhancing + 0.3 * phenotype["nodularity"], 0, 0.9)),
            necrosis=baseline.necrosis * 0.5,
            mismatch=False,
            nodularity=float(np.clip(phenotype["nodularity"], 0, 1)),
            cavity=FOLLOW_UP_CAVITY,
        )
    ]
    if phenotype["new_lesion"]:
        distant = lesions.pick_centre(template, bool(rng.random() < 0.5), False, rng, radius_mm=8.0)
        follow_up.append(
            lesions.Glioma(
                centre_mm=tuple(float(c) for c in distant),
                volume_ml=float(rng.uniform(0.8, 3.0)),
                enhancing=0.85,
                necrosis=0.05,
                sharpness=0.6,
                oedema=1.0,
                heterogeneity=0.3,
                mismatch=False,
                calcification=False,
                nodularity=1.0,
            )
        )
    return (baseline,), tuple(follow_up)


def plan_cohort(config: SynthConfig) -> tuple[list[ExamPlan], pd.DataFrame]:
    """Draw the whole archive: exams to render and one ground-truth row per exam."""
    check_strength(config.strength)
    site_list = sites(config.sites)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _PLAN]))
    template = anatomy.load_template(2)  # tumour positions do not depend on the output spacing
    prevalence = np.array([s.idh_prevalence for s in site_list])

    n_patients = max(2, round(config.exams * config.glioma_fraction / 2)) if config.glioma_fraction > 0 else 0
    n_routine = config.exams - 2 * n_patients
    if n_routine < 0:
        raise ValueError(f"{config.exams} exams cannot hold {n_patients} glioma patients with two exams each")
    # labelled cohort: sites dealt round-robin so each site has its share
    glioma_sites = rng.permutation(np.arange(n_patients) % len(site_list))
    shares = np.array([0.0, config.wmh, config.infarct, config.extra_axial, config.glioma])
    shares[0] = max(0.0, 1.0 - shares.sum())  # normal brains take the rest (SynthConfig checks sum <= 1)
    routine_kinds = rng.choice(KINDS, size=n_routine, p=shares / shares.sum())
    routine_sites = rng.integers(0, len(site_list), n_routine)

    # one label/phenotype draw for every glioma (labelled cohort first, then routine gliomas)
    routine_glioma = np.flatnonzero(routine_kinds == "glioma")
    tumour_sites = np.concatenate([glioma_sites, routine_sites[routine_glioma]]).astype(np.int64)
    true = cohort.sample_labels(tumour_sites, prevalence, rng)
    phenotype = cohort.sample_phenotype(true, config.strength, rng)
    observed = cohort.observe(true, config.label_noise, rng)
    posterior = cohort.oracle_posteriors(phenotype, prevalence[tumour_sites], config.strength)

    plans: list[ExamPlan] = []
    truth: list[dict] = []
    counters = [0] * len(site_list)

    def new_patient(site: int) -> tuple[int, str]:
        counters[site] += 1
        return counters[site], f"{site_list[site].name}-{counters[site]:04d}"

    # labelled and routine patients interleaved, as in an archive, and numbered in that order
    for number in rng.permutation(n_patients + n_routine):
        if number < n_patients:
            k = int(number)
            site = int(glioma_sites[k])
            local, patient_id = new_patient(site)
            base, follow = _gliomas(template, phenotype.iloc[k], rng)
            recorded = {t: _label_text(t, observed.iloc[k][t]) for t in ("idh", "mgmt", "codeletion_1p19q")}
            for timepoint, tumours in ((0, base), (1, follow)):
                labels = dict(recorded)
                if timepoint == 1:
                    labels["outcome"] = _label_text("outcome", observed.iloc[k]["outcome"])
                age = float(phenotype.iloc[k]["age"]) + 0.3 * timepoint
                plans.append(
                    ExamPlan(
                        f"{patient_id}-{timepoint}", patient_id, len(plans), site, local, timepoint, "glioma",
                        "glioma", age, tumours, labels,
                    )
                )  # fmt: skip
                truth.append(_truth_row(plans[-1], site_list, true.iloc[k], phenotype.iloc[k], posterior.iloc[k]))
            continue
        j = int(number) - n_patients
        site, kind = int(routine_sites[j]), str(routine_kinds[j])
        local, patient_id = new_patient(site)
        tumours, row = (), ()
        if kind == "glioma":
            k = n_patients + int(np.searchsorted(routine_glioma, j))
            tumours, _ = _gliomas(template, phenotype.iloc[k], rng)
            age = float(phenotype.iloc[k]["age"])
            row = (true.iloc[k], phenotype.iloc[k], posterior.iloc[k])
        else:
            age = float(rng.uniform(*ROUTINE_AGE[kind]))
        plans.append(ExamPlan(f"{patient_id}-0", patient_id, len(plans), site, local, 0, kind, "routine", age, tumours))
        truth.append(_truth_row(plans[-1], site_list, *row))
    # patient numbers for seeds: the same for both exams of a patient
    first = {}
    plans = [replace(p, patient=first.setdefault(p.patient_id, i)) for i, p in enumerate(plans)]
    return plans, pd.DataFrame(truth)


def _truth_row(plan: ExamPlan, site_list, true=None, phenotype=None, posterior=None) -> dict:
    row = {
        "exam_id": plan.exam_id,
        "patient_id": plan.patient_id,
        "site": site_list[plan.site].name,
        "timepoint": plan.timepoint,
        "cohort": plan.cohort,
        "kind": plan.kind,
        "age": round(plan.age, 2),
    }
    for column in cohort.INDICATORS.values():
        row[f"true_{column}"] = int(true[column]) if true is not None else None
    for task in cohort.TASKS:
        row[f"label_{task}"] = plan.labels.get(task, "")
    for name in cohort.FEATURES:
        row[name] = float(phenotype[name]) if phenotype is not None else None
    for task in cohort.TASKS:
        row[f"oracle_{task}"] = float(posterior[task]) if posterior is not None else None
    return row


# ----------------------------------------------------------------------------------------- render
def _template_resolution(spacing: float) -> int:
    """The MNI grid to draw on: about as fine as the output (1 mm below 1.5 mm, 4 mm from 3.5 mm)."""
    return 1 if spacing < 1.5 else 2 if spacing < 3.5 else 4


def _seed(config_seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config_seed, stream, *keys]))


def _file_names(site: Site, plan: ExamPlan) -> tuple[str, dict[str, str]]:
    naming = NAMINGS[site.naming]
    t = TIMEPOINT_NAMES.get(site.naming, (1, 2))[plan.timepoint]
    folder = naming["folder"].format(p=plan.local, t=t)
    return folder, {key: naming[key].format(p=plan.local, t=t) for key in (*SEQUENCES, "seg")}


def _present(site: Site, rng: np.random.Generator) -> list[str]:
    """Sequences acquired at this exam: each may be missing with the site's probability, one stays."""
    present = [s for s in SEQUENCES if rng.random() >= site.missing.get(s, 0.0)]
    return present or [SEQUENCES[int(rng.integers(len(SEQUENCES)))]]


def render_exam(plan: ExamPlan, out: Path, config: SynthConfig) -> dict:
    """Render one exam's files into ``out`` and return its record (relative paths, volumes)."""
    site = sites(config.sites)[plan.site]
    template = anatomy.load_template(_template_resolution(config.spacing))
    subject = anatomy.sample_subject(plan.age, _seed(config.seed, _SUBJECT, plan.patient))
    rng = _seed(config.seed, _EXAM, plan.patient, plan.timepoint)

    tissues = anatomy.tissue_maps(template, subject)
    maps = lesions.empty_maps(template.brain.shape)
    if plan.kind == "wmh" or (plan.kind == "normal" and plan.age > 60 and rng.random() < 0.3):
        lesions.draw_wmh(template, maps, int(rng.integers(3, 16) if plan.kind == "wmh" else 2), rng)
    if plan.kind == "infarct":
        lesions.draw_infarct(template, maps, rng)
    if plan.kind == "extra_axial":
        lesions.draw_meningioma(template, maps, rng)
    for tumour in plan.gliomas:
        lesions.draw_glioma(template, maps, tumour, rng)
    vessel_map = render.vessels(template, rng)
    present = _present(site, rng)
    centre = HEAD_CENTRE_MNI + rng.normal(0, 4.0, 3)
    brain = np.clip(template.brain + (template.csf * (template.depth == 0) > 0.5), 0, 1).astype(np.float32)

    folder, names = _file_names(site, plan)
    exam_dir = out / "images" / site.name / folder
    record: dict = {"exam_id": plan.exam_id, "folder": (exam_dir.relative_to(out)).as_posix(), "files": {}}
    # what to sample on each acquisition grid; one coordinate computation per distinct grid
    wanted: dict = {}
    for sequence in present:
        signal = render.render(tissues, maps, sequence, vessel_map)
        wanted.setdefault(site.geometry[sequence], {})[sequence] = render.apply_contrast(
            signal, template.brain, site.contrast
        )
        if site.skull_stripped:
            wanted[site.geometry[sequence]]["brain"] = brain
    with_seg = bool(plan.gliomas) and plan.cohort == "glioma"  # routine archives carry no segmentations
    if with_seg:
        wanted.setdefault(site.geometry["seg"], {}).update({n: maps[n] for n in lesions.BRATS_LABELS})
    grids, sampled = {}, {}
    for geometry, volumes in wanted.items():
        grids[geometry] = render.acquisition_grid(geometry, config.spacing, centre, FOV_MM)
        values = render.sample(list(volumes.values()), template, subject, *grids[geometry], geometry)
        sampled[geometry] = dict(zip(volumes, values, strict=True))

    for sequence in present:
        geometry = site.geometry[sequence]
        image = render.finish(sampled[geometry][sequence], site, rng)
        if site.skull_stripped:
            image = np.where(sampled[geometry]["brain"] > 0.5, image, 0).astype(np.int16)
        path = exam_dir / f"{names[sequence]}.nii.gz"
        write_nifti(path, image, grids[geometry][0], compresslevel=1)
        record["files"][sequence] = path.relative_to(out).as_posix()
    if with_seg:
        geometry = site.geometry["seg"]
        seg = lesions.segmentation(sampled[geometry])
        path = exam_dir / f"{names['seg']}.nii.gz"
        write_nifti(path, seg, grids[geometry][0], compresslevel=1)
        record["files"]["seg"] = path.relative_to(out).as_posix()
        voxel_ml = abs(np.linalg.det(grids[geometry][0][:3, :3])) / 1000.0
        for name, label in (("necrotic_core", 1), ("oedema", 2), ("enhancing", 4)):
            record[f"seg_{name}_ml"] = round(float((seg == label).sum() * voxel_ml), 3)
    return record


def _init_worker() -> None:
    """Workers share the CPU: one BLAS/OpenMP thread each (NumPy is already imported here, so the
    thread pools are limited at run time; environment variables would come too late)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _record_path(out: Path, exam_id: str) -> Path:
    return out / ".records" / f"{exam_id}.json"


def _finished(out: Path, plan: ExamPlan) -> bool:
    path = _record_path(out, plan.exam_id)
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    return all((out / f).is_file() for f in record["files"].values())


def _render_and_record(plan: ExamPlan, out: Path, config: SynthConfig) -> dict:
    record = render_exam(plan, out, config)
    write_json(_record_path(out, plan.exam_id), record, indent=None)
    return record


# ------------------------------------------------------------------------------------------ write
def _check_config(out: Path, config: SynthConfig) -> None:
    """A rerun into the same folder must use the same config (it resumes); anything else is refused."""
    path = out / "synth_config.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != config.to_dict():
            raise ValueError(
                f"{out} holds a cohort generated with other settings ({path}); "
                "choose another --out, or delete the folder to regenerate"
            )
    else:
        write_text_atomic(path, json_text(config.to_dict(), sort_keys=True) + "\n")


def manifest_from_records(plans: list[ExamPlan], records: dict[str, dict], out: Path, site_list) -> Manifest:
    rows = []
    for plan in plans:
        record = records[plan.exam_id]
        row = {
            "exam_id": plan.exam_id,
            "patient_id": plan.patient_id,
            "site": site_list[plan.site].name,
            "timepoint": str(plan.timepoint),
            **record["files"],
            **plan.labels,
            "cohort": plan.cohort,
        }
        rows.append(row)
    return Manifest(pd.DataFrame(rows), out)


def generate(
    config: SynthConfig,
    out: str | Path,
    workers: int = 1,
    preview: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Generate the archive described by ``config`` into ``out`` (resumes an interrupted run).

    Returns:
        How many exams were rendered now and how many were already there, and the oracle AUCs.

    Raises:
        ValueError: inconsistent settings, or ``out`` holds a cohort made with other settings.
    """
    out = Path(out)
    plans, truth = plan_cohort(config)  # raises on inconsistent settings before anything is written
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, config)
    site_list = sites(config.sites)
    report = SynthReport(out=out)
    records: dict[str, dict] = {}
    todo = []
    for plan in plans:
        if _finished(out, plan):
            records[plan.exam_id] = json.loads(_record_path(out, plan.exam_id).read_text())
            report.skipped += 1
        else:
            todo.append(plan)
    total = len(plans)

    def progress() -> None:
        if on_progress:
            on_progress(report.done + report.skipped, total)

    progress()
    if workers <= 1:
        for plan in todo:
            records[plan.exam_id] = _render_and_record(plan, out, config)
            report.done += 1
            progress()
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            futures = {pool.submit(_render_and_record, plan, out, config): plan for plan in todo}
            for future in as_completed(futures):
                records[futures[future].exam_id] = future.result()
                report.done += 1
                progress()

    manifest = manifest_from_records(plans, records, out, site_list)
    manifest.write(out / "manifest.csv")
    volumes = pd.DataFrame([{k: v for k, v in records[p.exam_id].items() if k.startswith("seg_")} for p in plans])
    present = pd.DataFrame([{s: s in records[p.exam_id]["files"] for s in SEQUENCES} for p in plans])
    truth = pd.concat([truth, present.add_prefix("has_"), volumes], axis=1)
    with atomic_write(out / "ground_truth.csv", "w") as handle:
        csv_safe(truth).to_csv(handle, index=False)
    card = cohort_card(config, truth, site_list)
    report.oracle_auc = {task: auc for task, auc in card["oracle_auc"].items() if auc is not None}
    write_json(out / "cohort_card.json", card)
    write_text_atomic(out / "cohort_card.md", card_markdown(card))
    if preview:
        from umbif.viz import plot_synth_preview

        plot_synth_preview(manifest, truth["kind"], out / "preview.png")
    return report


# ------------------------------------------------------------------------------------------- card
def patient_table(truth: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled glioma patient (baseline row; outcome taken from the follow-up)."""
    labelled = truth[truth["cohort"] == "glioma"]
    base = labelled[labelled["timepoint"] == 0].set_index("patient_id")
    follow = labelled[labelled["timepoint"] == 1].set_index("patient_id")
    base = base.copy()
    base["label_outcome"] = follow["label_outcome"].reindex(base.index)
    return base.reset_index()


def observed_indicators(patients: pd.DataFrame) -> pd.DataFrame:
    """Recorded labels as 1 (positive class) / 0 / NaN (not recorded), per task."""
    out = {}
    for task in cohort.TASKS:
        text = patients[f"label_{task}"].fillna("").astype(str)
        out[task] = np.where(text == LABELS[task][0], 1.0, np.where(text == "", np.nan, 0.0))
    return pd.DataFrame(out, index=patients.index)


def cohort_card(config: SynthConfig, truth: pd.DataFrame, site_list) -> dict:
    patients = patient_table(truth)
    observed = observed_indicators(patients)
    posteriors = patients[[f"oracle_{t}" for t in cohort.TASKS]].set_axis(list(cohort.TASKS), axis=1)
    prevalence = np.array([s.idh_prevalence for s in site_list])
    routine_kinds = truth.loc[truth["cohort"] == "routine", "kind"].value_counts()
    balance = {}
    for site in site_list:
        rows = (patients["site"] == site.name).to_numpy()
        balance[site.name] = {
            task: {
                LABELS[task][0]: int((observed.loc[rows, task] == 1).sum()),
                LABELS[task][1]: int((observed.loc[rows, task] == 0).sum()),
            }
            for task in cohort.TASKS
        }
    site_prevalence = prevalence[patients["site"].map({s.name: i for i, s in enumerate(site_list)}).to_numpy()]
    with_age = cohort.oracle_posteriors(patients, site_prevalence, config.strength, seen=cohort.FEATURES)
    return {
        "oracle_auc": _rounded(cohort.oracle_auc(observed, posteriors)),
        "oracle_auc_expected": _rounded(cohort.expected_oracle_auc(prevalence, config.strength, config.label_noise)),
        "oracle_auc_with_age": _rounded(cohort.oracle_auc(observed, with_age)),
        "oracle_note": (
            "oracle_auc: AUC of the exact posterior P(label | site and the latent variables the images were "
            "drawn from) against the recorded labels of this cohort's patients (the best any model can reach "
            "here); null where it is undefined (the cohort's patients hold one class of the task only, as in a "
            "small cohort); oracle_auc_expected: the same on 40,000 simulated patients (the population value); "
            f"oracle_auc_with_age: the posterior that also knows {', '.join(cohort.UNSEEN)}, which shifts the "
            "labels but is in neither the images nor the manifest (no model here can see it)."
        ),
        "counts": {
            "exams": len(truth),
            "routine_exams": int((truth["cohort"] == "routine").sum()),
            "glioma_patients": len(patients),
            "glioma_exams": int((truth["cohort"] == "glioma").sum()),
            "routine_kinds": {k: int(v) for k, v in routine_kinds.items()},
            "labelled": {task: int(observed[task].notna().sum()) for task in cohort.TASKS},
        },
        "label_balance_per_site": balance,
        "label_model": {
            "idh_prevalence_per_site": {s.name: s.idh_prevalence for s in site_list},
            "p_codeleted_given_idh_mutant": cohort.P_CODEL_GIVEN_MUT,
            "p_mgmt_methylated_given_idh": {str(k): v for k, v in cohort.P_MGMT_METH.items()},
            "p_progression_given_mgmt": {str(k): v for k, v in cohort.P_PROG.items()},
            "label_noise": config.label_noise,
        },
        "features": {name: asdict(f) for name, f in cohort.FEATURES.items()},
        "associations": {
            name: {**asdict(a), "strength": config.strength.get(name, 1.0)} for name, a in cohort.ASSOCIATIONS.items()
        },
        "sites": [_site_card(s) for s in site_list],
        "template": "MNI152 2009a (nilearn): T1, grey/white-matter maps, brain mask; CSF = brain - GM - WM",
        "provenance": provenance(config.to_dict(), config.seed),
    }


def _rounded(aucs: dict[str, float]) -> dict[str, float | None]:
    """AUCs to 4 digits for the card; an undefined one (NaN) becomes None, JSON null (strict JSON has no NaN)."""
    return {task: round(v, 4) if math.isfinite(v) else None for task, v in aucs.items()}


def _site_card(site: Site) -> dict:
    card = asdict(site)
    card["geometry"] = {k: asdict(v) for k, v in site.geometry.items()}
    return card


def card_markdown(card: dict) -> str:
    """The cohort card for people: what was generated, how hard each task is, and why."""
    lines = ["# Synthetic glioma cohort: cohort card", ""]
    counts = card["counts"]
    lines += [
        f"{counts['exams']} exams: {counts['routine_exams']} routine (pretraining pool: "
        + ", ".join(f"{v} {k}" for k, v in counts["routine_kinds"].items())
        + f") and {counts['glioma_patients']} labelled glioma patients with a baseline and a follow-up exam.",
        "",
        "## Known difficulty (oracle ROC-AUC)",
        "",
        "The oracle scores each patient with the exact posterior of the label given the site and the latent "
        "variables the images were generated from; no model can beat it on this cohort. Age also shifts IDH "
        "but is in neither the images nor the manifest; the oracle that knows it is in the last column.",
        "",
        "| task | oracle AUC (this cohort) | oracle AUC (population) | labelled patients | with age (this cohort) |",
        "|---|---|---|---|---|",
    ]
    for task, value in card["oracle_auc"].items():
        here, population = (_auc_text(v) for v in (value, card["oracle_auc_expected"][task]))
        aged = _auc_text(card.get("oracle_auc_with_age", {}).get(task))
        lines.append(f"| {task} | {here} | {population} | {counts['labelled'][task]} | {aged} |")
    lines += ["", "## Imaging-genotype associations", "", "| rule | feature | when | effect x strength | source |"]
    lines.append("|---|---|---|---|---|")
    for name, a in card["associations"].items():
        lines.append(
            f"| {name} | {a['feature']} | {a['indicator']} | {a['effect']} x {a['strength']} | {a['source']} |"
        )
    lines += ["", "## Sites", "", "| site | naming | contrast | bias | noise | scale | missing | IDH prevalence |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for s in card["sites"]:
        missing = ", ".join(f"{k} {v:.0%}" for k, v in s["missing"].items()) or "none"
        lines.append(
            f"| {s['name']} | {s['naming']} | {s['contrast']} | {s['bias']} | {s['noise']} | {s['scale']} "
            f"| {missing} | {s['idh_prevalence']} |"
        )
    lines += ["", "## Label balance per site (positive / negative)", ""]
    lines.append("| site | " + " | ".join(cohort.TASKS) + " |")
    lines.append("|---" * (len(cohort.TASKS) + 1) + "|")
    for site, tasks in card["label_balance_per_site"].items():
        cells = [" / ".join(str(v) for v in counts_.values()) for counts_ in tasks.values()]
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _auc_text(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "undefined (one class)"

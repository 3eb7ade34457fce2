"""``umbif demo``: the main job end to end on the embedded synthetic cohort, in one command.

Stages (each reuses what an earlier run finished, so a rerun or a resumed run is quick)::

    synth        synthetic multi-site glioma archive + manifest        OUT/synth/
    preprocess   exam cache                                           OUT/cache/
    pretrain     UMBIF hybrid and its ablations (reconstruction only,  OUT/pretrain/<name>/ -> OUT/models/<name>/
                 contrastive only), SSL-Cerebral (tumour crops),
                 SSL-ImageNet (2D ViT on photographs, inflated)
    benchmark    every method on the same patient-level folds          OUT/benchmark/ (report/report.html)

Profiles trade size for time: ``quick`` (a smoke test, at most 3 minutes on 2 CPU cores), ``default``
(at most 15 minutes on an idle 2-core CPU), ``full`` (a larger run for a GPU).
The numbers of a CPU demo come from small, briefly pretrained models; they show the pipeline and
the comparison, not what a fully pretrained UMBIF reaches.

One ``seed`` seeds the cohort, the pretraining and the folds; ``synth`` (``--synth-config``) changes the
generator's other settings (association strengths, label noise, routine mix). Each stage is keyed on its
settings and on the keys of the stages it reads, so a rerun with another seed or cohort makes everything
again (the stale folders of a stage are removed first) and a rerun with the same settings reuses all.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from umbif.config import FrozenConfig, SynthConfig
from umbif.utils import write_json

PROFILE_NAMES = ("quick", "default", "full")
# generator settings that are profile fields: SynthConfig key -> DemoProfile field
SYNTH_FIELDS = {
    "exams": "exams",
    "seed": "seed",
    "sites": "sites",
    "spacing": "synth_spacing",
    "glioma_fraction": "glioma_fraction",
}


class DemoProfile(FrozenConfig):
    """Sizes and budgets of one demo profile (saved in OUT/demo.json)."""

    name: Literal["quick", "default", "full"] = "default"
    exams: int = 400  # synthetic exams in total: 80 routine + 160 labelled glioma patients x 2 (baseline, follow-up)
    # share of exams in labelled glioma pairs: round(400 x 0.8 / 2) = 160 patients, what the tasks score
    glioma_fraction: float = 0.8
    sites: int = 5  # synthetic sites (leave-one-site-out has one fold per site)
    synth_spacing: float = 3.0  # voxel size of the written images (mm)
    spacing: float = 4.0  # preprocessing voxel size (mm): 48^3 at 4 mm covers 192 mm, the whole brain
    shape: tuple[int, int, int] = (48, 48, 48)  # preprocessing grid (voxels): 27 patches per sequence
    preset: str = "tiny"  # UMBIF size
    # UMBIF patch edge (voxels): 8^3 at 4 mm = 32 mm tokens, 216 per sequence; a glioma spans several
    # (with 16^3 patches no token was more than a quarter tumour: ../shared/notes/learning-audit.md)
    patch_size: int = 8
    pretrain_crop: int = 32  # UMBIF pretraining crops (voxels) of the whole exams; adaptation sees the whole grid
    stats_loss: float = 0.0  # weight of the patch mean / log-std reconstruction target (docs/ablation.md)
    pretrain_steps: int = 500  # UMBIF hybrid pretraining steps
    ablation_steps: int = 100  # steps of each ablation (reconstruction only, contrastive only) and SSL-Cerebral
    cerebral_crop: int = 32  # SSL-Cerebral crop edge (voxels) around the tumour
    imagenet_steps: int = 200  # SSL-ImageNet 2D pretraining steps on photographs
    batch_size: int = 8  # pretraining batch
    lr: float = 1e-3  # pretraining peak learning rate (short runs need a high one)
    folds: int = 5  # patient-level stratified k-fold
    repeats: int = Field(default=5, ge=1)  # the k-fold repeated with new shuffles (5 x 5); methods may cap it
    permutations: int = Field(default=200, ge=0)  # label shuffles of each permutation p-value (k-fold repeat 0)
    loso: bool = True  # also leave-one-site-out
    n_bootstrap: int = 1000  # bootstrap replicates for the CIs
    finetune_epochs: int = 8  # UMBIF fine-tuning epochs per fold
    cnn_epochs: int = 6  # CNN-from-scratch epochs per fold (8 took the default demo to 15.75 min: 336 s of CNN)
    cnn_input: int = 32  # CNN input edge (voxels; the cache grid is resampled to it)
    # fine-tuning, radiomics-svm/rf run in --full: at 8^3 patches they do not fit a 15-minute CPU demo
    methods: tuple[str, ...] = (
        "umbif-probe",
        "umbif-random-probe",  # the control: the same architecture, readout and probe, untrained weights
        "umbif-mae-probe",
        "umbif-contrastive-probe",
        "ssl-cerebral-probe",
        "ssl-imagenet-probe",
        "lesion-sizes",  # the segmentation's compartment volumes alone
        "radiomics-lr",
        "cnn-resnet18",
    )
    seed: int = 0  # seeds the cohort, the pretraining and the folds (--seed): one number reruns it all
    # the generator's other settings (SynthConfig keys: strength, label_noise, routine mix; --synth-config)
    synth: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    threads: int = Field(default=2, ge=1)  # torch threads, pinned: training is bitwise reproducible only at one count
    workers: int = 2  # processes for synth and preprocess
    extra: dict[str, Any] = Field(default_factory=dict)  # free-form notes saved with the profile

    @field_validator("synth")
    @classmethod
    def _synth_settings(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        taken = sorted(set(v) & set(SYNTH_FIELDS))
        if taken:
            fields = ", ".join(SYNTH_FIELDS[key] for key in taken)
            raise ValueError(f"{', '.join(taken)}: set by the profile's fields ({fields}), not here")
        if set(SYNTH_FIELDS.values()) <= set(info.data):  # else a field above failed and is reported
            _synth_config({key: info.data[field] for key, field in SYNTH_FIELDS.items()}, v)
        return v

    def synth_config(self) -> SynthConfig:
        """The synthetic generator's settings: the profile's fields with ``synth`` laid over them."""
        return _synth_config({key: getattr(self, field) for key, field in SYNTH_FIELDS.items()}, self.synth)


def _synth_config(fields: dict[str, Any], synth: dict[str, Any]) -> SynthConfig:
    from umbif.data.synthetic.settings import load_config

    return load_config(None, fields, **synth)


PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "name": "quick",
        "exams": 48,
        "glioma_fraction": 0.75,
        "sites": 3,
        "spacing": 5.0,
        "shape": (32, 32, 32),
        "pretrain_steps": 12,
        "ablation_steps": 6,
        "cerebral_crop": 16,
        "imagenet_steps": 6,
        "batch_size": 4,
        "folds": 3,
        "repeats": 1,
        "permutations": 50,
        "n_bootstrap": 200,
        "finetune_epochs": 1,
        "cnn_epochs": 1,
        "cnn_input": 32,
        "methods": (
            "umbif-probe",
            "umbif-random-probe",
            "umbif-finetune",
            "umbif-mae-probe",
            "ssl-cerebral-probe",
            "ssl-imagenet-probe",
            "radiomics-lr",
            "cnn-resnet18",
        ),
    },
    "default": {},
    "full": {
        "name": "full",
        "exams": 800,
        "glioma_fraction": 0.5,
        "sites": 6,
        "synth_spacing": 2.0,
        "spacing": 2.0,
        "shape": (96, 96, 96),
        "preset": "small",
        "pretrain_steps": 5000,
        "ablation_steps": 5000,
        "cerebral_crop": 48,
        "imagenet_steps": 3000,
        "batch_size": 16,
        "lr": 1.5e-4,
        "finetune_epochs": 30,
        "cnn_epochs": 30,
        "cnn_input": 96,
        "patch_size": 16,  # 32 mm tokens at 2 mm, as 8^3 at 4 mm in the default profile
        "pretrain_crop": 64,
        "methods": (
            *DemoProfile().methods,
            "umbif-finetune",
            "radiomics-svm",
            "radiomics-rf",
            "umbif-random-finetune",
            "umbif-mae-finetune",
            "ssl-imagenet-finetune",
            "cnn-densenet121",
        ),
    },
}


def profile(name: str = "default", synth_file: str | Path | None = None, **overrides: Any) -> DemoProfile:
    """A named profile with fields replaced (an override that is None is not given).

    Args:
        name: quick, default or full.
        synth_file: a YAML or JSON of generator settings (SynthConfig keys, e.g. ``strength:
            {idh_enhancement: 0.5}``) laid over the profile's; ``overrides`` (e.g. ``seed``) win over it.
        overrides: DemoProfile fields.

    Raises:
        ValueError: an unknown profile, field or generator setting, or a value refused; the message names
            the file and the key.

    Example:
        >>> profile("quick", synth_file="weak_idh.yaml", seed=3).synth_config().seed  # doctest: +SKIP
        3
    """
    if name not in PROFILES:
        raise ValueError(f"unknown demo profile {name!r}; choose from {', '.join(PROFILE_NAMES)}")
    settings = {**PROFILES[name], **{key: value for key, value in overrides.items() if value is not None}}
    if synth_file is not None:
        from umbif.data.synthetic.settings import load_config

        given = {key: overrides.get(field) for key, field in SYNTH_FIELDS.items()}
        config = load_config(synth_file, DemoProfile.from_options(None, **settings).synth_config().to_dict(), **given)
        defaults = SynthConfig().to_dict()
        settings |= {field: getattr(config, key) for key, field in SYNTH_FIELDS.items()}
        settings["synth"] = {
            key: value for key, value in config.to_dict().items() if key not in SYNTH_FIELDS and value != defaults[key]
        }
    return DemoProfile.from_options(None, **settings)


class Stages:
    """Timing and completion of the demo's stages, kept in OUT/stages.json (atomic)."""

    def __init__(self, out_dir: Path, announce: Callable[[str], None]):
        self.path = out_dir / "stages.json"
        self.record: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.announce = announce

    def done(self, name: str, key: str) -> bool:
        entry = self.record.get(name, {})
        return bool(entry.get("done")) and entry.get("key") == key

    def run(self, name: str, key: str, text: str, work: Callable[[], Any], outputs: tuple[Path, ...] = ()) -> Any:
        """Run ``work`` unless stage ``name`` is done with the same ``key``; record its time.

        ``outputs`` are the stage's folders: when the stage last ran (or started) with another key they hold
        stale results, and are removed before ``work`` runs; with the same key an interrupted run resumes.
        """
        if self.done(name, key):
            self.announce(f"{text}: done earlier ({self.record[name]['seconds']:.0f} s), reused")
            return None
        if name in self.record and self.record[name].get("key") != key:
            for path in outputs:
                shutil.rmtree(path, ignore_errors=True)
        self.record[name] = {"done": False, "key": key}
        write_json(self.path, self.record)
        self.announce(text)
        started = time.perf_counter()
        result = work()
        self.record[name] = {"done": True, "key": key, "seconds": round(time.perf_counter() - started, 1)}
        write_json(self.path, self.record)
        return result


def _pretrain_config(p: DemoProfile, objective: str, steps: int, image_size: tuple[int, int, int]) -> Any:
    from umbif.train.pretrain import PretrainConfig

    return PretrainConfig.model_validate(
        {
            "model": {
                "preset": p.preset,
                "image_size": image_size,
                "patch_size": p.patch_size,
                "objective": objective,
                "stats_loss": p.stats_loss if objective != "contrastive" else 0.0,
            },
            "batch_size": p.batch_size,
            "total_steps": steps,
            "warmup_steps": max(1, steps // 10),
            "lr": p.lr,
            "seed": p.seed,
            "checkpoint_every": max(1, min(100, steps)),
            "preview_every": 0,
        }
    )


def run_demo(
    out_dir: str | Path,
    settings: DemoProfile | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the whole demo into ``out_dir``; returns the benchmark's metrics document plus ``stages``.

    Torch runs on ``threads`` threads throughout (restored afterwards): pretraining is bitwise
    reproducible only at a fixed thread count, so the same profile gives the same table on any machine.

    Example:
        >>> run_demo("work/demo", profile("quick"))                                     # doctest: +SKIP
    """
    import torch

    p = settings or profile()
    previous = torch.get_num_threads()
    torch.set_num_threads(p.threads)
    try:
        return _run_stages(Path(out_dir), p, on_stage, on_progress)
    finally:
        torch.set_num_threads(previous)


def _run_stages(
    out_dir: Path,
    p: DemoProfile,
    on_stage: Callable[[str], None] | None,
    on_progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    from umbif.config import PreprocessConfig
    from umbif.data.cache import Cache, run_preprocess
    from umbif.data.manifest import Manifest
    from umbif.data.synthetic.generate import generate
    from umbif.eval.evaluate import EvaluateConfig
    from umbif.eval.methods import benchmark, encoders_of

    out_dir.mkdir(parents=True, exist_ok=True)
    say = on_stage or (lambda text: None)
    stages = Stages(out_dir, say)
    synth = p.synth_config()
    write_json(out_dir / "demo.json", {**p.to_dict(), "synth_config": synth.to_dict()})
    stages.run(
        "synth",
        synth.fingerprint(),
        f"1/4 synthetic cohort: {synth.exams} exams from {synth.sites} sites, seed {synth.seed}",
        lambda: generate(synth, out_dir / "synth", workers=p.workers, on_progress=on_progress),
        outputs=(out_dir / "synth",),
    )
    manifest_path = out_dir / "synth" / "manifest.csv"
    manifest = Manifest.read(manifest_path)
    plan = PreprocessConfig(spacing=(p.spacing,) * 3, shape=p.shape)

    def preprocess() -> None:
        report = run_preprocess(manifest, out_dir / "cache", plan, workers=p.workers, on_progress=on_progress)
        if not report.ok:
            raise RuntimeError(f"{len(report.failures)} exams failed to preprocess; see {out_dir / 'cache'}")

    data_key = f"{synth.fingerprint()}-{plan.fingerprint()}"  # the cohort and its cache: every later key holds it
    text = f"2/4 preprocess to {p.spacing:g} mm, {p.shape} voxels"
    stages.run("preprocess", data_key, text, preprocess, outputs=(out_dir / "cache",))
    cached = Cache(out_dir / "cache").exam_ids
    encoders = {}
    for name in encoders_of(p.methods):
        encoders[name] = out_dir / "models" / name
        _pretrain_encoder(name, p, out_dir, data_key, cached, stages, on_progress)
    evaluate_config = EvaluateConfig(
        folds=p.folds,
        repeats=p.repeats,
        permutations=p.permutations,
        loso=p.loso,
        seed=p.seed,
        n_bootstrap=p.n_bootstrap,
    )
    settings = [p.methods, evaluate_config.to_dict(), _finetune_config(p).to_dict(), _cnn_settings(p)]
    trained = [stages.record[f"pretrain:{name}"]["key"] for name in encoders]
    document = stages.run(
        "benchmark",
        json.dumps([data_key, trained, *settings]),
        f"4/4 benchmark: {len(p.methods)} methods x tasks, {p.repeats} x {p.folds}-fold"
        + (" + leave-one-site-out" if p.loso else ""),
        lambda: benchmark(
            manifest.table,
            out_dir / "cache",
            out_dir / "benchmark",
            p.methods,
            encoders,
            evaluate_config,
            finetune_config=_finetune_config(p),
            baseline_settings={"cnn": _cnn_settings(p)},
            manifest_path=manifest_path,
            on_stage=say,
            on_progress=on_progress,
        ),
        outputs=(out_dir / "benchmark",),
    )
    if document is None:
        document = json.loads((out_dir / "benchmark" / "metrics.json").read_text())
    return {**document, "stages": stages.record}


def _cnn_settings(p: DemoProfile) -> dict[str, Any]:
    """CNN-from-scratch settings: full width only in the full profile (width 1 at 32^3 is ~20 s an epoch on CPU)."""
    width = 1.0 if p.name == "full" else 0.25
    return {"epochs": p.cnn_epochs, "patience": p.cnn_epochs, "input_size": p.cnn_input, "width": width, "seed": p.seed}


def _finetune_config(p: DemoProfile) -> Any:
    from umbif.adapt.finetune import FinetuneConfig

    return FinetuneConfig(epochs=p.finetune_epochs, patience=max(2, p.finetune_epochs // 3), seed=p.seed)


def _pretrain_encoder(
    name: str,
    p: DemoProfile,
    out_dir: Path,
    data_key: str,
    cached: list[str],
    stages: Stages,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Pretrain (or, for SSL-ImageNet, build) the encoder ``name`` into OUT/models/<name>; ``data_key``
    (the cohort and cache it trains on) is part of the stage's key."""
    from umbif.train.checkpoint import latest_checkpoint
    from umbif.train.export import export_encoder
    from umbif.train.pretrain import pretrain

    target = out_dir / "models" / name
    run_dir = out_dir / "pretrain" / name

    def on_step(step: int, total: int, losses: dict[str, float]) -> None:
        if on_progress is not None:
            on_progress(step, total)

    if name == "ssl-imagenet":
        from umbif.baselines.ssl_imagenet import build_ssl_imagenet_encoder
        from umbif.models.umbif import ModelConfig

        config = ModelConfig(preset=p.preset, image_size=p.shape, patch_size=p.patch_size)
        key = json.dumps([config.to_dict(), p.imagenet_steps, p.seed])
        text = f"3/4 SSL-ImageNet: 2D ViT on photographs, {p.imagenet_steps} steps, inflated to 3D"
        stages.run(
            f"pretrain:{name}",
            key,
            text,
            lambda: build_ssl_imagenet_encoder(target, config, steps=p.imagenet_steps, seed=p.seed, on_step=on_step),
            outputs=(target,),
        )
        return
    objective = {"umbif": "hybrid", "umbif-mae": "mae", "umbif-contrastive": "contrastive"}.get(name)
    if name == "ssl-cerebral":
        from umbif.baselines.ssl_cerebral import cerebral_config

        crop = (p.cerebral_crop,) * 3
        config = cerebral_config(_pretrain_config(p, "hybrid", p.ablation_steps, crop))
        text = f"3/4 SSL-Cerebral: UMBIF recipe on {p.cerebral_crop}^3 tumour crops, {p.ablation_steps} steps"
    elif objective is not None:
        steps = p.pretrain_steps if name == "umbif" else p.ablation_steps
        config = _pretrain_config(p, objective, steps, (min(p.pretrain_crop, *p.shape),) * 3)
        text = f"3/4 pretrain {name} ({objective}), {steps} steps"
    else:
        raise ValueError(f"the demo does not know how to make the encoder {name!r}")

    def work() -> None:
        pretrain(
            out_dir / "cache",
            run_dir,
            config,
            exam_ids=cached,
            resume=latest_checkpoint(run_dir) is not None,
            on_step=on_step,
        )
        export_encoder(run_dir, target)

    stages.run(f"pretrain:{name}", f"{data_key}-{config.fingerprint()}", text, work, outputs=(run_dir, target))

"""``umbif demo``: the main job end to end on the embedded synthetic cohort, in one command.

Stages (each reuses what an earlier run finished, so a rerun or a resumed run is quick)::

    synth        synthetic multi-site glioma archive + manifest        OUT/synth/
    preprocess   exam cache                                           OUT/cache/
    pretrain     UMBIF hybrid and its ablations (reconstruction only,  OUT/pretrain/<name>/ -> OUT/models/<name>/
                 contrastive only), SSL-Cerebral (tumour crops),
                 SSL-ImageNet (2D ViT on photographs, inflated)
    benchmark    every method on the same patient-level folds          OUT/benchmark/ (report/report.html)

Profiles trade size for time: ``quick`` (about a minute on 2 CPU cores; a smoke test), ``default``
(9 minutes measured on an idle 2-core CPU), ``full`` (a larger run for a GPU).
The numbers of a CPU demo come from small, briefly pretrained models; they show the pipeline and
the comparison, not what a fully pretrained UMBIF reaches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from umbif.config import FrozenConfig
from umbif.utils import write_json

PROFILE_NAMES = ("quick", "default", "full")


class DemoProfile(FrozenConfig):
    """Sizes and budgets of one demo profile (saved in OUT/demo.json)."""

    name: Literal["quick", "default", "full"] = "default"
    exams: int = 160  # synthetic exams in total (routine pool + labelled glioma pairs)
    glioma_fraction: float = 0.75  # share of exams in labelled glioma pairs (60 patients: what the tasks score)
    sites: int = 5  # synthetic sites (leave-one-site-out has one fold per site)
    synth_spacing: float = 3.0  # voxel size of the written images (mm)
    spacing: float = 4.0  # preprocessing voxel size (mm): 48^3 at 4 mm covers 192 mm, the whole brain
    shape: tuple[int, int, int] = (48, 48, 48)  # preprocessing grid (voxels): 27 patches per sequence
    preset: str = "tiny"  # UMBIF size
    patch_size: int = 16  # UMBIF patch edge (voxels)
    pretrain_steps: int = 250  # UMBIF hybrid pretraining steps
    ablation_steps: int = 100  # steps of each ablation (reconstruction only, contrastive only) and SSL-Cerebral
    cerebral_crop: int = 32  # SSL-Cerebral crop edge (voxels) around the tumour
    imagenet_steps: int = 200  # SSL-ImageNet 2D pretraining steps on photographs
    batch_size: int = 8  # pretraining batch
    lr: float = 1e-3  # pretraining peak learning rate (short runs need a high one)
    folds: int = 5  # patient-level stratified k-fold
    loso: bool = True  # also leave-one-site-out
    n_bootstrap: int = 1000  # bootstrap replicates for the CIs
    finetune_epochs: int = 8  # UMBIF fine-tuning epochs per fold
    cnn_epochs: int = 8  # CNN-from-scratch epochs per fold
    cnn_input: int = 32  # CNN input edge (voxels; the cache grid is resampled to it)
    methods: tuple[str, ...] = (
        "umbif-probe",
        "umbif-random-probe",  # the control: the same architecture and probe, untrained weights
        "umbif-finetune",
        "umbif-mae-probe",
        "umbif-contrastive-probe",
        "ssl-cerebral-probe",
        "ssl-imagenet-probe",
        "radiomics-lr",
        "radiomics-svm",
        "radiomics-rf",
        "cnn-resnet18",
    )
    seed: int = 0
    threads: int = Field(default=2, ge=1)  # torch threads, pinned: training is bitwise reproducible only at one count
    workers: int = 2  # processes for synth and preprocess
    extra: dict[str, Any] = Field(default_factory=dict)  # free-form notes saved with the profile


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
        "methods": (
            *DemoProfile().methods,
            "umbif-random-finetune",
            "umbif-mae-finetune",
            "ssl-imagenet-finetune",
            "cnn-densenet121",
        ),
    },
}


def profile(name: str = "default", **overrides: Any) -> DemoProfile:
    """A named profile, with any field replaced."""
    if name not in PROFILES:
        raise ValueError(f"unknown demo profile {name!r}; choose from {', '.join(PROFILE_NAMES)}")
    return DemoProfile.model_validate({**PROFILES[name], **overrides})


class Stages:
    """Timing and completion of the demo's stages, kept in OUT/stages.json (atomic)."""

    def __init__(self, out_dir: Path, announce: Callable[[str], None]):
        self.path = out_dir / "stages.json"
        self.record: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.announce = announce

    def done(self, name: str, key: str) -> bool:
        entry = self.record.get(name, {})
        return bool(entry.get("done")) and entry.get("key") == key

    def run(self, name: str, key: str, text: str, work: Callable[[], Any]) -> Any:
        """Run ``work`` unless stage ``name`` is done with the same ``key``; record its time."""
        if self.done(name, key):
            self.announce(f"{text}: done earlier ({self.record[name]['seconds']:.0f} s), reused")
            return None
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
            "model": {"preset": p.preset, "image_size": image_size, "patch_size": p.patch_size, "objective": objective},
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
    from umbif.config import PreprocessConfig, SynthConfig
    from umbif.data.cache import Cache, run_preprocess
    from umbif.data.manifest import Manifest
    from umbif.data.synthetic.generate import generate
    from umbif.eval.evaluate import EvaluateConfig
    from umbif.eval.methods import benchmark, encoders_of

    out_dir.mkdir(parents=True, exist_ok=True)
    say = on_stage or (lambda text: None)
    stages = Stages(out_dir, say)
    write_json(out_dir / "demo.json", p.to_dict())

    synth = SynthConfig(
        exams=p.exams, seed=p.seed, sites=p.sites, spacing=p.synth_spacing, glioma_fraction=p.glioma_fraction
    )
    stages.run(
        "synth",
        synth.fingerprint(),
        f"1/4 synthetic cohort: {p.exams} exams from {p.sites} sites",
        lambda: generate(synth, out_dir / "synth", workers=p.workers, on_progress=on_progress),
    )
    manifest_path = out_dir / "synth" / "manifest.csv"
    manifest = Manifest.read(manifest_path)
    plan = PreprocessConfig(spacing=(p.spacing,) * 3, shape=p.shape)

    def preprocess() -> None:
        report = run_preprocess(manifest, out_dir / "cache", plan, workers=p.workers, on_progress=on_progress)
        if not report.ok:
            raise RuntimeError(f"{len(report.failures)} exams failed to preprocess; see {out_dir / 'cache'}")

    stages.run("preprocess", plan.fingerprint(), f"2/4 preprocess to {p.spacing:g} mm, {p.shape} voxels", preprocess)
    cached = Cache(out_dir / "cache").exam_ids
    encoders = {}
    for name in encoders_of(p.methods):
        encoders[name] = out_dir / "models" / name
        _pretrain_encoder(name, p, out_dir, manifest, cached, stages, on_progress)
    evaluate_config = EvaluateConfig(folds=p.folds, loso=p.loso, seed=p.seed, n_bootstrap=p.n_bootstrap)
    document = stages.run(
        "benchmark",
        json.dumps([p.methods, evaluate_config.to_dict()]),
        f"4/4 benchmark: {len(p.methods)} methods x tasks, {p.folds}-fold"
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
    manifest: Any,
    cached: list[str],
    stages: Stages,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Pretrain (or, for SSL-ImageNet, build) the encoder ``name`` into OUT/models/<name>."""
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
        config = _pretrain_config(p, objective, steps, p.shape)
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

    stages.run(f"pretrain:{name}", config.fingerprint(), text, work)

"""The method registry: every method ``umbif benchmark`` and ``umbif evaluate`` can cross-validate, by name.

Methods are named by what they do:

- ``<encoder>-probe`` / ``<encoder>-finetune`` for any encoder given as ``NAME=DIR`` (``umbif``,
  ``umbif-mae``, ``umbif-contrastive``, ``ssl-imagenet``, ``ssl-cerebral`` ... are just names): the
  frozen linear probe (``umbif.adapt.probe``) or fine-tuning (``umbif.adapt.finetune``) of that encoder;
- ``<encoder>-random-probe`` / ``<encoder>-random-finetune``: the control of the same architecture with
  untrained (seeded random) weights, adapted the same way. A pretrained encoder that does not beat it
  has learned nothing;
- the baselines that need no encoder: ``radiomics-lr``, ``radiomics-svm``, ``radiomics-rf``
  (pyradiomics features in the tumour mask, ``umbif.baselines.radiomics``) and ``cnn-resnet18``,
  ``cnn-densenet121`` (MONAI 3D CNNs trained from scratch, ``umbif.baselines.cnn``).

``lesion-sizes`` (the segmentation's compartment volumes alone, ``umbif.baselines.sizes``) is the row
that shows what the mask says by itself; probes read encoders out with ``EvaluateConfig.readout``
(``lesion`` by default), except SSL-Cerebral, embedded on tumour crops as it was pretrained.

Methods that train networks or forests (``*-finetune``, ``cnn-*``, ``radiomics-rf``) run the first
k-fold repeat only (``MethodSpec.max_repeats``, :data:`EXPENSIVE_REPEATS`), so a run can repeat the
k-fold of the cheap ones (probes, radiomics-lr/svm) several times within the same budget.

Each name becomes a :class:`umbif.eval.evaluate.MethodSpec`; the harness
(:func:`umbif.eval.evaluate.run_evaluation`) builds the method only when it has folds left to run, so
the method modules are imported here, lazily, and nowhere in the harness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from umbif.eval.evaluate import Context, EvaluateConfig, Method, MethodSpec, run_evaluation

ADAPTATIONS: tuple[str, ...] = ("probe", "finetune")  # suffixes of encoder methods
RANDOM = "random"  # <encoder>-random-<adaptation>: the untrained-architecture control
RANDOM_DIR = "encoders"  # RUN/encoders/<method>/: the untrained encoders the controls are made of
EXPENSIVE_REPEATS = 1  # k-fold repeats of the methods that train networks or forests (max_repeats)
CROP_READOUT = "tumour-crop"  # the readout of an encoder pretrained on tumour crops (SSL-Cerebral)
READOUT_TEXT = {
    "lesion": "tokens pooled in the tumour core and oedema + CLS",
    "cls": "CLS token",
    CROP_READOUT: "CLS of a tumour-centred crop",
}


def readout_of(encoder_dir: str | Path, readout: str = "lesion") -> str:
    """How the probe reads an encoder out: as it was pretrained. An encoder that saw tumour crops only (its
    export records ``crop: tumour``, as SSL-Cerebral's does) is embedded on a tumour-centred box of its input
    size (``tumour-crop``); the others with ``readout``."""
    from umbif.models.io import pretraining_of

    return CROP_READOUT if pretraining_of(encoder_dir).get("crop") == "tumour" else readout


def probe_spec(
    encoder_dir: str | Path, name: str = "umbif-probe", description: str | None = None, readout: str = "lesion"
) -> MethodSpec:
    """The frozen-encoder linear probe of an exported encoder, on the exam features of ``readout``."""
    from umbif.adapt.embed import encoder_fingerprint

    encoder_dir = Path(encoder_dir)
    text = description or (
        f"{encoder_dir.name} encoder, frozen; {READOUT_TEXT[readout]}; linear probe (logistic regression, 1-SE C)"
    )
    settings = {"encoder": encoder_dir.name, "encoder_sha256": encoder_fingerprint(encoder_dir), "readout": readout}
    return MethodSpec(name, lambda ctx: _probe(ctx, encoder_dir, name, text, readout), settings)


def finetune_spec(
    encoder_dir: str | Path, finetune_config: Any = None, name: str = "umbif-finetune", description: str | None = None
) -> MethodSpec:
    """Fine-tuning an exported encoder with task heads, one model per fold."""
    from umbif.adapt.embed import encoder_fingerprint
    from umbif.adapt.finetune import FinetuneConfig

    encoder_dir = Path(encoder_dir)
    finetune_config = finetune_config or FinetuneConfig()
    text = description or f"{encoder_dir.name} encoder, fine-tuned with task heads (LLRD, early stopping)"
    settings = {
        "encoder": encoder_dir.name,
        "encoder_sha256": encoder_fingerprint(encoder_dir),
        "finetune": finetune_config.to_dict(),
    }
    return MethodSpec(
        name, lambda ctx: _finetune(ctx, encoder_dir, finetune_config, name, text), settings, EXPENSIVE_REPEATS
    )


def random_spec(
    encoder_dir: str | Path,
    adaptation: str,
    finetune_config: Any = None,
    name: str | None = None,
    seed: int = 0,
    readout: str = "lesion",
) -> MethodSpec:
    """The control: ``encoder_dir``'s architecture with untrained weights (seeded), probed or fine-tuned.

    The untrained encoder is written to ``RUN/encoders/<name>/`` when the method is built, and then
    adapted exactly as the pretrained one (same readout, same probe or fine-tuning settings).
    """
    from umbif.adapt.embed import encoder_fingerprint

    encoder_dir = Path(encoder_dir)
    name = name or f"{encoder_dir.name}-{RANDOM}-{adaptation}"
    text = f"{encoder_dir.name} architecture, untrained (random init, seed {seed}); " + (
        f"{READOUT_TEXT[readout]}; linear probe" if adaptation == "probe" else "fine-tuned with task heads"
    )
    settings: dict[str, Any] = {
        "architecture_of": encoder_dir.name,
        "architecture_of_sha256": encoder_fingerprint(encoder_dir),
        "init": "random",
        "init_seed": seed,
    }
    if adaptation == "probe":
        settings["readout"] = readout
    if adaptation == "finetune":
        from umbif.adapt.finetune import FinetuneConfig

        finetune_config = finetune_config or FinetuneConfig()
        settings["finetune"] = finetune_config.to_dict()

    def build(ctx: Context) -> Method:
        untrained = untrained_encoder(encoder_dir, ctx.run_dir / RANDOM_DIR / name, seed)
        if adaptation == "probe":
            return _probe(ctx, untrained, name, text, readout)
        return _finetune(ctx, untrained, finetune_config, name, text)

    return MethodSpec(name, build, settings, EXPENSIVE_REPEATS if adaptation == "finetune" else None)


def _probe(ctx: Context, encoder_dir: Path, name: str, description: str, readout: str) -> Method:
    from umbif.adapt.embed import embed_exams
    from umbif.adapt.probe import ProbeMethod

    exams = ctx.exam_ids()
    ctx.stage(f"{name}: embedding {len(exams)} exams with the frozen encoder ({readout} readout)")
    embeddings = embed_exams(
        encoder_dir, ctx.cache, exams, ctx.run_dir, ctx.config.batch_size, on_progress=ctx.on_progress, readout=readout
    )
    return ProbeMethod(embeddings, name, description, ctx.config.inner_folds, ctx.config.seed)


def _finetune(ctx: Context, encoder_dir: Path, config: Any, name: str, description: str) -> Method:
    from umbif.adapt.finetune import FinetuneMethod

    return FinetuneMethod(encoder_dir, ctx.cache, config, name, description)


def untrained_encoder(encoder_dir: Path, out_dir: Path, seed: int) -> Path:
    """Write ``encoder_dir``'s architecture with seeded random weights to ``out_dir`` (once)."""
    import torch

    from umbif.models.io import ENCODER_FILE, load_encoder, save_encoder
    from umbif.models.umbif import UMBIFEncoder

    if not (out_dir / ENCODER_FILE).is_file():
        config = load_encoder(encoder_dir).config
        with torch.random.fork_rng(devices=[]):  # seed the initialisation, leave the caller's RNG as it was
            torch.manual_seed(seed)
            encoder = UMBIFEncoder(config)
        save_encoder(encoder, config, out_dir)
    return out_dir


def _radiomics_spec(model: str, settings: Mapping[str, Any]) -> MethodSpec:
    def build(ctx: Context) -> Method:
        from umbif.baselines.radiomics import RadiomicsMethod, extract_features

        ctx.stage(f"radiomics-{model}: pyradiomics features of {len(ctx.exam_ids())} exams")
        features = extract_features(ctx.cache, ctx.exam_ids(), ctx.run_dir, on_progress=ctx.on_progress)
        return RadiomicsMethod(features, model=model, inner_folds=ctx.config.inner_folds, seed=ctx.config.seed)

    stored = {"baseline": "radiomics", "model": model, **settings}
    return MethodSpec(f"radiomics-{model}", build, stored, EXPENSIVE_REPEATS if model == "rf" else None)


def _cnn_spec(architecture: str, settings: Mapping[str, Any]) -> MethodSpec:
    def build(ctx: Context) -> Method:
        from umbif.baselines.cnn import CNNConfig, CNNMethod

        config = CNNConfig.model_validate({**settings, "architecture": architecture})
        return CNNMethod(ctx.cache, config)

    stored = {"baseline": "cnn", "architecture": architecture, **settings}
    return MethodSpec(f"cnn-{architecture}", build, stored, EXPENSIVE_REPEATS)


def _sizes_spec(settings: Mapping[str, Any]) -> MethodSpec:
    def build(ctx: Context) -> Method:
        from umbif.adapt.probe import ProbeMethod
        from umbif.baselines.sizes import size_features

        text = "tumour compartment volumes from the segmentation (5 log volumes); the same linear probe"
        features = size_features(ctx.cache, ctx.exam_ids())
        return ProbeMethod(features, "lesion-sizes", text, ctx.config.inner_folds, ctx.config.seed)

    return MethodSpec("lesion-sizes", build, {"baseline": "lesion-sizes", **settings})


BASELINES: dict[str, Callable[[Mapping[str, Any]], MethodSpec]] = {
    "lesion-sizes": _sizes_spec,
    "radiomics-lr": lambda s: _radiomics_spec("lr", s),
    "radiomics-svm": lambda s: _radiomics_spec("svm", s),
    "radiomics-rf": lambda s: _radiomics_spec("rf", s),
    "cnn-resnet18": lambda s: _cnn_spec("resnet18", s),
    "cnn-densenet121": lambda s: _cnn_spec("densenet121", s),
}


def encoders_of(methods: Sequence[str]) -> list[str]:
    """The encoder names the methods need, in first-use order (a ``-random-`` control needs its architecture)."""
    names = []
    for method in methods:
        encoder, _, adaptation = method.rpartition("-")
        if method in BASELINES or adaptation not in ADAPTATIONS or not encoder:
            continue
        encoder = encoder.removesuffix(f"-{RANDOM}")
        if encoder not in names:
            names.append(encoder)
    return names


def method_specs(
    methods: Sequence[str],
    encoders: Mapping[str, str | Path],
    finetune_config: Any = None,
    baseline_settings: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    readout: str = "lesion",
) -> list[MethodSpec]:
    """Turn method names into specs; unknown names and missing encoders are refused with the choices.

    Args:
        methods: names such as ``umbif-probe``, ``umbif-random-probe``, ``ssl-imagenet-probe``, ``radiomics-rf``.
        encoders: encoder name -> exported encoder folder.
        finetune_config: settings of every ``*-finetune`` method.
        baseline_settings: per baseline family ("radiomics", "cnn"), settings passed to it.
        seed: initialises the untrained encoders of the ``*-random-*`` controls.
        readout: the probes' exam features (see :func:`readout_of`); a control gets its encoder's readout.
    """
    baseline_settings = baseline_settings or {}
    specs = []
    for name in methods:
        if name in BASELINES:
            family = name.split("-")[0]
            specs.append(BASELINES[name](dict(baseline_settings.get(family, {}))))
            continue
        encoder, _, adaptation = name.rpartition("-")
        if adaptation not in ADAPTATIONS or not encoder:
            raise ValueError(f"unknown method {name!r}; choose {choices(encoders)}")
        control = encoder.endswith(f"-{RANDOM}") and encoder not in encoders
        if control:
            encoder = encoder.removesuffix(f"-{RANDOM}")
        if encoder not in encoders:
            raise ValueError(f"method {name} needs an encoder named {encoder!r}: add --encoder {encoder}=DIR")
        read = readout_of(encoders[encoder], readout)
        if control:
            specs.append(random_spec(encoders[encoder], adaptation, finetune_config, name, seed, read))
        elif adaptation == "probe":
            specs.append(probe_spec(encoders[encoder], name=name, readout=read))
        else:
            specs.append(finetune_spec(encoders[encoder], finetune_config, name=name))
    return specs


def choices(encoders: Mapping[str, Any]) -> str:
    """The method names available with these encoders, for messages and --help."""
    names = list(encoders) or ["<encoder>"]
    encoder_methods = [f"{e}-{r}{a}" for e in names for r in ("", f"{RANDOM}-") for a in ADAPTATIONS]
    return ", ".join([*encoder_methods, *BASELINES])


def benchmark(
    table: pd.DataFrame,
    cache: Any,
    run_dir: str | Path,
    methods: Sequence[str],
    encoders: Mapping[str, str | Path],
    config: EvaluateConfig | None = None,
    finetune_config: Any = None,
    baseline_settings: Mapping[str, Mapping[str, Any]] | None = None,
    splits_path: str | Path | None = None,
    manifest_path: str | Path | None = None,
    reference_method: str = "umbif-probe",
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Cross-validate ``methods`` on one manifest and cache; write metrics.json and the report.

    ``umbif benchmark`` is this function; ``umbif evaluate`` is this function with the methods of one
    encoder. Returns the metrics document. See :func:`method_specs` for the names and
    :func:`umbif.eval.evaluate.run_evaluation` for resuming.

    Args:
        table: the manifest table.
        cache: its exam cache (a :class:`umbif.data.cache.Cache` or its folder).
        run_dir: the run folder (created; a rerun reuses finished folds and methods).
        methods, encoders, finetune_config, baseline_settings: as in :func:`method_specs`.
        config: folds, repeats, bootstrap and seed (:class:`umbif.eval.evaluate.EvaluateConfig`).
        splits_path: reuse these splits (e.g. another run's ``splits.json``) so runs compare fold by fold.
        manifest_path: the manifest file (for the report and the synthetic cohort's oracle AUC).
        reference_method: the method every other is compared with (DeLong).
        on_stage, on_progress: progress callbacks.

    Example:
        >>> benchmark(manifest.table, "cache/", "runs/bench", ["umbif-probe", "umbif-random-probe", "radiomics-lr"],
        ...           {"umbif": "models/umbif"})                                   # doctest: +SKIP
    """
    config = config or EvaluateConfig()
    specs = method_specs(methods, encoders, finetune_config, baseline_settings, config.seed, config.readout)
    return run_evaluation(
        table, cache, run_dir, specs, config, splits_path, manifest_path, reference_method, on_stage, on_progress
    )

"""``umbif benchmark``: every method side by side on the same patient-level folds.

Methods are named by what they do:

- ``<encoder>-probe`` / ``<encoder>-finetune`` for any encoder given as ``NAME=DIR`` (``umbif``,
  ``umbif-mae``, ``umbif-contrastive``, ``ssl-imagenet``, ``ssl-cerebral`` ... are just names), the
  frozen linear probe or fine-tuning of that encoder;
- the baselines that need no encoder: ``radiomics-lr``, ``radiomics-svm``, ``radiomics-rf``
  (pyradiomics features in the tumour mask) and ``cnn-resnet18``, ``cnn-densenet121`` (MONAI 3D CNNs
  trained from scratch).

Each method is cross-validated by :func:`umbif.eval.evaluate.run_evaluation` (resumable method by
method and fold by fold), compared with the reference method (``umbif-probe`` by default) by DeLong
tests, and reported with its wall time and, on a synthetic cohort, the oracle AUC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from umbif.eval.evaluate import Context, EvaluateConfig, Method, MethodSpec, finetune_spec, probe_spec, run_evaluation

ADAPTATIONS: tuple[str, ...] = ("probe", "finetune")  # suffixes of encoder methods


def _radiomics_spec(model: str, settings: Mapping[str, Any]) -> MethodSpec:
    def build(ctx: Context) -> Method:
        from umbif.baselines.radiomics import RadiomicsMethod, extract_features

        ctx.stage(f"radiomics-{model}: pyradiomics features of {len(ctx.exam_ids())} exams")
        features = extract_features(ctx.cache_dir, ctx.exam_ids(), ctx.run_dir, on_progress=ctx.on_progress)
        return RadiomicsMethod(features, model=model, inner_folds=ctx.config.inner_folds, seed=ctx.config.seed)

    return MethodSpec(f"radiomics-{model}", build, {"baseline": "radiomics", "model": model, **settings})


def _cnn_spec(architecture: str, settings: Mapping[str, Any]) -> MethodSpec:
    def build(ctx: Context) -> Method:
        from umbif.baselines.cnn import CNNConfig, CNNMethod

        config = CNNConfig.model_validate({**settings, "architecture": architecture})
        return CNNMethod(ctx.cache_dir, config)

    return MethodSpec(f"cnn-{architecture}", build, {"baseline": "cnn", "architecture": architecture, **settings})


BASELINES: dict[str, Callable[[Mapping[str, Any]], MethodSpec]] = {
    "radiomics-lr": lambda s: _radiomics_spec("lr", s),
    "radiomics-svm": lambda s: _radiomics_spec("svm", s),
    "radiomics-rf": lambda s: _radiomics_spec("rf", s),
    "cnn-resnet18": lambda s: _cnn_spec("resnet18", s),
    "cnn-densenet121": lambda s: _cnn_spec("densenet121", s),
}


def method_specs(
    methods: Sequence[str],
    encoders: Mapping[str, str | Path],
    finetune_config: Any = None,
    baseline_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[MethodSpec]:
    """Turn method names into specs; unknown names and missing encoders are refused with the choices.

    Args:
        methods: names such as ``umbif-probe``, ``ssl-imagenet-probe``, ``radiomics-rf``.
        encoders: encoder name -> exported encoder folder.
        finetune_config: settings of every ``*-finetune`` method.
        baseline_settings: per baseline family ("radiomics", "cnn"), settings passed to it.
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
        if encoder not in encoders:
            raise ValueError(f"method {name} needs an encoder named {encoder!r}: add --encoder {encoder}=DIR")
        if adaptation == "probe":
            specs.append(probe_spec(encoders[encoder], name=name))
        else:
            specs.append(finetune_spec(encoders[encoder], finetune_config, name=name))
    return specs


def choices(encoders: Mapping[str, Any]) -> str:
    """The method names available with these encoders, for messages and --help."""
    encoder_methods = [f"{e}-{a}" for e in encoders for a in ADAPTATIONS] or ["<encoder>-probe", "<encoder>-finetune"]
    return ", ".join([*encoder_methods, *BASELINES])


def benchmark(
    table: pd.DataFrame,
    cache_dir: str | Path,
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

    Returns the metrics document. See :func:`method_specs` for the names and
    :func:`umbif.eval.evaluate.run_evaluation` for resuming.

    Example:
        >>> benchmark(manifest.table, "cache/", "runs/bench", ["umbif-probe", "radiomics-lr"],
        ...           {"umbif": "models/umbif"})                                   # doctest: +SKIP
    """
    specs = method_specs(methods, encoders, finetune_config, baseline_settings)
    return run_evaluation(
        table, cache_dir, run_dir, specs, config, splits_path, manifest_path, reference_method, on_stage, on_progress
    )

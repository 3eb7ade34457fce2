"""`umbif benchmark`: method names, side-by-side evaluation on one split, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from labelled_cohort import TinyCohort, build
from umbif.cli import app
from umbif.eval.evaluate import EvaluateConfig
from umbif.eval.methods import BASELINES, benchmark, method_specs
from umbif.models.io import load_encoder, save_encoder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> TinyCohort:
    return build(tmp_path_factory.mktemp("cohort"), patients=16, sites=2, seg=True)


@pytest.fixture(scope="module")
def second_encoder(cohort: TinyCohort) -> Path:
    encoder = load_encoder(cohort.encoder)
    with torch.no_grad():
        encoder.patch_embed[2].weight.mul_(-1.0)
    return save_encoder(encoder, encoder.config, cohort.encoder.parent / "other")


def test_method_names_become_specs(cohort: TinyCohort, second_encoder: Path) -> None:
    encoders = {"umbif": cohort.encoder, "other": second_encoder}
    specs = method_specs(["umbif-probe", "other-finetune", "radiomics-rf"], encoders)
    assert [s.name for s in specs] == ["umbif-probe", "other-finetune", "radiomics-rf"]
    assert specs[0].settings["encoder"] == "encoder" and specs[2].settings["model"] == "rf"
    assert {"radiomics-lr", "cnn-resnet18", "cnn-densenet121"} <= set(BASELINES)


def test_expensive_methods_run_one_k_fold_repeat(cohort: TinyCohort) -> None:
    names = ["umbif-probe", "umbif-random-probe", "umbif-finetune", "umbif-random-finetune"]
    specs = method_specs([*names, *BASELINES], {"umbif": cohort.encoder})
    capped = {s.name for s in specs if s.max_repeats == 1}
    assert capped == {"umbif-finetune", "umbif-random-finetune", "radiomics-rf", "cnn-resnet18", "cnn-densenet121"}
    assert all(s.max_repeats is None for s in specs if s.name not in capped)
    config = EvaluateConfig(repeats=5)
    finetune = next(s for s in specs if s.name == "umbif-finetune")
    assert finetune.stored_settings(config)["max_repeats"] == 1
    assert "max_repeats" not in finetune.stored_settings(EvaluateConfig(repeats=1))  # no cap in effect


@pytest.mark.parametrize(
    ("name", "message"),
    [("magic", "unknown method 'magic'; choose umbif-probe, umbif-finetune"), ("ssl-probe", "--encoder ssl=DIR")],
)
def test_unknown_methods_and_missing_encoders_are_explained(cohort: TinyCohort, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        method_specs([name], {"umbif": cohort.encoder})


def test_methods_side_by_side_and_resumed(cohort: TinyCohort, second_encoder: Path, tmp_path: Path) -> None:
    config = EvaluateConfig(tasks=("idh", "mgmt"), folds=3, loso=False, n_bootstrap=100, inner_folds=3)
    methods = ["umbif-probe", "other-probe", "radiomics-lr"]
    encoders = {"umbif": cohort.encoder, "other": second_encoder}
    document = benchmark(cohort.manifest.table, cohort.cache, tmp_path, methods, encoders, config)
    assert set(document["methods"]) == set(methods)
    assert all(document["methods"][m]["wall_time_s"] > 0 for m in methods)
    rows = {(r["method"], r["task"]): r for r in document["results"]}
    assert len(rows) == 6
    assert rows[("umbif-probe", "idh")]["comparison"] is None  # the reference itself
    comparison = rows[("radiomics-lr", "idh")]["comparison"]
    assert comparison["against"] == "umbif-probe" and 0.0 <= comparison["p_value"] <= 1.0
    assert all(0 < r["p_permutation"] <= 1 and r["n_permutations"] == 200 for r in rows.values())  # radiomics-lr too
    stages: list[str] = []
    again = benchmark(cohort.manifest.table, cohort.cache, tmp_path, methods, encoders, config, on_stage=stages.append)
    assert sum("already complete" in s for s in stages) == 3
    assert again["results"] == document["results"]


def test_cli_benchmark_needs_name_equals_dir(cohort: TinyCohort, tmp_path: Path) -> None:
    args = ["benchmark", str(cohort.manifest_path), "--cache", str(cohort.cache), "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--method", "umbif-probe", "--encoder", str(cohort.encoder)])
    assert result.exit_code == 1 and "--encoder takes NAME=DIR" in result.output


def test_encoders_of_names_each_encoder_once_and_controls_need_their_architecture() -> None:
    from umbif.eval.methods import encoders_of

    methods = ["umbif-probe", "umbif-random-finetune", "ssl-imagenet-probe", "radiomics-lr", "other-random-probe"]
    assert encoders_of(methods) == ["umbif", "ssl-imagenet", "other"]


def test_random_init_control_is_the_same_architecture_untrained(cohort: TinyCohort, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from umbif.eval.methods import RANDOM_DIR, untrained_encoder
    from umbif.models.io import ENCODER_FILE

    (spec,) = method_specs(["umbif-random-probe"], {"umbif": cohort.encoder}, seed=3)
    assert spec.name == "umbif-random-probe"
    assert spec.settings["init"] == "random" and spec.settings["init_seed"] == 3
    config = EvaluateConfig(tasks=("idh",), folds=3, loso=False, n_bootstrap=50, inner_folds=3, seed=3)
    document = benchmark(
        cohort.manifest.table, cohort.cache, tmp_path, ["umbif-random-probe"], {"umbif": cohort.encoder}, config
    )
    assert set(document["methods"]) == {"umbif-random-probe"}
    untrained_dir = tmp_path / RANDOM_DIR / "umbif-random-probe"
    untrained, trained = load_encoder(untrained_dir), load_encoder(cohort.encoder)
    assert untrained.config == trained.config
    weights, pretrained = load_file(untrained_dir / ENCODER_FILE), load_file(cohort.encoder / ENCODER_FILE)
    assert weights.keys() == pretrained.keys()
    assert not torch.equal(weights["patch_embed.0.weight"], pretrained["patch_embed.0.weight"])
    twin = load_file(untrained_encoder(cohort.encoder, tmp_path / "twin", seed=3) / ENCODER_FILE)
    other = load_file(untrained_encoder(cohort.encoder, tmp_path / "other", seed=4) / ENCODER_FILE)
    assert all(torch.equal(twin[k], weights[k]) for k in weights)  # the seed decides the weights
    assert not torch.equal(other["patch_embed.0.weight"], weights["patch_embed.0.weight"])


def test_probes_read_encoders_out_as_they_were_pretrained(cohort: TinyCohort, tmp_path: Path) -> None:
    encoder = load_encoder(cohort.encoder)  # the same weights, exported as pretrained on tumour crops
    cerebral = save_encoder(encoder, encoder.config, tmp_path / "cerebral", pretraining={"crop": "tumour"})
    encoders = {"umbif": cohort.encoder, "ssl-cerebral": cerebral}
    names = ["umbif-probe", "umbif-random-probe", "ssl-cerebral-probe", "ssl-cerebral-random-probe"]
    specs = {s.name: s for s in method_specs(names, encoders)}
    assert {n: s.settings["readout"] for n, s in specs.items()} == {
        "umbif-probe": "lesion",
        "umbif-random-probe": "lesion",  # the control gets the same readout
        "ssl-cerebral-probe": "tumour-crop",  # embedded the way it was pretrained
        "ssl-cerebral-random-probe": "tumour-crop",
    }
    assert method_specs(["umbif-probe"], encoders, readout="cls")[0].settings["readout"] == "cls"
    config = EvaluateConfig(tasks=("idh",), folds=3, loso=False, n_bootstrap=50, inner_folds=3, permutations=20)
    document = benchmark(
        cohort.manifest.table, cohort.cache, tmp_path, ["umbif-probe", "lesion-sizes"], encoders, config
    )
    rows = {r["method"]: r for r in document["results"]}
    assert set(rows) == {"umbif-probe", "lesion-sizes"} and rows["lesion-sizes"]["n_permutations"] == 20
    stores = sorted(p.name for p in (tmp_path / "embeddings").glob("*.npz"))
    assert len(stores) == 1 and stores[0].endswith("-lesion.npz")

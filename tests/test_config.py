"""Configs from a YAML file and command-line options (`FrozenConfig.from_options`), as every command builds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from umbif.config import FrozenConfig, PreprocessConfig, SynthConfig


class Inner(FrozenConfig):
    depth: int = 2  # stand-in for a nested model config
    width: int = 8


class Outer(FrozenConfig):
    inner: Inner = Inner()
    steps: int = 10
    name: str = "run"


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_options_are_laid_over_the_file_and_win(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "exams: 40\nseed: 3\nsites: 2\n")
    config = SynthConfig.from_options(path, seed=7, spacing=3.0)
    assert (config.exams, config.seed, config.sites, config.spacing) == (40, 7, 2, 3.0)  # file, option, file, option
    assert config.glioma_fraction == SynthConfig().glioma_fraction  # neither: the default


def test_none_options_were_not_given(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "exams: 40\n")
    assert SynthConfig.from_options(path, exams=None, seed=None) == SynthConfig(exams=40)
    assert SynthConfig.from_options(None, exams=None) == SynthConfig()  # no file, no option: the defaults


def test_mapping_options_merge_key_by_key(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "inner:\n  depth: 4\n  width: 16\n")
    config = Outer.from_options(path, inner={"width": 32, "depth": None}, steps=5)
    assert config == Outer(inner=Inner(depth=4, width=32), steps=5)


def test_options_are_validated_like_the_file() -> None:
    config = PreprocessConfig.from_options(None, spacing=(1.0, 1.0, 1.0), shape=(64, 64, 48))
    assert config.spacing == (1.0, 1.0, 1.0) and config.shape == (64, 64, 48)
    with pytest.raises(ValueError, match=r"PreprocessConfig: shape: .*at least 8 voxels"):
        PreprocessConfig.from_options(None, shape=(4, 4, 4))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config file .*none\.yaml does not exist"):
        SynthConfig.from_options(tmp_path / "none.yaml", exams=10)


@pytest.mark.parametrize(
    ("config", "text", "options", "message"),
    [
        (SynthConfig, "examz: 40\n", {}, r"SynthConfig \(from .*config\.yaml and the options\): examz: unknown key"),
        (SynthConfig, "", {"sites": 9}, r"sites: .*between 1 and 6, got 9"),
        (Outer, "inner:\n  dept: 3\n", {}, r"inner\.dept: unknown key"),
    ],
)
def test_bad_key_or_value_is_one_clear_error(
    tmp_path: Path, config: type[FrozenConfig], text: str, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        config.from_options(_yaml(tmp_path, text), **options)


def test_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a mapping"):
        SynthConfig.from_options(_yaml(tmp_path, "- 1\n- 2\n"))


# --------------------------------------------------------------------- pretrain's rules (PretrainConfig.lay_over)
SIZES = "model:\n  image_size: [32, 32, 32]\n  patch_size: 8\n  dim: 48\n  heads: 2\n"


def test_pretrain_preset_replaces_the_file_sizes(tmp_path: Path) -> None:
    from umbif.train.pretrain import PretrainConfig

    own = PretrainConfig.from_options(_yaml(tmp_path, SIZES), model={"preset": None, "objective": "mae"})
    assert (own.model.dim, own.model.heads, own.model.objective) == (48, 2, "mae")
    preset = PretrainConfig.from_options(_yaml(tmp_path, SIZES), model={"preset": "small", "objective": None})
    assert (preset.model.dim, preset.model.heads) == (384, 6)
    assert preset.model.image_size == (32, 32, 32) and preset.model.patch_size == 8  # not sizes a preset sets


@pytest.mark.parametrize(
    ("text", "steps", "warmup"),
    [
        ("", 2, 1),  # at least one step of warm-up
        ("", 50, 5),  # a tenth
        ("", 5000, 100),  # at most 100
        ("warmup_steps: 7\n", 50, 7),  # the file's own warm-up stays
        ("", None, 100),  # no --steps: the default
    ],
)
def test_pretrain_steps_bring_a_warm_up(tmp_path: Path, text: str, steps: int | None, warmup: int) -> None:
    from umbif.train.pretrain import PretrainConfig

    config = PretrainConfig.from_options(_yaml(tmp_path, text), total_steps=steps)
    assert config.warmup_steps == warmup

"""Typed, frozen configs. Each default carries a comment; configs load from YAML and are saved
beside every output (see ``umbif.provenance``)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The keys a YAML config file sets (no defaults filled in), checked to be a mapping.

    Raises:
        FileNotFoundError: ``path`` is not a file (missing, or a folder).
        ValueError: not UTF-8 text, not valid YAML, or not a mapping; the message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"config file {path} {what}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file (byte {err.start} is not UTF-8); give a YAML config") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


class FrozenConfig(BaseModel):
    """Base for configs: immutable, unknown keys rejected (a typo in YAML is an error, not ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """Load a config from a YAML file; missing keys take their defaults.

        Raises:
            FileNotFoundError: ``path`` is not a file.
            ValueError: the file is not a YAML mapping, or a key or value the config refuses (each one named).
        """
        return cls._validated(read_yaml(path), f" (from {path})")

    @classmethod
    def from_options(cls, path: str | Path | None = None, **options: Any) -> Self:
        """The config of a command: the YAML file at ``path`` (if any) with the command-line options laid over it.

        An option that is None was not given: the file's value (or the default) stays. An option that is a
        mapping is laid over the file's mapping key by key (``model={"objective": "mae"}`` keeps the file's
        other model keys). Subclasses adjust the merge by overriding :meth:`lay_over`.

        Raises:
            FileNotFoundError: ``path`` is given but is not a file.
            ValueError: a key the config does not have, or a value it refuses; the message names each one.

        Example:
            >>> SynthConfig.from_options("configs/synth.yaml", exams=40, seed=None).exams  # doctest: +SKIP
            40
        """
        settings = read_yaml(path) if path is not None else {}
        source = f" (from {path} and the options)" if path is not None else ""
        return cls._validated(cls.lay_over(settings, options), source)

    @classmethod
    def _validated(cls, settings: dict[str, Any], source: str) -> Self:
        """The config of ``settings``; pydantic's errors become one ``ValueError`` naming each key."""
        try:
            return cls.model_validate(settings)
        except ValidationError as err:
            problems = "; ".join(_describe(error) for error in err.errors())
            raise ValueError(f"{cls.__name__}{source}: {problems}") from None

    @classmethod
    def lay_over(cls, settings: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """The merge of :meth:`from_options`: ``settings`` (the file's keys) with every option that is not
        None laid over them, mappings key by key. A config with rules of its own overrides this."""
        return _lay_over(settings, options)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Stable short hash of the config's values (key order does not matter)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _lay_over(settings: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(settings)
    for key, value in options.items():
        if isinstance(value, Mapping):
            below = merged.get(key)
            merged[key] = _lay_over(below if isinstance(below, Mapping) else {}, value)
        elif value is not None:
            merged[key] = value
    return merged


def _describe(error: ErrorDetails) -> str:
    """One pydantic error as ``field.sub: message``; unknown keys say so plainly."""
    where = ".".join(str(part) for part in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key (check its spelling; a typo is not ignored)"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


MAX_GRID_AXIS = 512  # longest output grid axis in voxels (512^3 float32 x 4 sequences is 2 GiB already)
MAX_INPUT_VOXELS = 1024**3  # the largest max_voxels allowed: one float32 input volume is then 4 GiB


class PreprocessConfig(FrozenConfig):
    """How an exam becomes a cache entry. Every field changes the output, so all of them enter the
    cache fingerprint: change one and the affected exams are rebuilt."""

    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # output voxel size in mm (RAS axes)
    shape: tuple[int, int, int] = (96, 96, 96)  # output grid, cropped/padded around the brain centre
    max_voxels: int = 512 * 512 * 512  # refuse input volumes larger than this (corrupt headers)
    min_spacing_mm: float = 0.1  # refuse voxel sizes below this (header in metres/microns?)
    max_spacing_mm: float = 12.0  # refuse voxel sizes (slice thickness) above this
    nonfinite: str = "error"  # voxels that are NaN/inf: "error" quarantines the exam, "zero" sets them to 0
    zero_outside_mask: bool = True  # set voxels outside the brain mask to 0 after z-scoring
    min_overlap: float = 0.5  # a sequence must cover this fraction of the reference field of view

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(x) for x in v) or min(v) <= 0:
            raise ValueError(f"spacing must be positive, finite millimetres, got {v}")
        if max(v) > 20.0:
            raise ValueError(f"spacing must be at most 20 mm per axis, got {v}")
        return v

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 8:
            raise ValueError(f"shape must be at least 8 voxels per axis, got {v}")
        if max(v) > MAX_GRID_AXIS:
            raise ValueError(f"shape must be at most {MAX_GRID_AXIS} voxels per axis, got {v}")
        return v

    @field_validator("max_voxels")
    @classmethod
    def _voxel_limit(cls, v: int) -> int:
        if not 1 <= v <= MAX_INPUT_VOXELS:
            raise ValueError(f"max_voxels must be between 1 and {MAX_INPUT_VOXELS} (1024^3), got {v}")
        return v

    @field_validator("min_spacing_mm", "max_spacing_mm")
    @classmethod
    def _spacing_limit(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"must be a positive, finite number of millimetres, got {v}")
        return v

    @field_validator("min_overlap")
    @classmethod
    def _overlap_fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"min_overlap must be between 0 and 1, got {v}")
        return v

    @model_validator(mode="after")
    def _spacing_range(self) -> PreprocessConfig:
        if self.min_spacing_mm > self.max_spacing_mm:
            raise ValueError(
                f"min_spacing_mm ({self.min_spacing_mm}) must not exceed max_spacing_mm ({self.max_spacing_mm})"
            )
        return self

    @field_validator("nonfinite")
    @classmethod
    def _nonfinite_policy(cls, v: str) -> str:
        if v not in ("error", "zero"):
            raise ValueError(f"nonfinite must be 'error' or 'zero', got {v!r}")
        return v


class AliasConfig(FrozenConfig):
    """Extra names for the canonical sequences and masks, added to the built-in alias table.

    Example YAML::

        aliases:
          t1c: [mprage_gd, t1_post]
          flair: [dark_fluid]
        ignore: [adc, dwi, swi]
    """

    aliases: dict[str, list[str]] = Field(default_factory=dict)  # canonical name -> extra aliases
    ignore: list[str] = Field(default_factory=list)  # names to skip silently (e.g. ADC, DWI maps)


MAX_SYNTH_EXAMS = 100_000  # a synthetic cohort larger than this is a typo (the plan alone would not fit in memory)


class SynthConfig(FrozenConfig):
    """The synthetic multi-site glioma cohort (``umbif synth``); saved in its cohort card."""

    exams: int = 400  # total exams: routine pretraining pool + labelled glioma pairs
    seed: int = 0  # everything follows from it; the worker count does not matter
    sites: int = 5  # number of sites (1-6), each with its own scanner and naming conventions
    spacing: float = 2.0  # base voxel size in mm of the written images (sites scale it, e.g. thick slices)
    glioma_fraction: float = 0.25  # share of exams that belong to the labelled glioma cohort (2 per patient)
    label_noise: float = 0.03  # probability that a recorded label is flipped
    strength: dict[str, float] = Field(default_factory=dict)  # association name -> multiplier (default 1)
    # routine exams: share of each finding (normal brains take the rest)
    wmh: float = 0.25  # white-matter hyperintensities
    infarct: float = 0.1  # chronic infarct
    extra_axial: float = 0.08  # meningioma-like extra-axial mass
    glioma: float = 0.12  # glioma without labels

    @field_validator("exams")
    @classmethod
    def _enough_exams(cls, v: int) -> int:
        if not 4 <= v <= MAX_SYNTH_EXAMS:
            raise ValueError(f"exams must be between 4 and {MAX_SYNTH_EXAMS}, got {v}")
        return v

    @field_validator("glioma_fraction", "label_noise", "wmh", "infarct", "extra_axial", "glioma")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"must be between 0 and 1, got {v}")
        return v

    @field_validator("sites")
    @classmethod
    def _site_count(cls, v: int) -> int:
        if not 1 <= v <= 6:
            raise ValueError(f"sites must be between 1 and 6, got {v}")
        return v

    @model_validator(mode="after")
    def _routine_mix(self) -> SynthConfig:
        if self.wmh + self.infarct + self.extra_axial + self.glioma > 1.0:
            raise ValueError("wmh + infarct + extra_axial + glioma (shares of the routine pool) must not exceed 1")
        return self

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v: float) -> float:
        if not 0.5 <= v <= 4.0:
            raise ValueError(f"spacing must be between 0.5 and 4 mm, got {v}")
        return v

"""The synthetic generator's settings from a file: one loader for ``umbif synth --config`` and
``umbif demo --synth-config``, and the check of association strengths that
:class:`~umbif.config.SynthConfig` cannot make (the association names live here, in ``cohort``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from umbif.config import SynthConfig, read_yaml
from umbif.data.synthetic import cohort


def load_config(
    path: str | Path | None = None, defaults: Mapping[str, Any] | None = None, **options: Any
) -> SynthConfig:
    """The generator's settings: ``defaults``, the YAML (or JSON) file at ``path`` laid over them, and every
    option that is not None laid over both. ``umbif synth --config`` and ``umbif demo --synth-config`` load here.

    Args:
        path: a file of :class:`~umbif.config.SynthConfig` keys (any subset), or None.
        defaults: settings the file may change (the demo's profile: exams, seed, sites, spacing, ...).
        options: settings that win over the file (command-line options; None = not given).

    Raises:
        FileNotFoundError: ``path`` is given but is not a file.
        ValueError: a key SynthConfig does not have, a value it refuses, or an unknown association in
            ``strength``; the message names the file and each key.

    Example:
        >>> load_config("my_cohort.yaml", {"exams": 48}, seed=3).strength  # doctest: +SKIP
        {'idh_enhancement': 0.5}
    """
    written = read_yaml(path) if path is not None else {}
    below = {key: value for key, value in (defaults or {}).items() if key not in written}  # the file wins
    config = SynthConfig.from_options(path, **SynthConfig.lay_over(below, options))
    try:
        check_strength(config.strength)
    except ValueError as err:
        raise ValueError(f"SynthConfig{f' (from {path})' if path is not None else ''}: {err}") from None
    return config


def check_strength(strength: Mapping[str, float]) -> None:
    """Refuse a multiplier for an association the generator does not have (a typo would do nothing) or
    one that is negative or not finite (0 switches an association off)."""
    unknown = sorted(set(strength) - set(cohort.ASSOCIATIONS))
    if unknown:
        raise ValueError(
            f"strength: unknown association {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(cohort.ASSOCIATIONS)} (docs/synth.md)"
        )
    bad = [f"strength.{name}: {value}" for name, value in strength.items() if not 0.0 <= value < math.inf]
    if bad:
        raise ValueError(f"{'; '.join(bad)}: a multiplier must be finite and not negative (0 switches it off)")

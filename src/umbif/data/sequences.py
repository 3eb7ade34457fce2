"""The one alias table that maps the names real data sets give their files to umbif's canonical
sequences (t1, t1c, t2, flair) and to the two mask kinds (``brain_mask``, tumour ``seg``).

A file name is split into tokens at ``_``, ``-``, ``.`` and spaces; runs of neighbouring tokens are
joined and looked up case-insensitively, the end of the name first (``BraTS2021_00000_t1ce`` ->
``t1ce`` -> t1c), then anywhere (``UCSF-PDGM-0004_T1c_bias`` -> ``t1c``). Longer runs win over
shorter ones (``T2_FLAIR`` is FLAIR, not T2). A name that matches two different targets at the
same rank is ambiguous and is reported, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from umbif import SEQUENCES

MASK_KINDS: tuple[str, ...] = ("brain_mask", "seg")
TARGETS: tuple[str, ...] = SEQUENCES + MASK_KINDS

# Built-in aliases, written as data sets spell them; lookup ignores case and separators.
# Sources: BraTS 2021 (t1, t1ce, t2, flair, seg), BraTS 2023 (t1n, t1c, t2w, t2f, seg), UCSF-PDGM
# (T1, T1c, T2, FLAIR), RSNA-MICCAI MGMT (T1w, T1wCE, T2w, FLAIR), UPENN-GBM (T1, T1GD, T2, FLAIR,
# segm), LUMIERE/EGD (CT1, T1, T2, FLAIR), and common scanner series names.
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w", "t1pre", "t1native", "t1precontrast"),
    "t1c": ("t1c", "t1ce", "t1gd", "ct1", "t1wce", "t1post", "t1postcontrast", "t1contrast", "t1cgd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2flair", "t2wflair"),
    # UCSF-PDGM calls its skull-stripping mask "brain_segmentation"; it must not fall through to "segmentation"
    "brain_mask": ("mask", "brainmask", "skullstrip", "skullstripmask", "brainsegmentation"),
    # "tumor_mask" must beat the brain-mask alias "mask": longer matches win
    "seg": (
        "seg",
        "segm",
        "segmentation",
        "tumorseg",
        "tumorsegmentation",
        "tumoursegmentation",
        "tumormask",
        "tumourmask",
        "label",
    ),
}
# Name tokens always skipped: UCSF-PDGM's brain_parenchyma_segmentation is a tissue map, not a tumour seg.
DEFAULT_IGNORE: tuple[str, ...] = ("parenchyma",)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
_SPLIT = re.compile(r"[_\-. ]+")


def _key(name: str) -> str:
    """Lookup key: lower case, separators removed (``T1-GD`` and ``t1_gd`` both become ``t1gd``)."""
    return "".join(_SPLIT.split(name.lower()))


def nifti_stem(path: str | Path) -> str | None:
    """File name without its NIfTI suffix, or None when the file is not NIfTI."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


@dataclass(frozen=True)
class AliasTable:
    """Maps lookup keys to a canonical target; build with :func:`alias_table`."""

    lookup: Mapping[str, str]
    ignore: frozenset[str] = field(default_factory=frozenset)

    def classify(self, stem: str) -> str | None:
        """Canonical target of a file stem, or None when no alias matches.

        Raises:
            ValueError: the stem matches two different targets equally well.
        """
        tokens = [t for t in _SPLIT.split(stem.lower()) if t]
        n = len(tokens)
        longest = max((len(k) for k in self.lookup), default=0)
        # rank 0: runs that end the name, rank 1: runs anywhere; longer runs first within a rank
        for ends_name in (True, False):
            for width in range(n, 0, -1):
                starts = [n - width] if ends_name else range(n - width + 1)
                hits = set()
                for start in starts:
                    key = "".join(tokens[start : start + width])
                    if len(key) <= longest and key in self.lookup:
                        hits.add(self.lookup[key])
                if len(hits) > 1:
                    raise ValueError(f"'{stem}' matches several of {sorted(hits)}")
                if hits:
                    return hits.pop()
        return None

    def is_ignored(self, stem: str) -> bool:
        tokens = {t for t in _SPLIT.split(stem.lower()) if t}
        return bool(tokens & self.ignore) or _key(stem) in self.ignore


def alias_table(extra: Mapping[str, Iterable[str]] | None = None, ignore: Iterable[str] = ()) -> AliasTable:
    """The built-in aliases plus ``extra`` ones (``{"t1c": ["mprage_gd"]}``); ``ignore`` adds to ``DEFAULT_IGNORE``.

    Raises:
        ValueError: an extra alias names an unknown target or already belongs to another target.
    """
    lookup: dict[str, str] = {}
    merged: dict[str, list[str]] = {t: list(a) for t, a in DEFAULT_ALIASES.items()}
    for target, names in (extra or {}).items():
        if target not in TARGETS:
            raise ValueError(f"unknown alias target {target!r}; use one of {', '.join(TARGETS)}")
        merged[target].extend(names)
    for target, names in merged.items():
        for name in names:
            key = _key(name)
            if lookup.get(key, target) != target:
                raise ValueError(f"alias {name!r} is given for both {lookup[key]} and {target}")
            lookup[key] = target
    return AliasTable(lookup=lookup, ignore=frozenset(_key(i) for i in (*DEFAULT_IGNORE, *ignore)))


@dataclass
class ExamFiles:
    """What was found for one exam: canonical target -> file, and what could not be placed."""

    files: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # human-readable, one per unplaced/ambiguous file


def assign_files(paths: Iterable[Path], table: AliasTable) -> ExamFiles:
    """Place the NIfTI files of one exam folder onto canonical targets.

    Non-NIfTI files are skipped quietly (JSON sidecars, DICOM leftovers); NIfTI files that match
    nothing, match ambiguously, or compete for the same target are reported and left out.
    """
    found = ExamFiles()
    claims: dict[str, list[Path]] = {}
    for path in sorted(paths):
        stem = nifti_stem(path)
        if stem is None or table.is_ignored(stem):
            continue
        try:
            target = table.classify(stem)
        except ValueError as err:
            found.problems.append(f"{path.name}: ambiguous name ({err}); rename it or add an alias")
            continue
        if target is None:
            found.problems.append(f"{path.name}: no sequence recognised in the name; add an alias if it is one")
            continue
        claims.setdefault(target, []).append(path)
    for target, claimed in claims.items():
        if len(claimed) == 1:
            found.files[target] = claimed[0]
        else:
            names = ", ".join(p.name for p in claimed)
            found.problems.append(f"{target}: several files match ({names}); none used, keep one")
    return found

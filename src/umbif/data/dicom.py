"""DICOM ingest: walk a tree of DICOM files, group them into studies and series, recognise T1 / T1c /
T2 / FLAIR from the headers, convert the chosen series to NIfTI with checked geometry, and
pseudonymise on the way.

::

    ROOT/**/any files  ->  OUT/<patient pseudonym>/<exam pseudonym>/{t1,t1c,t2,flair}.nii.gz
                           OUT/series.csv: every series and what became of it (and why)
                           manifest rows: exam_id, patient_id (keyed pseudonyms), site, timepoint (days)

Per series, in this order, the first reason that applies is reported and the series is left out:
not MR, enhanced multi-frame, derived (ImageType DERIVED/SECONDARY), localizer, too few slices;
then :func:`classify` (other and ambiguous series are listed, not converted); then
:func:`~umbif.data.dicom_io.stack_slices` refuses stacks that are not one regular volume (mixed
orientations, repeated positions, non-uniform spacing such as a missing slice, gantry tilt). Several
usable series of one sequence in a study are resolved by :class:`SeriesRules` ``duplicates`` and
reported.

Read top to bottom: the rules (:class:`SeriesRules`), :func:`classify`, then the ingest that groups,
screens, chooses and converts series. It works from the header table (:mod:`umbif.data.dicom_scan`: every
file's header read once, in parallel and in shards) and converts the patients of one shard
(:func:`ingest_dicom`); :func:`merge_dicom` joins the shards. Reading the files themselves (headers, slice
order and geometry, pixel data) is :mod:`umbif.data.dicom_io`.

Nothing that identifies a patient leaves this module: patient ids become keyed hashes
(:mod:`umbif.data.pseudonym`), study dates become days since the patient's first exam, and names,
birth dates, accession numbers and UIDs are read only to group files and to find them again in free
text (the table keeps keyed hashes of them). Files are named by :class:`~umbif.data.pseudonym.PathNamer`
(relative to their exam's folder, which the exam pseudonym names; a name holding an identifier, a date or a
UID becomes a keyed hash), series by exam pseudonym, SeriesNumber and SeriesDescription (withheld when it
holds an identifier of any file read, a date or a UID). The site is what the caller says, never a folder
name.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import field_validator, model_validator

from umbif.config import FrozenConfig
from umbif.data.cache import Shard
from umbif.data.dicom_io import (
    Acquisition,
    ConversionJob,
    GeometryError,
    Slice,
    SliceHeader,
    Stack,
    conversion_fingerprint,
    convert_exams,
    stack_slices,
)
from umbif.data.dicom_scan import GEOMETRY, SCAN_KEY, SERIES_COLUMNS, Archive, Part, check_folders, load_archive
from umbif.data.pseudonym import PathNamer, Pseudonymiser, Withheld, day_offsets
from umbif.data.sources.common import IngestReport, manifest_from_rows
from umbif.utils import json_text

ENHANCED_MR = frozenset({"1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4"})
LOCALIZER_MAX_SLICES = 5  # a series in several orientations with at most this many slices each is a localizer
Progress = Callable[[str, int, int], None]  # (stage, done, total)
DEFAULT_SITE = "site"  # site of every exam when none is given: ROOT's folder name may name a patient
WITHHELD = "<withheld: contains an identifier>"  # what is shown for a description that holds an identifier


# -------------------------------------------------------------------------------------------- rules
@functools.lru_cache(maxsize=64)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _check_regex(pattern: str) -> str:
    try:
        _regex(pattern)
    except re.error as err:
        raise ValueError(f"not a valid regular expression: {pattern!r} ({err})") from err
    return pattern


def _words(*words: str) -> str:
    """Regex matching any of ``words`` not glued to other letters (digits, ``_`` and spaces separate)."""
    return r"(?<![a-z])(?:" + "|".join(words) + r")(?![a-z])"


class SequenceRule(FrozenConfig):
    """How one sequence is recognised: words in the series' names, and the TR/TE/TI it is acquired with."""

    names: str  # regex searched (any case) in "SeriesDescription | ProtocolName | SequenceName"
    not_names: str = ""  # regex that vetoes a names match (T1-FLAIR is T1-weighted, so FLAIR vetoes "t1")
    tr_ms: tuple[float | None, float | None] = (None, None)  # RepetitionTime (min, max); None: no bound
    te_ms: tuple[float | None, float | None] = (None, None)  # EchoTime (min, max)
    ti_ms: tuple[float | None, float | None] = (None, None)  # InversionTime (min, max); none in the header = 0

    @field_validator("names", "not_names")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_regex(value)

    def named(self, text: str) -> bool:
        return bool(_regex(self.names).search(text)) and not (self.not_names and _regex(self.not_names).search(text))

    def timed(self, acquisition: Acquisition) -> bool:
        """Whether TR, TE and TI fall in this rule's ranges; False when TR or TE is unknown."""
        if acquisition.tr is None or acquisition.te is None:
            return False
        values = (acquisition.tr, acquisition.te, acquisition.ti or 0.0)
        bounds = (self.tr_ms, self.te_ms, self.ti_ms)
        return all(
            (lo is None or v >= lo) and (hi is None or v <= hi) for v, (lo, hi) in zip(values, bounds, strict=True)
        )


class SeriesRules(FrozenConfig):
    """How series are classified and chosen; load your own with ``SeriesRules.from_yaml`` (docs/dicom.md).

    Regexes are searched in the lower-cased ``SeriesDescription | ProtocolName | SequenceName``.
    """

    t1: SequenceRule = SequenceRule(  # T1-weighted: SE/TSE, MPRAGE, SPGR/BRAVO, TFE, VIBE; T1c with contrast
        names=r"(?<![a-z0-9])t1|mp-?2?rage|spgr|bravo|tfl3d|vibe|" + _words("tfe"),
        tr_ms=(None, 3000.0),
        te_ms=(None, 30.0),
        ti_ms=(None, 1300.0),
    )
    t2: SequenceRule = SequenceRule(  # T2-weighted (T2* and STIR are "other")
        names=r"(?<![a-z0-9])t2",
        not_names=r"flair|dark.?fluid|tirm|(?<![a-z0-9])t2f(?![a-z])",
        tr_ms=(2000.0, None),
        te_ms=(70.0, None),
        ti_ms=(None, 100.0),
    )
    flair: SequenceRule = SequenceRule(  # T2-FLAIR; "T1 FLAIR" (GE) is T1-weighted
        names=r"flair|dark.?fluid|tirm|(?<![a-z0-9])t2f(?![a-z])",
        not_names=r"(?<![a-z0-9])t1",
        tr_ms=(4000.0, None),
        te_ms=(50.0, None),
        ti_ms=(1500.0, 3500.0),
    )
    other: str = _words(  # series that are none of the four, whatever else their names say
        r"dwi|diff[a-z]*|adc|trace|dti|tensor|ep_b\d*|epfid|perf[a-z]*|dsc|dce|p?c?asl|bold|fmri|rest",
        r"swi|swan|susc[a-z]*|t2\s?\*|t2\s?star|hemo|gre_?field[a-z]*|field\s?map[a-z]*",
        r"tof|angio|mra|mrv|venogra[a-z]*|spectro[a-z]*|mrs|csi|svs|cine|flow|stir|pd|mip|sub|map|maps",
    )
    other_scanning_sequences: tuple[str, ...] = ("EP",)  # ScanningSequence values that make a series "other"
    localizer: str = _words(r"localizer|localiser|loc|scout|survey|3.?plane|tri.?pilot|aahead[a-z]*|pilot")
    contrast: str = (  # words that mean a contrast agent was given
        _words(r"post|gd|gad[a-z]*|contrast|kontrast|km|ce|mdc")
        + r"|\+\s?(?:c|gd|contrast)(?![a-z])|(?<![a-z])c\+|(?<![a-z0-9])t1w?ce?(?![a-z])"
    )
    no_contrast: str = _words(  # words that mean none was; they win over contrast words in the same name
        r"pre(?:[\s_-]?(?:contrast|gd|c))?|nativ|native|plain|non[\s_-]?contrast|no[\s_-]?contrast",
        r"w/?o(?:[\s_-]?(?:contrast|gd|c))?|without(?:[\s_-]?(?:contrast|gd|km))?|ohne[\s_-]?km",
    )
    skip_derived: bool = True  # ImageType DERIVED or SECONDARY (reformats, maps, MIPs) is not acquired data
    duplicates: Literal["prefer", "none"] = "prefer"  # several series of a sequence in a study: keep the
    # preferred one (pre-contrast for T2/FLAIR, then finest voxels, then the latest repeat) or none; reported
    min_slices: int = 3  # fewer slices is not a brain volume (single images, scouts)

    @field_validator("other", "localizer", "contrast", "no_contrast")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_regex(value)

    @model_validator(mode="before")
    @classmethod
    def _complete_rules(cls, data: Any) -> Any:
        """A sequence rule given in part (only ``names``, say) keeps the built-in values of the rest."""
        if isinstance(data, dict):
            data = dict(data)
            for name in ("t1", "t2", "flair"):
                if isinstance(data.get(name), dict):
                    data[name] = cls.model_fields[name].default.model_dump() | data[name]
        return data


# ----------------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class Classification:
    """What a series is: ``sequence`` set for t1/t1c/t2/flair, else ``kind`` says other or ambiguous."""

    kind: Literal["sequence", "other", "ambiguous"]
    reason: str
    sequence: str | None = None
    contrast: bool = False  # contrast words or ContrastBolusAgent; pre-contrast T2/FLAIR is preferred


def classify(acquisition: Acquisition, rules: SeriesRules | None = None) -> Classification:
    """Classify a series as t1, t1c, t2, flair, other or ambiguous from its headers.

    Names first: each rule's ``names`` regex (minus ``not_names``). Two names at once is ambiguous.
    One name whose TR/TE/TI fit another rule is ambiguous too; fitting no rule's timing is fine.
    Without a name, the timing alone decides when exactly one rule fits. A T1 with contrast evidence
    (words or ContrastBolusAgent, unless a no-contrast word says otherwise) is t1c; contradicting
    evidence on a T1 is ambiguous.

    Example:
        >>> classify(Acquisition("AX T1 POST GD", tr=550, te=9)).sequence
        't1c'
    """
    rules = rules or SeriesRules()
    text = acquisition.text
    if match := _regex(rules.other).search(text):
        return Classification("other", f"name says {match.group(0)!r}")
    if epi := set(acquisition.scanning_sequence) & set(rules.other_scanning_sequences):
        return Classification("other", f"ScanningSequence {'/'.join(sorted(epi))}")
    sequence_rules = {"t1": rules.t1, "t2": rules.t2, "flair": rules.flair}
    named = [name for name, rule in sequence_rules.items() if rule.named(text)]
    timed = [name for name, rule in sequence_rules.items() if rule.timed(acquisition)]
    if len(named) > 1:
        return Classification("ambiguous", f"name fits {' and '.join(named)}")
    if named and timed and named[0] not in timed:
        return Classification("ambiguous", f"name says {named[0]} but {acquisition.timing} fit {timed[0]}")
    if named:
        base, evidence = named[0], "name"
    elif len(timed) == 1:
        base, evidence = timed[0], acquisition.timing
    elif timed:
        return Classification("ambiguous", f"no name; {acquisition.timing} fit {' and '.join(timed)}")
    else:
        return Classification("other", f"no rule matches the name or {acquisition.timing}")

    negative = _regex(rules.no_contrast).search(text)
    positive = _regex(rules.contrast).search(_regex(rules.no_contrast).sub(" ", text))
    agent = acquisition.contrast_agent.strip().lower() not in ("", "none", "no", "n/a", "0")
    contrast = bool(positive or agent) and not negative
    if base == "t1" and negative and (positive or agent):
        said = "ContrastBolusAgent is set" if agent or positive is None else f"also {positive.group(0)!r}"
        return Classification("ambiguous", f"T1 named {negative.group(0)!r} (no contrast) but {said}")
    if base == "t1" and contrast:
        why = f"{positive.group(0)!r}" if positive else "ContrastBolusAgent"
        return Classification("sequence", f"t1 by {evidence}, contrast by {why}", "t1c", True)
    return Classification("sequence", f"{base} by {evidence}", base, bool(positive or agent))


# ------------------------------------------------------------------------------------------ ingest
@dataclass
class DicomReport(IngestReport):
    """An :class:`IngestReport` plus ``series``: one row per series (exam, SeriesNumber, description,
    folder, files, decision, reason, file written), also written to ``OUT/series.csv``."""

    series: pd.DataFrame | None = None


@dataclass
class _Series:
    """One series of a study while it is being decided."""

    slices: list[Slice]
    first: SliceHeader  # the whole header of its first file, read again: what the series is
    fingerprint: str  # of its files: a NIfTI made from the same files is kept on a rerun
    label: str = ""  # "exam series N 'description' (folder, n files)" for problem lines
    record: dict[str, object] = field(default_factory=dict)  # its row of series.csv
    classification: Classification | None = None
    stack: Stack | None = None


@dataclass
class _Study:
    """One study: its pseudonyms, timepoint and series."""

    patient: str  # patient pseudonym
    exam: str  # exam pseudonym
    timepoint: int | None  # days since the patient's first study
    has_patient_id: bool
    series: list[_Series]  # in SeriesNumber order


def _series(archive: Archive, table: pd.DataFrame, copies: dict[str, pd.DataFrame], namer: PathNamer) -> _Series:
    """A series from its rows of the table, in walk order; the whole header of its first file read again."""
    root = archive.root
    geometry = table[list(GEOMETRY)].to_numpy(float)  # [S, 11]: position, orientation, spacing; NaN: not given
    slices, files = [], []
    columns = ["relative", "key", "rows", "columns", *SCAN_KEY]
    for (relative, key, rows, width, *scanned), values in zip(
        table[columns].itertuples(index=False, name=None), geometry, strict=True
    ):
        extra = copies.get(key)
        copied = () if extra is None else tuple(root / r for r in extra["relative"])
        position, orientation, spacing = (
            None if np.isnan(v).any() else tuple(map(float, v)) for v in (values[:3], values[3:9], values[9:])
        )
        shape = (int(rows), int(width))
        slices.append(Slice(root / relative, namer(relative), shape, position, orientation, spacing, copied))
        files += [tuple(scanned), *([] if extra is None else extra[list(SCAN_KEY)].itertuples(index=False))]
    first = archive.reread(table["relative"].iloc[0], slices[0].relative)
    return _Series(slices, first, conversion_fingerprint(files))


def _studies(archive: Archive, own: pd.DataFrame, copies: dict[str, pd.DataFrame], namer: PathNamer) -> list[_Study]:
    """Group the rows by exam and series (walk order); timepoints per patient; series in SeriesNumber order."""
    grouped = dict(tuple(own.groupby("exam", sort=False)))
    firsts = {exam: rows.iloc[0] for exam, rows in grouped.items()}  # the study's date is its first file's
    days = {exam: None if pd.isna(row["day"]) else int(row["day"]) for exam, row in firsts.items()}
    offsets = day_offsets(days, {exam: row["patient"] for exam, row in firsts.items()})
    studies = []
    for exam, rows in grouped.items():
        series = [_series(archive, table, copies, namer) for _, table in rows.groupby("series", sort=False)]
        series.sort(key=lambda s: (s.first.series_number or 0, s.first.relative))
        first = firsts[exam]
        studies.append(_Study(first["patient"], exam, offsets[exam], bool(first["has_patient_id"]), series))
    return sorted(studies, key=lambda s: (s.patient, -1 if s.timepoint is None else s.timepoint, s.exam))


def _screen(series: _Series, rules: SeriesRules, withheld: Withheld) -> str | None:
    """Why a series is not a candidate at all (before classification), or None."""
    first = series.first
    if first.modality != "MR":
        return f"modality {_shown(first.modality or 'unknown', withheld)}, not MR"
    if first.frames > 1 or first.sop_class in ENHANCED_MR:
        return "enhanced multi-frame DICOM is not converted; convert it with dcm2niix and use `umbif ingest folder`"
    if first.samples != 1:
        return f"colour image ({first.samples} samples per pixel)"
    if rules.skip_derived and {"DERIVED", "SECONDARY"} & set(first.image_type[:2]):
        return f"derived image (ImageType {_shown('/'.join(first.image_type[:2]), withheld)}): not acquired data"
    orientations: dict[tuple[float, ...], int] = defaultdict(int)
    for s in series.slices:
        if s.orientation is not None:
            orientations[tuple(np.round(s.orientation, 2))] += 1
    three_plane = len(orientations) > 1 and max(orientations.values()) <= LOCALIZER_MAX_SLICES
    if "LOCALIZER" in first.image_type or _regex(rules.localizer).search(first.acquisition.text) or three_plane:
        return "localizer"
    if len(series.slices) < rules.min_slices:
        return f"{len(series.slices)} slices: not a volume (fewer than {rules.min_slices})"
    return None


def _shown(text: str, withheld: Withheld) -> str:
    """``text`` from a header as it may be shown: withheld when it holds an identifier, a date or a UID."""
    return "<withheld>" if withheld.holds(text) else text


def _unquoted(reason: str, withheld: Withheld) -> str:
    """A classification reason with each quoted piece of a header's names that holds an identifier withheld."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", lambda m: "'<withheld>'" if withheld.holds(m.group(0)) else m.group(0), reason)


def _describe(study: _Study, series: _Series, withheld: Withheld) -> None:
    """Give a series its problem-line label and series.csv row; a description that holds an identifier of any
    file read, a date or a UID is withheld (the series is kept)."""
    first = series.first
    description = first.acquisition.description
    if withheld.holds(description):
        description = WITHHELD
    folders = sorted({Path(s.relative).parent.as_posix() for s in series.slices})
    folder = folders[0] + (f" and {len(folders) - 1} more folders" if len(folders) > 1 else "")
    number = "?" if first.series_number is None else first.series_number
    n = len(series.slices)
    series.label = f"{study.exam} series {number} {description!r} ({folder}, {n} files)"
    series.record = dict.fromkeys(SERIES_COLUMNS, "") | {
        "exam_id": study.exam,
        "patient_id": study.patient,
        "series_number": first.series_number,
        "description": description,
        "folder": folder,
        "files": n,
    }


def _candidates(study: _Study, rules: SeriesRules, withheld: Withheld, problems: list[str]) -> None:
    """Screen, classify and stack every series of a study; what fails is reported in ``problems``."""
    for series in study.series:
        _describe(study, series, withheld)
        if reason := _screen(series, rules, withheld):
            series.record.update(decision="skipped", reason=reason)
            problems.append(f"{series.label}: skipped, {reason}")
            continue
        found = series.classification = classify(series.first.acquisition, rules)
        why = _unquoted(found.reason, withheld)
        series.record.update(decision=found.kind, reason=why)
        if found.sequence is None:
            problems.append(f"{series.label}: {found.kind} ({why}); not converted")
            continue
        try:
            series.stack = stack_slices(series.slices)
        except GeometryError as err:
            series.record.update(decision="refused", reason=str(err))
            problems.append(f"{series.label}: {found.sequence} refused, {err}")


def _choose(candidates: list[_Series], rules: SeriesRules) -> tuple[_Series | None, str]:
    """The series kept for one sequence of a study, and the problem line when there were several."""
    if len(candidates) == 1:
        return candidates[0], ""
    listed = "; ".join(c.label for c in candidates)
    if rules.duplicates == "none":
        return None, f"{len(candidates)} series fit: {listed}; none used (duplicates: none)"

    def preference(c: _Series) -> tuple[bool, float, int]:
        assert c.classification is not None and c.stack is not None
        return not c.classification.contrast, -c.stack.voxel_volume, c.first.series_number or 0

    ranked = sorted(candidates, key=preference, reverse=True)
    if preference(ranked[0]) == preference(ranked[1]):
        return None, f"{len(candidates)} series fit equally well: {listed}; none used"
    return ranked[0], (
        f"{len(candidates)} series fit: {listed}; kept series {ranked[0].first.series_number} "
        "(pre-contrast, then finest voxels, then the latest)"
    )


def _chosen(study: _Study, rules: SeriesRules, problems: list[str]) -> dict[str, _Series]:
    """Sequence -> the series to convert, one per sequence at most."""
    by_sequence: dict[str, list[_Series]] = defaultdict(list)
    for s in study.series:
        if s.stack is not None and s.classification is not None and s.classification.sequence:
            by_sequence[s.classification.sequence].append(s)
    chosen = {}
    for sequence, candidates in by_sequence.items():
        kept, note = _choose(candidates, rules)
        if note:
            problems.append(f"{study.exam}: {sequence}: {note}")
        for candidate in candidates:
            if candidate is not kept:
                candidate.record.update(decision="not used", reason=f"another {sequence} series kept, or a tie")
        if kept is not None:
            chosen[sequence] = kept
    return chosen


def _convert(
    plans: list[tuple[_Study, dict[str, _Series]]],
    out_dir: Path,
    site: str,
    workers: int,
    problems: list[str],
    on_progress: Progress | None,
) -> list[dict[str, object]]:
    """Write the chosen series as NIfTI (one made from the same files before is kept) and return the manifest
    rows, paths relative to ``out_dir``; what fails is reported in ``problems``."""
    jobs = {}
    for study, chosen in plans:
        jobs[study.exam] = []
        for sequence, series in chosen.items():
            assert series.stack is not None
            target = f"{study.patient}/{study.exam}/{sequence}.nii.gz"
            jobs[study.exam].append(ConversionJob(sequence, series.stack, target, series.fingerprint))
    progress = on_progress and functools.partial(on_progress, "convert")
    errors = convert_exams(out_dir, jobs, workers, progress)
    rows = []
    for (study, chosen), job in zip(plans, jobs.values(), strict=True):
        row: dict[str, object] = {}
        for series, done, error in zip(chosen.values(), job, errors[study.exam], strict=True):
            if error is None:
                row[done.sequence] = done.target
                series.record.update(decision=done.sequence, nifti=done.target)
            else:
                series.record.update(decision="failed", reason=error)
                problems.append(f"{series.label}: {done.sequence} not converted, {error}")
        if not row:
            problems.append(f"{study.exam}: no t1, t1c, t2 or flair series could be converted; exam left out")
            continue
        timepoint = "" if study.timepoint is None else str(study.timepoint)
        rows.append({"exam_id": study.exam, "patient_id": study.patient, "site": site, "timepoint": timepoint} | row)
    return rows


def ingest_dicom(
    root: str | Path,
    out_dir: str | Path,
    pseudonymiser: Pseudonymiser,
    site: str | None = None,
    rules: SeriesRules | None = None,
    on_progress: Progress | None = None,
    workers: int = 1,
    shard: Shard = Shard(),
) -> DicomReport:
    """Convert a tree of DICOM files into pseudonymised NIfTI exams and a manifest (stage 2, one shard of it).

    The headers come from the table in ``out_dir/.scan`` (:mod:`umbif.data.dicom_scan`); with one shard the
    files it lacks are scanned first, with ``workers`` processes. With one shard (the default) this is the whole
    ingest. With several, each converts the patients whose pseudonym hashes to it and writes its part to
    ``out_dir/.convert``, and :func:`merge_dicom` joins the parts. A NIfTI made from the same files is kept.

    Args:
        root: folder searched recursively; any layout, any number of patients and studies.
        out_dir: where ``<patient>/<exam>/<sequence>.nii.gz`` and ``series.csv`` go; the manifest's
            root (the caller writes ``manifest.csv`` there). Not searched when it lies inside ``root``.
        pseudonymiser: the keyed hash for patient and exam ids (``Pseudonymiser.from_user()``).
        site: site of every exam (default :data:`DEFAULT_SITE`, reported; never a folder name, which may
            name a patient).
        rules: how series are classified and chosen (default :class:`SeriesRules`).
        on_progress: called as ``(stage, done, total)`` for the stages "headers" and "convert".
        workers: processes scanning headers and converting series.
        shard: the patients to convert (``Shard(i, n)`` for array job i of n; every shard needs the whole scan).

    Returns:
        The manifest (one row per study with at least one converted sequence; of this shard's patients when
        there are several shards), the problems (one line per file or series not used, and why), and the
        series table. Files and folders are named in both by :class:`~umbif.data.pseudonym.PathNamer`, never
        by their raw path.

    Example:
        >>> report = ingest_dicom("archive", "nifti", Pseudonymiser.from_user("~/umbif.key"))  # doctest: +SKIP
        >>> report.manifest.write("nifti/manifest.csv")  # doctest: +SKIP

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no DICOM image under ``root``, ``out_dir`` is ``root``, files not scanned (several shards),
            a table of another key, or (one shard) no series was converted.
    """
    root, out_dir = check_folders(root, out_dir)
    rules = rules or SeriesRules()
    headers = on_progress and functools.partial(on_progress, "headers")
    archive = load_archive(root, out_dir, pseudonymiser, workers, shard.count == 1, headers)
    namer = archive.namer(pseudonymiser)
    unreadable = archive.files.loc[archive.files["problem"].notna(), ["relative", "problem"]].to_numpy()
    problems = [f"{namer(relative)}: {problem}" for relative, problem in unreadable if shard.owns(relative)]
    if archive.readable.empty:
        listed = "; ".join(f"{namer(relative)}: {problem}" for relative, problem in unreadable[:3])
        raise ValueError(f"no DICOM image under ROOT ({listed or 'no files'})")
    if not site:
        site = DEFAULT_SITE
        problems.append(
            f"no site given: every exam's site is {site!r}; name it (--site hospitalA) to tell sites apart "
            "(ROOT's folder name is not used: it may name a patient)"
        )
    images, copies = archive.images()
    owned = {patient for patient in images["patient"].unique() if shard.owns(patient)}
    if len(reported := copies[copies["patient"].isin(owned)]):
        first, n = images.set_index("key").loc[reported["key"].iloc[0], "relative"], len(reported)
        problems.append(
            f"{n} {'file is a copy' if n == 1 else 'files are copies'} of another file (same SOPInstanceUID); "
            f"each image is read from the first copy whose pixel data decodes: e.g. {namer(first)} and "
            f"{namer(reported['relative'].iloc[0])}"
        )
    plans = []
    copies_of = dict(tuple(copies.groupby("key", sort=False)))  # key of the image kept -> the rows of its copies
    for study in _studies(archive, images[images["patient"].isin(owned)], copies_of, namer):
        if not study.has_patient_id:
            problems.append(f"{study.exam}: no PatientID; the exam is its own patient")
        _candidates(study, rules, namer.withheld, problems)
        plans.append((study, _chosen(study, rules, problems)))
    rows = _convert(plans, out_dir, site, workers, problems, on_progress)
    timepoints = [study.timepoint for study, _ in plans for _ in study.series]
    part = Part.of([s.record for study, _ in plans for s in study.series], timepoints, rows)
    if shard.count > 1:
        part.write(out_dir, shard, _fingerprint(archive, site, rules))
        return DicomReport(
            manifest_from_rows(part.rows(out_dir), out_dir), problems, part.series.drop(columns="_timepoint")
        )
    return _report(out_dir, part, problems)


def merge_dicom(out_dir: str | Path) -> DicomReport:
    """Join the parts the shards of :func:`ingest_dicom` wrote into ``out_dir/series.csv`` and a manifest (the
    caller writes ``manifest.csv``), in the order one shard gives.

    Raises:
        ValueError: a shard's part is missing, the parts were made from different archives or settings, or no
            series was converted.
    """
    out_dir = Path(out_dir).absolute()
    part, notes = Part.read(out_dir)
    return _report(out_dir, part, notes)


def _fingerprint(archive: Archive, site: str, rules: SeriesRules) -> str:
    """What a shard's part depends on beyond its patients: every shard must agree."""
    return hashlib.sha256(json_text([archive.fingerprint, site, rules.to_dict()]).encode()).hexdigest()


def _report(out_dir: Path, part: Part, problems: list[str]) -> DicomReport:
    """Write ``series.csv`` and return the report."""
    series, rows = part.finish(out_dir)
    if not rows:
        raise ValueError(f"no exam could be built from ROOT: no series was converted; see {out_dir / 'series.csv'}")
    return DicomReport(manifest_from_rows(rows, out_dir), problems, series)

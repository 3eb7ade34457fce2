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
screens, chooses and converts series. Reading the files themselves (headers, slice order and geometry,
pixel data) is :mod:`umbif.data.dicom_io`.

Nothing that identifies a patient leaves this module: patient ids become keyed hashes
(:mod:`umbif.data.pseudonym`), study dates become days since the patient's first exam, and names,
birth dates, accession numbers and UIDs are read only to group files and to find them again in free
text. Files are named by :class:`~umbif.data.pseudonym.PathNamer` (relative to their exam's folder, which
the exam pseudonym names; a name holding an identifier, a date or a UID becomes a keyed hash), series
by exam pseudonym, SeriesNumber and SeriesDescription (withheld when it holds an identifier of any file
read, a date or a UID). The site is what the caller says, never a folder name.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import field_validator, model_validator

from umbif.config import FrozenConfig
from umbif.data.dicom_io import (
    Acquisition,
    DicomError,
    GeometryError,
    SliceHeader,
    Stack,
    list_files,
    read_headers,
    read_volume,
    stack_slices,
)
from umbif.data.io import write_nifti
from umbif.data.pseudonym import Identifiers, PathNamer, Pseudonymiser, Withheld, day_offsets, parse_date
from umbif.data.sources.common import IngestReport, manifest_from_rows
from umbif.utils import atomic_write, csv_safe

ENHANCED_MR = frozenset({"1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4"})
LOCALIZER_MAX_SLICES = 5  # a series in several orientations with at most this many slices each is a localizer
Progress = Callable[[str, int, int], None]  # (stage, done, total)
DEFAULT_SITE = "site"  # site of every exam when none is given: ROOT's folder name may name a patient
WITHHELD = "<withheld: contains an identifier>"  # what is shown for a description that holds an identifier
SERIES_COLUMNS = (
    "exam_id",
    "patient_id",
    "series_number",
    "description",
    "folder",
    "files",
    "decision",
    "reason",
    "nifti",
)


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

    slices: list[SliceHeader]
    label: str  # "exam series N 'description' (folder, n files)" for problem lines
    record: dict[str, object]  # its row of series.csv
    classification: Classification | None = None
    stack: Stack | None = None


@dataclass
class _Study:
    """One study: its pseudonyms, timepoint and series (identifiers stay in the slice headers)."""

    patient: str  # patient pseudonym
    exam: str  # exam pseudonym
    timepoint: int | None  # days since the patient's first study
    series: list[list[SliceHeader]]  # slices of each series, in SeriesNumber order


def _without_copies(headers: list[SliceHeader], problems: list[str]) -> list[SliceHeader]:
    """One header per image: of its copies (same SOPInstanceUID, e.g. exported twice) the first with its
    geometry complete is kept and the others become its ``copies``, read when its pixel data does not
    decode, so the copy that decodes wins in any walk order."""
    first: dict[str, SliceHeader] = {}
    copies: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in sorted(headers, key=lambda h: None in (h.position, h.orientation, h.pixel_spacing)):
        if header.instance_uid and header.instance_uid in first:
            copies[header.instance_uid].append(header)
        else:
            first[header.instance_uid or header.path.as_posix()] = header
    if copies:
        uid, extra = next(iter(copies.items()))
        n = sum(len(c) for c in copies.values())
        problems.append(
            f"{n} {'file is a copy' if n == 1 else 'files are copies'} of another file (same SOPInstanceUID); "
            f"each image is read from the first copy whose pixel data decodes: e.g. {first[uid].relative} and "
            f"{extra[0].relative}"
        )
    return [
        dataclasses.replace(h, copies=tuple(c.path for c in copies[key])) if key in copies else h
        for key, h in first.items()
    ]


def _study_key(header: SliceHeader) -> tuple[str, str]:
    """(patient key, StudyInstanceUID): a study without PatientID is its own patient."""
    return header.patient_id or f"\x00study {header.study_uid}", header.study_uid


def _namer(headers: list[SliceHeader], pseudonymiser: Pseudonymiser) -> PathNamer:
    """How files are named in outputs: under the folder of their exam (or patient), withheld names hashed."""
    exams: dict[str, list[str]] = defaultdict(list)
    patients: dict[str, list[str]] = defaultdict(list)
    for header in headers:
        patient, study = _study_key(header)
        exams[pseudonymiser.exam(patient, study)].append(header.relative)
        patients[pseudonymiser.patient(patient)].append(header.relative)
    withheld = Withheld(Identifiers.union(h.identifiers for h in headers))
    return PathNamer(pseudonymiser, withheld, [exams, patients])


def _studies(headers: list[SliceHeader], pseudonymiser: Pseudonymiser) -> list[_Study]:
    """Group slices by patient, study and series; pseudonyms and day offsets per study."""
    grouped: dict[tuple[str, str], dict[str, list[SliceHeader]]] = defaultdict(lambda: defaultdict(list))
    for header in headers:
        grouped[_study_key(header)][header.series_uid].append(header)
    patient_key = {key: key[0] for key in grouped}
    dates = {key: parse_date(next(iter(series.values()))[0].study_date) for key, series in grouped.items()}
    offsets = day_offsets(dates, patient_key)
    studies = [
        _Study(
            pseudonymiser.patient(key[0]),
            pseudonymiser.exam(key[0], key[1]),
            offsets[key],
            sorted(series.values(), key=lambda s: (s[0].series_number or 0, s[0].relative)),
        )
        for key, series in grouped.items()
    ]
    return sorted(studies, key=lambda s: (s.patient, -1 if s.timepoint is None else s.timepoint, s.exam))


def _screen(series: list[SliceHeader], rules: SeriesRules, withheld: Withheld) -> str | None:
    """Why a series is not a candidate at all (before classification), or None."""
    first = series[0]
    if first.modality != "MR":
        return f"modality {_shown(first.modality or 'unknown', withheld)}, not MR"
    if first.frames > 1 or first.sop_class in ENHANCED_MR:
        return "enhanced multi-frame DICOM is not converted; convert it with dcm2niix and use `umbif ingest folder`"
    if first.samples != 1:
        return f"colour image ({first.samples} samples per pixel)"
    if rules.skip_derived and {"DERIVED", "SECONDARY"} & set(first.image_type[:2]):
        return f"derived image (ImageType {_shown('/'.join(first.image_type[:2]), withheld)}): not acquired data"
    orientations: dict[tuple[float, ...], int] = defaultdict(int)
    for s in series:
        if s.orientation is not None:
            orientations[tuple(np.round(s.orientation, 2))] += 1
    three_plane = len(orientations) > 1 and max(orientations.values()) <= LOCALIZER_MAX_SLICES
    if "LOCALIZER" in first.image_type or _regex(rules.localizer).search(first.acquisition.text) or three_plane:
        return "localizer"
    if len(series) < rules.min_slices:
        return f"{len(series)} slices: not a volume (fewer than {rules.min_slices})"
    return None


def _shown(text: str, withheld: Withheld) -> str:
    """``text`` from a header as it may be shown: withheld when it holds an identifier, a date or a UID."""
    return "<withheld>" if withheld.holds(text) else text


def _unquoted(reason: str, withheld: Withheld) -> str:
    """A classification reason with each quoted piece of a header's names that holds an identifier withheld."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", lambda m: "'<withheld>'" if withheld.holds(m.group(0)) else m.group(0), reason)


def _describe(study: _Study, slices: list[SliceHeader], withheld: Withheld) -> _Series:
    """A series with its problem-line label and series.csv row; a description that holds an identifier of
    any file read, a date or a UID is withheld (the series is kept)."""
    first = slices[0]
    description = first.acquisition.description
    if withheld.holds(description):
        description = WITHHELD
    folders = sorted({Path(s.relative).parent.as_posix() for s in slices})
    folder = folders[0] + (f" and {len(folders) - 1} more folders" if len(folders) > 1 else "")
    number = "?" if first.series_number is None else first.series_number
    record = dict.fromkeys(SERIES_COLUMNS, "")
    record.update(
        exam_id=study.exam,
        patient_id=study.patient,
        series_number=first.series_number,
        description=description,
        folder=folder,
        files=len(slices),
    )
    return _Series(slices, f"{study.exam} series {number} {description!r} ({folder}, {len(slices)} files)", record)


def _candidates(study: _Study, rules: SeriesRules, withheld: Withheld, problems: list[str]) -> list[_Series]:
    """Every series of a study, screened, classified and stacked; what fails is reported in ``problems``."""
    decided = []
    for slices in study.series:
        series = _describe(study, slices, withheld)
        decided.append(series)
        if reason := _screen(slices, rules, withheld):
            series.record.update(decision="skipped", reason=reason)
            problems.append(f"{series.label}: skipped, {reason}")
            continue
        found = series.classification = classify(slices[0].acquisition, rules)
        why = _unquoted(found.reason, withheld)
        series.record.update(decision=found.kind, reason=why)
        if found.sequence is None:
            problems.append(f"{series.label}: {found.kind} ({why}); not converted")
            continue
        try:
            series.stack = stack_slices(slices)
        except GeometryError as err:
            series.record.update(decision="refused", reason=str(err))
            problems.append(f"{series.label}: {found.sequence} refused, {err}")
    return decided


def _choose(candidates: list[_Series], rules: SeriesRules) -> tuple[_Series | None, str]:
    """The series kept for one sequence of a study, and the problem line when there were several."""
    if len(candidates) == 1:
        return candidates[0], ""
    listed = "; ".join(c.label for c in candidates)
    if rules.duplicates == "none":
        return None, f"{len(candidates)} series fit: {listed}; none used (duplicates: none)"

    def preference(c: _Series) -> tuple[bool, float, int]:
        assert c.classification is not None and c.stack is not None
        return not c.classification.contrast, -c.stack.voxel_volume, c.slices[0].series_number or 0

    ranked = sorted(candidates, key=preference, reverse=True)
    if preference(ranked[0]) == preference(ranked[1]):
        return None, f"{len(candidates)} series fit equally well: {listed}; none used"
    return ranked[0], (
        f"{len(candidates)} series fit: {listed}; kept series {ranked[0].slices[0].series_number} "
        "(pre-contrast, then finest voxels, then the latest)"
    )


def _chosen(study: _Study, series: list[_Series], rules: SeriesRules, problems: list[str]) -> dict[str, _Series]:
    """Sequence -> the series to convert, one per sequence at most."""
    by_sequence: dict[str, list[_Series]] = defaultdict(list)
    for s in series:
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


def ingest_dicom(
    root: str | Path,
    out_dir: str | Path,
    pseudonymiser: Pseudonymiser,
    site: str | None = None,
    rules: SeriesRules | None = None,
    on_progress: Progress | None = None,
) -> DicomReport:
    """Convert a tree of DICOM files into pseudonymised NIfTI exams and a manifest.

    Args:
        root: folder searched recursively; any layout, any number of patients and studies.
        out_dir: where ``<patient>/<exam>/<sequence>.nii.gz`` and ``series.csv`` go; the manifest's
            root (the caller writes ``manifest.csv`` there). Not searched when it lies inside ``root``.
        pseudonymiser: the keyed hash for patient and exam ids (``Pseudonymiser.from_user()``).
        site: site of every exam (default :data:`DEFAULT_SITE`, reported; never a folder name, which may
            name a patient).
        rules: how series are classified and chosen (default :class:`SeriesRules`).
        on_progress: called as ``(stage, done, total)`` for the stages "headers" and "convert".

    Returns:
        The manifest (one row per study with at least one converted sequence), the problems (one
        line per file or series not used, and why), and the series table. Files and folders are named
        in both by :class:`~umbif.data.pseudonym.PathNamer`, never by their raw path.

    Example:
        >>> report = ingest_dicom("archive", "nifti", Pseudonymiser.from_user("~/umbif.key"))  # doctest: +SKIP
        >>> report.manifest.write("nifti/manifest.csv")  # doctest: +SKIP

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no DICOM image under ``root``, ``out_dir`` is ``root``, or no series was converted.
    """
    root, out_dir = Path(root).absolute(), Path(out_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the folder that holds the DICOM files")
    if out_dir == root:
        raise ValueError("write the output to another folder than ROOT, e.g. next to it")
    rules = rules or SeriesRules()
    files = list_files(root, exclude=out_dir)
    headers, unreadable = read_headers(files, root, on_progress and functools.partial(on_progress, "headers"))
    namer = _namer(headers, pseudonymiser)
    problems = [f"{namer(p.relative)}: {p.reason}" for p in unreadable]
    if not headers:
        raise ValueError(f"no DICOM image under ROOT ({'; '.join(problems[:3]) or 'no files'})")
    if not site:
        site = DEFAULT_SITE
        problems.append(
            f"no site given: every exam's site is {site!r}; name it (--site hospitalA) to tell sites apart "
            "(ROOT's folder name is not used: it may name a patient)"
        )
    headers = _without_copies([dataclasses.replace(h, relative=namer(h.relative)) for h in headers], problems)
    withheld = namer.withheld

    studies = _studies(headers, pseudonymiser)
    plans = []
    for study in studies:
        if not study.series[0][0].patient_id:
            problems.append(f"{study.exam}: no PatientID; the exam is its own patient")
        decided = _candidates(study, rules, withheld, problems)
        plans.append((study, decided, _chosen(study, decided, rules, problems)))

    rows, converted, total = [], 0, sum(len(chosen) for _, _, chosen in plans)
    for study, _, chosen in plans:
        row: dict[str, object] = {}
        for sequence, series in chosen.items():
            path = out_dir / study.patient / study.exam / f"{sequence}.nii.gz"
            assert series.stack is not None
            try:
                write_nifti(path, read_volume(series.stack), series.stack.affine)
            except DicomError as err:
                series.record.update(decision="failed", reason=str(err))
                problems.append(f"{series.label}: {sequence} not converted, {err}")
            else:
                series.record.update(decision=sequence, nifti=path.relative_to(out_dir).as_posix())
                row[sequence] = path
            converted += 1
            if on_progress:
                on_progress("convert", converted, total)
        if not row:
            problems.append(f"{study.exam}: no t1, t1c, t2 or flair series could be converted; exam left out")
            continue
        timepoint = "" if study.timepoint is None else str(study.timepoint)
        rows.append(
            {
                "exam_id": study.exam,
                "patient_id": study.patient,
                "site": site,
                "timepoint": timepoint,
            }
            | row
        )

    table = pd.DataFrame.from_records([s.record for _, decided, _ in plans for s in decided], columns=SERIES_COLUMNS)
    with atomic_write(out_dir / "series.csv", "w") as handle:
        handle.write(csv_safe(table).to_csv(index=False))
    if not rows:
        raise ValueError(f"no exam could be built from ROOT: no series was converted; see {out_dir / 'series.csv'}")
    return DicomReport(manifest_from_rows(rows, out_dir), problems, table)

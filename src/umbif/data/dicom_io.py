"""DICOM files to volumes: read the headers of a tree of files, stack the slices of one series in order
with checked geometry, read their pixel data, and write many series as NIfTI at once (in worker processes,
keeping files made from the same slices before). Nothing here decides what a series is or which to keep:
that is :mod:`umbif.data.dicom` (classification and ingest), which, like the RSNA adapter
(:mod:`umbif.data.sources.rsna`), is built on these functions.

Coordinates: DICOM patient space is LPS, NIfTI world space is RAS; a :class:`Stack`'s affine maps voxel
``(i, j, k)`` (column, row, slice) to RAS mm. Who a header belongs to and the identifiers it holds
(:class:`Identity`) stay in memory to group files and to find them again in free text; problem lines name
files by :attr:`Slice.relative`, which the DICOM ingest replaces with a name free of identifiers.
pydicom's warnings and log records, which can quote header values, are silenced while reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from umbif.data.io import write_nifti
from umbif.data.pseudonym import Identifiers
from umbif.utils import check_component, write_json

CONVERT_DIR = ".convert"  # under OUT: what each exam's NIfTI files were made from (and the ingest's shard parts)
CONVERT_VERSION = 1  # how a series becomes NIfTI: a file made by another version is made again
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient space is LPS, NIfTI world space is RAS
ORIENTATION_TOLERANCE = 1e-3  # direction cosines that differ less are the same orientation
SPACING_TOLERANCE_MM = 0.05  # slice gaps, in-plane spacings and sideways shifts within this are equal ...
SPACING_TOLERANCE_FRACTION = 0.01  # ... or within this fraction of the slice spacing (the larger wins)
ORGANISATION_TAGS = frozenset(  # text tags that name an organisation or a place; every PN tag names a person
    {
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PersonAddress",
        "PersonTelephoneNumbers",
        "ResponsibleOrganization",
    }
)
ID_TAGS = frozenset(  # tags that hold an id of a patient, a visit or a request
    {
        "PatientID",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "AccessionNumber",
        "StudyID",
        "MedicalRecordLocator",
        "AdmissionID",
        "ServiceEpisodeID",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
    }
)


# ------------------------------------------------------------------------------------------ headers
@dataclass(frozen=True)
class Acquisition:
    """The header fields that say what a series is."""

    description: str = ""  # SeriesDescription
    protocol: str = ""  # ProtocolName
    sequence_name: str = ""  # SequenceName (Siemens *tse2d1_15, *tir2d1_16, *tfl3d1)
    scanning_sequence: tuple[str, ...] = ()  # ScanningSequence: SE, IR, GR, EP, RM
    tr: float | None = None  # RepetitionTime, ms
    te: float | None = None  # EchoTime, ms
    ti: float | None = None  # InversionTime, ms; None when the header has none
    contrast_agent: str = ""  # ContrastBolusAgent

    @property
    def text(self) -> str:
        return " | ".join(t for t in (self.description, self.protocol, self.sequence_name) if t).lower()

    @property
    def timing(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:g}"

        return f"TR {ms(self.tr)} TE {ms(self.te)} TI {ms(self.ti)}"


@dataclass(frozen=True)
class Slice:
    """One image file as a slice of a volume: what stacking the slices and reading their pixels need."""

    path: Path
    relative: str  # posix path under the walked root; the DICOM ingest gives it its output name instead
    shape: tuple[int, int] | None  # (Rows, Columns)
    position: tuple[float, ...] | None  # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row direction, column direction
    pixel_spacing: tuple[float, ...] | None  # PixelSpacing: between rows, between columns (mm)
    copies: tuple[Path, ...] = ()  # other files of the same image (same SOPInstanceUID), tried when it fails


@dataclass(frozen=True)
class Identity:
    """Who and when: what groups files into patients, studies, series and images, and every identifier of the
    header. Kept in memory only; the DICOM header table (:mod:`umbif.data.dicom_scan`) holds keyed hashes of it."""

    patient_id: str
    study_uid: str
    series_uid: str
    instance_uid: str  # SOPInstanceUID: the same image exported twice has the same one
    study_date: str  # StudyDate, else SeriesDate
    identifiers: Identifiers  # every person and organisation name, id and date in the header


@dataclass(frozen=True, kw_only=True)
class SliceHeader(Slice):
    """What umbif reads from one DICOM file: the slice, who it belongs to, and what its series is."""

    identity: Identity
    series_number: int | None
    modality: str
    sop_class: str
    image_type: tuple[str, ...]
    frames: int
    samples: int  # SamplesPerPixel: 1 for grey-scale
    acquisition: Acquisition


class DicomError(ValueError):
    """A file that cannot be used; the message names it by :attr:`Slice.relative`."""


class UnreadableFile(DicomError):
    """A file that is not a usable DICOM image: ``relative`` (its path under ROOT) and why."""

    def __init__(self, relative: str, reason: str):
        super().__init__(f"{relative}: {reason}")
        self.relative, self.reason = relative, reason


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom without warnings, validation messages or log records: they can quote header values."""
    names = [n for n in list(logging.Logger.manager.loggerDict) if n == "pydicom" or n.startswith("pydicom.")]
    loggers = [logging.getLogger(n) for n in {"pydicom", *names}]
    mode, disabled = pydicom_config.settings.reading_validation_mode, [lg.disabled for lg in loggers]
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    for logger in loggers:
        logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.reading_validation_mode = mode
        for logger, was in zip(loggers, disabled, strict=True):
            logger.disabled = was


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _numbers(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(np.isfinite(numbers)) else None


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    """A multi-valued string tag (ImageType, ScanningSequence) upper-cased; one value comes back as one."""
    value = ds.get(keyword)
    if value is None:
        return ()
    return tuple(str(v).strip().upper() for v in (value if isinstance(value, MultiValue) else [value]))


def _identifiers(ds: Dataset) -> Identifiers:
    """Every person name (PN), organisation or address, id and date in the header, nested sequences included."""
    found: dict[str, set[str]] = {"names": set(), "ids": set(), "dates": set()}
    _collect_identifiers(ds, found)
    return Identifiers(**{kind: frozenset(values) for kind, values in found.items()})


def _collect_identifiers(ds: Dataset, found: dict[str, set[str]]) -> None:
    for raw in ds.elements():  # unconverted: only the elements wanted are decoded
        try:
            tag = Tag(raw.tag)
            if tag.is_private:
                continue
            vr = raw.VR or dictionary_VR(tag)
            if vr == "SQ":
                for item in ds[tag].value or ():
                    _collect_identifiers(item, found)
                continue
            keyword = keyword_for_tag(tag)
            kind = (
                "names"
                if vr == "PN" or keyword in ORGANISATION_TAGS
                else "ids"
                if keyword in ID_TAGS
                else "dates"
                if vr in ("DA", "DT")
                else None
            )
            value = None if kind is None else ds[tag].value
            if kind is None or value is None:
                continue
            values = value if isinstance(value, MultiValue) else [value]
            found[kind] |= {str(v).strip() for v in values if str(v).strip()}
        except Exception:  # a damaged or unknown element names nobody we could match; the file is judged elsewhere
            continue


def read_header(path: Path, root: Path) -> SliceHeader:
    """The header of one DICOM image file (pixel data not read).

    Raises:
        DicomError: not DICOM, unreadable, no image in it, or no Study/Series Instance UID. The
            message names the file by its path under ``root`` and never quotes header values.
    """
    relative = path.relative_to(root).as_posix()
    try:
        with quiet_pydicom():
            return _parse_header(pydicom.dcmread(path, stop_before_pixels=True), path, relative)
    except InvalidDicomError:
        raise UnreadableFile(relative, "not a DICOM file; skipped") from None
    except DicomError:
        raise
    except Exception as err:  # a damaged file raises anything from struct.error to KeyError; the rest goes on
        raise UnreadableFile(relative, f"unreadable DICOM header ({type(err).__name__}); skipped") from None


def _parse_header(ds: Dataset, path: Path, relative: str) -> SliceHeader:
    sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPClassUID")
    if "Rows" not in ds or "Columns" not in ds:
        kind = UID(sop_class).name if sop_class and UID(sop_class).keyword else "unknown kind"  # never a raw UID
        raise UnreadableFile(relative, f"DICOM without an image ({kind}); skipped")
    study, series = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
    if not study or not series:
        raise UnreadableFile(relative, "no StudyInstanceUID or SeriesInstanceUID; skipped")
    number = _number(ds, "SeriesNumber")
    return SliceHeader(
        path=path,
        relative=relative,
        identity=Identity(
            patient_id=_text(ds, "PatientID"),
            study_uid=study,
            series_uid=series,
            instance_uid=_text(ds, "SOPInstanceUID"),
            study_date=_text(ds, "StudyDate") or _text(ds, "SeriesDate"),
            identifiers=_identifiers(ds),
        ),
        series_number=None if number is None else int(number),
        modality=_text(ds, "Modality").upper(),
        sop_class=sop_class,
        image_type=_values(ds, "ImageType"),
        frames=int(_number(ds, "NumberOfFrames") or 1),
        samples=int(_number(ds, "SamplesPerPixel") or 1),
        shape=(int(ds.Rows), int(ds.Columns)),
        position=_numbers(ds, "ImagePositionPatient", 3),
        orientation=_numbers(ds, "ImageOrientationPatient", 6),
        pixel_spacing=_numbers(ds, "PixelSpacing", 2),
        acquisition=Acquisition(
            description=_text(ds, "SeriesDescription"),
            protocol=_text(ds, "ProtocolName"),
            sequence_name=_text(ds, "SequenceName"),
            scanning_sequence=_values(ds, "ScanningSequence"),
            tr=_number(ds, "RepetitionTime"),
            te=_number(ds, "EchoTime"),
            ti=_number(ds, "InversionTime"),
            contrast_agent=_text(ds, "ContrastBolusAgent"),
        ),
    )


def read_headers(
    files: Sequence[Path], root: Path, on_progress: Callable[[int, int], None] | None = None
) -> tuple[list[SliceHeader], list[UnreadableFile]]:
    """Headers of ``files``; files that are not usable DICOM images come back as one problem each
    (``str()`` is its line: path under ``root`` and reason)."""
    headers, problems = [], []
    for done, path in enumerate(files, start=1):
        try:
            headers.append(read_header(path, root))
        except UnreadableFile as err:
            problems.append(err)
        if on_progress:
            on_progress(done, len(files))
    return headers, problems


# ----------------------------------------------------------------------------------------- geometry
class GeometryError(ValueError):
    """Slices that do not form one regular volume; the message says why."""


@dataclass(frozen=True)
class Stack:
    """The slices of one volume in order along the slice normal, and the voxel-to-RAS affine.

    Voxel ``(i, j, k)`` is column ``i`` and row ``j`` of slice ``k`` (NIfTI convention)."""

    slices: tuple[Slice, ...]
    affine: np.ndarray  # [4, 4], voxel -> RAS mm

    @property
    def shape(self) -> tuple[int, int, int]:
        rows, columns = self.slices[0].shape
        return columns, rows, len(self.slices)

    @property
    def voxel_volume(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))


def _tolerance(step: float) -> float:
    return max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * step)


def stack_slices(slices: Sequence[Slice]) -> Stack:
    """Order the slices of one series by position along the slice normal and build its affine.

    The normal is the cross product of the row and column directions; slices are sorted by the
    projection of ImagePositionPatient on it, never by file name or InstanceNumber.

    Raises:
        GeometryError: geometry tags missing, slices differing in size, orientation or pixel
            spacing, positions repeated (echoes, phases), non-uniform spacing (a missing slice), or
            positions that drift sideways from the normal (gantry tilt).
    """
    lacking = [s.relative for s in slices if s.position is None or s.orientation is None or s.pixel_spacing is None]
    if lacking:
        raise GeometryError(
            f"{len(lacking)} files lack ImagePositionPatient, ImageOrientationPatient or PixelSpacing "
            f"(e.g. {lacking[0]})"
        )
    if len(slices) < 2:
        raise GeometryError("one slice is not a volume")
    if len({s.shape for s in slices}) > 1:
        raise GeometryError(f"slices differ in size: {sorted({s.shape for s in slices})} (rows, columns)")
    orientations = np.array([s.orientation for s in slices])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        raise GeometryError("slices differ in ImageOrientationPatient; not one stack")
    spacings = np.array([s.pixel_spacing for s in slices])
    if np.abs(spacings - spacings[0]).max() > SPACING_TOLERANCE_MM * 0.1:
        raise GeometryError("slices differ in PixelSpacing; not one stack")
    row, column = orientations[0, :3], orientations[0, 3:]
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    if abs(row @ column) > ORIENTATION_TOLERANCE:
        raise GeometryError("ImageOrientationPatient rows and columns are not perpendicular")
    normal = np.cross(row, column)

    order = np.argsort(np.array([s.position for s in slices]) @ normal, kind="stable")
    ordered = [slices[i] for i in order]
    positions = np.array([s.position for s in ordered])  # [S, 3] LPS mm
    distance = positions @ normal
    steps = np.diff(distance)
    if (repeated := steps < SPACING_TOLERANCE_MM).any():
        k = int(np.argmax(repeated))
        raise GeometryError(
            f"{int(repeated.sum())} slices repeat the position of another "
            f"(e.g. {ordered[k].relative} and {ordered[k + 1].relative}): several echoes, phases or repeats in "
            "one series"
        )
    step = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - step) > _tolerance(step))
    if uneven.size:
        k = int(uneven[0])
        missing = round(steps[k] / step) - 1
        hint = "" if missing < 1 else ": a missing slice?" if missing == 1 else f": about {missing} missing slices?"
        raise GeometryError(
            f"slice spacing not uniform: {steps[k]:.2f} mm between {ordered[k].relative} and "
            f"{ordered[k + 1].relative} where most are {step:.2f} mm{hint}"
        )
    offsets = positions - positions[0]
    along = offsets @ normal
    sideways = np.linalg.norm(offsets - along[:, None] * normal, axis=1)
    if (sideways > np.maximum(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * along)).any():
        angle = np.degrees(np.arctan2(sideways[-1], along[-1]))
        raise GeometryError(
            f"slices shift sideways as they advance ({angle:.1f} degrees off the slice normal): gantry tilt "
            "or a sheared stack; resample it first (e.g. dcm2niix corrects gantry tilt)"
        )
    row_spacing, column_spacing = spacings[0]
    lps = np.eye(4)
    lps[:3, 0] = row * column_spacing  # i runs along a row: one column per step
    lps[:3, 1] = column * row_spacing  # j runs down a column: one row per step
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(ordered) - 1)
    lps[:3, 3] = positions[0]
    return Stack(tuple(ordered), LPS_TO_RAS @ lps)


def read_pixels(path: Path) -> np.ndarray:
    """One slice's real values (stored values times RescaleSlope plus RescaleIntercept), [rows, columns].

    pydicom decodes uncompressed and RLE data; for compressions it has no decoder for here (JPEG
    lossless, JPEG-LS) SimpleITK's GDCM reads the file and applies the rescale itself (its warnings, which
    name the file, are switched off meanwhile).
    """
    with quiet_pydicom():
        ds = pydicom.dcmread(path)
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except (RuntimeError, NotImplementedError):
            import SimpleITK as sitk

            shown = sitk.ProcessObject.GetGlobalWarningDisplay()
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
            try:
                return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0].astype(np.float32)
            finally:
                sitk.ProcessObject.SetGlobalWarningDisplay(shown)
        slope, intercept = _number(ds, "RescaleSlope"), _number(ds, "RescaleIntercept")
    return pixels * np.float32(slope or 1.0) + np.float32(intercept or 0.0)


def read_volume(stack: Stack) -> np.ndarray:
    """The voxel values of a stack, [i, j, k] as in :class:`Stack`: int16 when every real value is a whole
    number that fits, else float32.

    A slice with copies (:attr:`Slice.copies`) is read from the first of its files whose pixel data
    decodes to the header's size, so a damaged copy never hides a good one, whichever was found first.

    Raises:
        DicomError: no file of a slice has pixel data that decodes to its size.
    """
    volume = np.empty(stack.shape, np.float32)
    for k, header in enumerate(stack.slices):
        volume[:, :, k] = _slice_pixels(header).T
    whole = np.array_equal(volume, np.round(volume))
    if whole and volume.size and volume.min() >= np.iinfo(np.int16).min and volume.max() <= np.iinfo(np.int16).max:
        return volume.astype(np.int16)
    return volume


def _slice_pixels(header: Slice) -> np.ndarray:
    """The pixels of one slice, [rows, columns], from its file or else from one of its copies."""
    failures = []
    for path in (header.path, *header.copies):
        try:
            pixels = read_pixels(path)
        except Exception as err:  # decoders raise many types on damaged data; the series is reported
            failures.append(f"pixel data unreadable ({type(err).__name__})")
            continue
        if pixels.shape == header.shape:
            return pixels
        failures.append(f"pixel data is {pixels.shape}, the header says {header.shape}")
    copies = f" (and in its {len(header.copies)} copies)" if header.copies else ""
    raise DicomError(f"{header.relative}: {failures[0]}{copies}")


def convert(slices: Sequence[Slice], path: Path) -> Stack:
    """Stack, read and write one series as NIfTI at ``path``.

    Raises:
        GeometryError: see :func:`stack_slices`.
        DicomError: pixel data unreadable.
    """
    stack = stack_slices(slices)
    write_nifti(path, read_volume(stack), stack.affine)
    return stack


# ------------------------------------------------------------------------------- many series at once
class WorkerDied(RuntimeError):
    """A worker process was killed (most often by the system, out of memory)."""


def conversion_fingerprint(files: Iterable[tuple[str, int, int]]) -> str:
    """What a NIfTI file is made from: the (keyed) path, size and mtime of each of its files, copies included."""
    lines = sorted(f"{key}:{size}:{mtime}" for key, size, mtime in files)
    return hashlib.sha256("\n".join([f"convert {CONVERT_VERSION}", *lines]).encode()).hexdigest()


@dataclass(frozen=True)
class ConversionJob:
    """One series to write as NIfTI: its sequence, slices, file under OUT and fingerprint."""

    sequence: str
    stack: Stack
    target: str  # posix path under OUT
    fingerprint: str


def _record_path(out_dir: Path, exam: str) -> Path:
    return out_dir / CONVERT_DIR / "exams" / f"{check_component(exam, 'exam id')}.json"


def _record(out_dir: Path, exam: str) -> dict[str, str]:
    """Sequence -> fingerprint of the NIfTI files of an exam written before (nothing when unreadable)."""
    try:
        record = json.loads(_record_path(out_dir, exam).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _convert_exam(out_dir: Path, exam: str, jobs: list[ConversionJob]) -> list[str | None]:
    """Write the NIfTI file of each job (the error of each that fails, else None), then the exam's record."""
    record, errors = _record(out_dir, exam), []
    for job in jobs:
        try:
            write_nifti(out_dir / job.target, read_volume(job.stack), job.stack.affine)
        except DicomError as err:
            record.pop(job.sequence, None)
            errors.append(str(err))
        else:
            record[job.sequence] = job.fingerprint
            errors.append(None)
    write_json(_record_path(out_dir, exam), record)
    return errors


def convert_exams(
    out_dir: Path,
    jobs: dict[str, list[ConversionJob]],
    workers: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[str | None]]:
    """Write every job's NIfTI file, exam by exam, in this process or in ``workers`` processes; a file that its
    exam's record says was made from the same files is kept. Returns each exam's errors, in job order (None: the
    file is there)."""
    errors: dict[str, list[str | None]] = {exam: [None] * len(exam_jobs) for exam, exam_jobs in jobs.items()}
    todo: dict[str, list[int]] = {}  # exam -> its jobs to do
    for exam, exam_jobs in jobs.items():
        record = _record(out_dir, exam) if exam_jobs else {}
        kept = [record.get(j.sequence) == j.fingerprint and (out_dir / j.target).is_file() for j in exam_jobs]
        if not all(kept):
            todo[exam] = [i for i, k in enumerate(kept) if not k]
    total = sum(len(j) for j in jobs.values())
    finished = total - sum(len(j) for j in todo.values())
    if on_progress and finished:
        on_progress(finished, total)
    with contextlib.ExitStack() as resources:
        if workers <= 1:
            results: Iterable[tuple[str, list[str | None]]] = (
                (exam, _convert_exam(out_dir, exam, [jobs[exam][i] for i in todo_jobs]))
                for exam, todo_jobs in todo.items()
            )
        else:
            pool = resources.enter_context(
                ProcessPoolExecutor(min(workers, len(todo) or 1), mp_context=get_context("spawn"))
            )
            resources.callback(pool.shutdown, cancel_futures=True)  # on an error: what has not started never will
            futures = {
                pool.submit(_convert_exam, out_dir, exam, [jobs[exam][i] for i in todo_jobs]): exam
                for exam, todo_jobs in todo.items()
            }
            results = ((futures[future], future.result()) for future in as_completed(futures))
        try:
            for exam, exam_errors in results:
                for i, error in zip(todo[exam], exam_errors, strict=True):
                    errors[exam][i] = error
                finished += len(exam_errors)
                if on_progress:
                    on_progress(finished, total)
        except BrokenProcessPool:
            raise WorkerDied(
                f"a worker process was killed while converting into {out_dir} (most often the system ran out of "
                "memory); the exams finished so far are kept: rerun with fewer --workers"
            ) from None
    return errors

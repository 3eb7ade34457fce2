"""Tiny DICOM series written with pydicom for the DICOM tests: known geometry, known voxel values, and
recognisable fake identifiers (names, ids, dates, UIDs) that must never reach an output.

Test modules import it by name (``from dicom_factory import write_series``): pytest puts the test
file's folder on ``sys.path``; tests in sub-folders add ``tests/data`` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def oblique(degrees: float) -> tuple[float, ...]:
    """Axial rows and columns rotated by ``degrees`` about the patient's left-right axis, then about z."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rotation = about_z @ about_x
    return tuple(float(v) for v in np.concatenate([rotation[:, 0], rotation[:, 1]]))


@dataclass(frozen=True)
class Patient:
    """A fake patient whose every identifier is recognisable in an output."""

    name: str = "Doe^Jane^Quentina"
    patient_id: str = "PID-4711-ZX"
    birth_date: str = "19610203"
    accession: str = "ACC99887766"
    institution: str = "Hospital of Saint Fakename"

    def identifiers(self) -> list[str]:
        return [self.name, *self.name.split("^"), self.patient_id, self.birth_date, self.accession, self.institution]


JANE = Patient()
JOHN = Patient("Roe^Johnathan", "PID-0815-QY", "19720911", "ACC55443322", "Fakeville Clinic")


def study_uid(patient: Patient, study: str) -> str:
    return generate_uid(entropy_srcs=[patient.patient_id, study])


@dataclass
class WrittenSeries:
    """What :func:`write_series` wrote: files in slice order (along the normal), expected real voxel
    values as (column, row, slice), the expected RAS affine, and every identifier it put in headers."""

    files: list[Path]
    values: np.ndarray
    affine: np.ndarray
    identifiers: list[str] = field(default_factory=list)


def write_series(
    folder: Path,
    *,
    patient: Patient = JANE,
    study: str = "study-a",
    study_date: str = "20190514",
    series: int = 1,
    description: str = "AX T1 SE",
    protocol: str = "",
    shape: tuple[int, int, int] = (16, 12, 8),
    pixel_spacing: tuple[float, float] = (0.9, 1.1),
    slice_step: float = 3.0,
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
    tilt_degrees: float = 0.0,
    order: Sequence[int] | None = None,
    skip: Sequence[int] = (),
    names: Callable[[int], str] | None = None,
    tr: float | None = 500.0,
    te: float | None = 10.0,
    ti: float | None = None,
    contrast_agent: str | None = None,
    scanning_sequence: str | list[str] | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    slope: float = 1.0,
    intercept: float = 0.0,
    frames: int | None = None,
    seed: int = 0,
    stored: np.ndarray | None = None,
    tags: Mapping[str, object] | None = None,
) -> WrittenSeries:
    """Write one MR series of ``shape = (columns, rows, slices)`` into ``folder``, one file per slice.

    Slice ``k`` sits at ``origin + k * slice_step * normal`` (LPS, mm), shifted along the column
    direction by ``tan(tilt_degrees)`` per mm when tilted. ``order[k]`` is the number used for slice
    ``k``'s file name (``names(number)``, default ``S<series>_IM<number>.dcm``) and InstanceNumber
    (default ``k + 1``), so a permutation makes name order differ from position order. Slices in
    ``skip`` are not written. Stored values are random int16; real values are ``stored * slope +
    intercept``; ``stored`` (column, row, slice) int16 replaces them, and its shape replaces ``shape``.
    ``frames`` > 1 writes a multi-frame file per slice (NumberOfFrames set). ``tags`` sets more header
    fields by keyword (``ReferringPhysicianName``, ``StudyDescription``, ...); their text values count as
    identifiers.
    """
    if stored is None:
        stored = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int16)  # (column, row, slice)
    else:
        stored, shape = np.asarray(stored, dtype=np.int16), tuple(stored.shape)
    columns, rows, slices = shape
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    step = slice_step * (normal + np.tan(np.deg2rad(tilt_degrees)) * col_dir)
    order = list(order) if order is not None else list(range(1, slices + 1))
    study_instance = study_uid(patient, study)
    series_instance = generate_uid(entropy_srcs=[patient.patient_id, study, str(series)])
    identifiers = [*patient.identifiers(), study_date, study_instance, series_instance]
    for value in (tags or {}).values():
        identifiers += [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(slices):
        if k in skip:
            continue
        path = folder / (names(order[k]) if names else f"S{series}_IM{order[k]:04d}.dcm")
        sop = generate_uid(entropy_srcs=[series_instance, path.name])
        identifiers.append(sop)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_instance
        ds.SeriesInstanceUID = series_instance
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_instance, "frame"])
        ds.Modality = "MR"
        ds.PatientName = patient.name
        ds.PatientID = patient.patient_id
        ds.PatientBirthDate = patient.birth_date
        ds.AccessionNumber = patient.accession
        ds.InstitutionName = patient.institution
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = study_date
        ds.StudyTime = "101530"
        ds.SeriesNumber = series
        ds.InstanceNumber = order[k]
        ds.SeriesDescription = description
        if protocol:
            ds.ProtocolName = protocol
        ds.ImageType = list(image_type)
        if tr is not None:
            ds.RepetitionTime = tr
        if te is not None:
            ds.EchoTime = te
        if ti is not None:
            ds.InversionTime = ti
        if contrast_agent is not None:
            ds.ContrastBolusAgent = contrast_agent
        if scanning_sequence is not None:
            ds.ScanningSequence = scanning_sequence
        ds.ImagePositionPatient = [round(float(v), 6) for v in np.asarray(origin) + k * step]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_step
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # DICOM pixel data is rows x columns
        if frames:
            ds.NumberOfFrames = frames
            pixels = np.concatenate([pixels] * frames)
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]  # along a row: column index, spacing between columns
    lps[:3, 1] = col_dir * pixel_spacing[0]  # down a column: row index, spacing between rows
    lps[:3, 2] = step
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    values = stored.astype(np.float64) * slope + intercept
    return WrittenSeries(files, values, affine, identifiers)


def output_texts(folder: Path) -> list[str]:
    """Everything under ``folder`` as text to search for identifiers: each file's path, and its content, read the
    way a person would (a ``.nii.gz`` decompressed, a Parquet table's cells and metadata decoded, any other file
    as bytes)."""
    import gzip

    import pyarrow.parquet as pq

    texts = []
    for path in sorted(folder.rglob("*")):
        texts.append(path.relative_to(folder).as_posix())
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            metadata = table.schema.metadata or {}
            texts += [table.to_pandas().to_csv(), *(v.decode("utf-8", "replace") for v in metadata.values())]
        texts.append(data.decode("latin-1"))
    return texts

"""The plain folder layout: every folder that holds NIfTI files is one exam.

::

    ROOT/exam1/*.nii.gz              depth 1: patient_id = exam_id = "exam1", no timepoint
    ROOT/patient7/2019-05/*.nii.gz   depth 2: patient_id = "patient7", exam_id = "patient7_2019-05",
    ROOT/patient7/2020-01/*.nii.gz            timepoint = rank of the exam within the patient (0, 1, ...)
    ROOT/*.nii.gz                    ROOT itself is the exam: exam_id = patient_id = ROOT's name

Files are placed by name through the alias table (:mod:`umbif.data.sequences`).
"""

from __future__ import annotations

from pathlib import Path

from umbif.data.sequences import AliasTable, alias_table
from umbif.data.sources.common import (
    ExamFolder,
    IngestReport,
    find_exam_folders,
    ingest_report,
    site_name,
)


def ingest_folder(
    root: str | Path,
    table: AliasTable | None = None,
    site: str | None = None,
    labels: str | Path | None = None,
    subject_column: str = "subject",
    join_on: str = "patient",
) -> IngestReport:
    """Build a manifest from a folder of exam folders (``ROOT/exam/`` or ``ROOT/patient/exam/``).

    Args:
        root: the data folder; manifest paths are relative to it.
        table: alias table naming the sequences (default: the built-in one).
        site: site of every exam (default: ``root``'s folder name).
        labels: optional labels CSV joined with :func:`~umbif.data.sources.common.join_labels`.
        subject_column: the labels CSV column holding the subject id.
        join_on: match the subject id against ``"patient"`` or ``"exam"`` ids.

    Returns:
        The manifest and the problems (unplaced files, skipped folders, label rows).

    Example:
        >>> report = ingest_folder("data/gbm")  # doctest: +SKIP
        >>> report.manifest.write("data/gbm/manifest.csv")  # doctest: +SKIP

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no NIfTI file under ``root``, no usable exam, or a bad labels CSV.
    """
    exams, problems = find_exam_folders(root, table or alias_table())
    site = site or site_name(root)
    timepoints = _timepoints(exams)
    rows = []
    for exam in exams:
        exam_id = "_".join(exam.parts) or site_name(root)
        rows.append(
            {
                "exam_id": exam_id,
                "patient_id": exam.parts[0] if len(exam.parts) > 1 else exam_id,
                "site": site,
                "timepoint": timepoints.get(exam.parts, ""),
                **exam.files,
            }
        )
    return ingest_report(rows, root, problems, labels, subject_column, join_on)


def _timepoints(exams: list[ExamFolder]) -> dict[tuple[str, ...], str]:
    """Rank of each nested exam (``ROOT/patient/exam``) among its patient's exams; ``exams`` come in
    natural name order from :func:`~umbif.data.sources.common.find_exam_folders`."""
    seen: dict[str, int] = {}
    ranks = {}
    for exam in exams:
        if len(exam.parts) > 1:
            rank = seen.get(exam.parts[0], 0)
            ranks[exam.parts] = str(rank)
            seen[exam.parts[0]] = rank + 1
    return ranks

"""The alias table: real data-set file names -> canonical sequences and masks, and placing an exam's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from umbif.data.sequences import alias_table, assign_files, nifti_stem


@pytest.mark.parametrize(
    ("stem", "target"),
    [
        # BraTS 2021
        ("BraTS2021_00000_t1", "t1"),
        ("BraTS2021_00000_t1ce", "t1c"),
        ("BraTS2021_00000_t2", "t2"),
        ("BraTS2021_00000_flair", "flair"),
        ("BraTS2021_00000_seg", "seg"),
        # BraTS 2023 (the trailing -000 is a timepoint, not a sequence)
        ("BraTS-GLI-00000-000-t1n", "t1"),
        ("BraTS-GLI-00000-000-t1c", "t1c"),
        ("BraTS-GLI-00000-000-t2w", "t2"),
        ("BraTS-GLI-00000-000-t2f", "flair"),
        ("BraTS-GLI-00000-000-seg", "seg"),
        # UCSF-PDGM: the sequence is not the last token (``_bias``)
        ("UCSF-PDGM-0004_T1_bias", "t1"),
        ("UCSF-PDGM-0004_T1c_bias", "t1c"),
        ("UCSF-PDGM-0004_T2_bias", "t2"),
        ("UCSF-PDGM-0004_FLAIR_bias", "flair"),
        ("UCSF-PDGM-0004_tumor_segmentation", "seg"),
        ("UCSF-PDGM-0004_brain_segmentation", "brain_mask"),  # UCSF-PDGM's skull-stripping mask
        ("UCSF-PDGM-0004_ADC", None),
        ("UCSF-PDGM-0004_SWI_bias", None),
        # UPENN-GBM
        ("00001_t1n", "t1"),
        ("UPENN-GBM-00001_11_T1", "t1"),
        ("UPENN-GBM-00001_11_T1GD", "t1c"),
        ("UPENN-GBM-00001_11_T2", "t2"),
        ("UPENN-GBM-00001_11_FLAIR", "flair"),
        ("UPENN-GBM-00001_11_segm", "seg"),
        # RSNA-MICCAI MGMT series folders
        ("T1w", "t1"),
        ("T1wCE", "t1c"),
        ("T2w", "t2"),
        ("FLAIR", "flair"),
        # longer runs win: T2_FLAIR is FLAIR, not T2
        ("T2_FLAIR", "flair"),
        ("sub-01_T2-FLAIR", "flair"),
        ("sub-01_T1w_brainmask", "brain_mask"),
        # case and separators do not matter
        ("brats2021_00000_T1CE", "t1c"),
        ("Exam 3 FlAiR", "flair"),
        ("UPENN-GBM-00001_11_t1gd", "t1c"),
        # nothing known
        ("localizer", None),
        ("DWI_b1000", None),
    ],
)
def test_classify_real_dataset_names(stem: str, target: str | None) -> None:
    assert alias_table().classify(stem) == target


@pytest.mark.parametrize("stem", ["flair_t1_coreg", "t2-x-t1c-y", "seg_t1_registered"])
def test_classify_refuses_ambiguous_names(stem: str) -> None:
    with pytest.raises(ValueError, match="matches several of"):
        alias_table().classify(stem)


@pytest.mark.parametrize(
    ("extra", "stem", "target"),
    [
        ({"t1c": ["mprage_gd"]}, "sub-01_MPRAGE-GD", "t1c"),
        ({"flair": ["dark fluid"]}, "exam_dark_fluid", "flair"),
        ({"brain_mask": ["hdbet"]}, "sub-01_hdbet", "brain_mask"),
    ],
)
def test_extra_aliases(extra: dict[str, list[str]], stem: str, target: str) -> None:
    assert alias_table().classify(stem) != target
    assert alias_table(extra).classify(stem) == target


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"t2": ["T1-CE"]}, "'T1-CE' is given for both t1c and t2"),
        ({"seg": ["flair"]}, "for both flair and seg"),
        ({"dwi": ["dwi"]}, "unknown alias target 'dwi'"),
    ],
)
def test_extra_aliases_that_clash_raise(extra: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        alias_table(extra)


@pytest.mark.parametrize(
    ("ignore", "stem", "ignored"),
    [
        (["adc"], "UCSF-PDGM-0004_ADC", True),
        (["ADC"], "sub_adc_t2", True),  # an ignored token wins over a sequence in the same name
        (["swi"], "UCSF-PDGM-0004_ADC", False),
        (["adc"], "badcase_t1", False),  # whole tokens only, not substrings
    ],
)
def test_ignore_list(ignore: list[str], stem: str, ignored: bool) -> None:
    assert alias_table(ignore=ignore).is_ignored(stem) is ignored


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t1"),
        ("a.b_T2.NII.GZ", "a.b_T2"),
        ("flair.nii", "flair"),
        ("dir.nii.gz/t1.json", None),
        ("t1.nii.gz.bak", None),
        ("t1.mha", None),
    ],
)
def test_nifti_stem(name: str, stem: str | None) -> None:
    assert nifti_stem(Path("/data/exam") / name) == stem


def test_assign_files_places_and_reports(tmp_path: Path) -> None:
    names = [
        "BraTS2021_00000_t1.nii.gz",
        "BraTS2021_00000_t1ce.nii.gz",
        "BraTS2021_00000_flair.nii",
        "BraTS2021_00000_seg.nii.gz",
        "BraTS2021_00000_t2.json",  # a sidecar: skipped quietly
        "notes.txt",
        "localizer.nii.gz",  # NIfTI that matches nothing
        "flair_t1_coreg.nii.gz",  # ambiguous
        "t2_a.nii.gz",  # two files compete for t2: neither is used
        "t2_b.nii.gz",
        "exam_ADC.nii.gz",  # ignored
    ]
    found = assign_files([tmp_path / n for n in names], alias_table(ignore=["adc"]))
    assert found.files == {
        "t1": tmp_path / "BraTS2021_00000_t1.nii.gz",
        "t1c": tmp_path / "BraTS2021_00000_t1ce.nii.gz",
        "flair": tmp_path / "BraTS2021_00000_flair.nii",
        "seg": tmp_path / "BraTS2021_00000_seg.nii.gz",
    }
    assert len(found.problems) == 3
    assert any(p.startswith("localizer.nii.gz: no sequence recognised") for p in found.problems)
    assert any(p.startswith("flair_t1_coreg.nii.gz: ambiguous name") for p in found.problems)
    assert any(p.startswith("t2: several files match (t2_a.nii.gz, t2_b.nii.gz)") for p in found.problems)


def test_assign_files_ucsf_pdgm_masks(tmp_path: Path) -> None:
    """UCSF-PDGM has three ``*_segmentation`` files; only ``tumor_segmentation`` is the tumour seg."""
    stems = ["T1_bias", "T1c_bias", "T2_bias", "FLAIR_bias", "ADC", "tumor_segmentation", "brain_segmentation"]
    stems.append("brain_parenchyma_segmentation")  # a tissue map: skipped by the built-in ignore list
    found = assign_files([tmp_path / f"UCSF-PDGM-0004_{s}.nii.gz" for s in stems], alias_table(ignore=["adc"]))
    assert found.problems == []
    assert {t: p.name for t, p in found.files.items()} == {
        "t1": "UCSF-PDGM-0004_T1_bias.nii.gz",
        "t1c": "UCSF-PDGM-0004_T1c_bias.nii.gz",
        "t2": "UCSF-PDGM-0004_T2_bias.nii.gz",
        "flair": "UCSF-PDGM-0004_FLAIR_bias.nii.gz",
        "seg": "UCSF-PDGM-0004_tumor_segmentation.nii.gz",
        "brain_mask": "UCSF-PDGM-0004_brain_segmentation.nii.gz",
    }

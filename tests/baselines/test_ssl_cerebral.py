"""SSL-Cerebral: tumour-centred crops hold the tumour, exams without one are skipped and counted, the
pretraining loop feeds the tumour centres to its views, a stopped run resumes to the same weights, and the
exported encoder loads. Random-crop runs keep the config they had before the crop mode existed."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import umbif.train.views as views_module
from umbif import SEQUENCES
from umbif.baselines.ssl_cerebral import pretrain_cerebral
from umbif.config import PreprocessConfig
from umbif.data.cache import run_preprocess
from umbif.data.datasets import CacheDataset
from umbif.data.manifest import Manifest
from umbif.models.io import load_encoder, pretraining_of, read_safetensors
from umbif.train.augment import random_crop
from umbif.train.pretrain import PretrainConfig, describe, pretrain, tumour_centres

SHAPE = (32, 32, 32)
MODEL = {"image_size": [16, 16, 16], "patch_size": 8, "dim": 24, "depth": 1, "heads": 2, "decoder_dim": 16,
         "decoder_depth": 1, "decoder_heads": 2, "proj_dim": 8}  # fmt: skip
# exam -> tumour centre in the input volume (None: no seg file; "empty": a seg file without tumour)
TUMOURS = {"E0": (10, 12, 16), "E1": (20, 18, 14), "E2": (16, 10, 20), "E3": (12, 20, 12), "E4": "empty", "E5": None}


def _config(**overrides) -> PretrainConfig:
    settings = {"model": MODEL, "batch_size": 2, "total_steps": 4, "warmup_steps": 1, "lr": 1e-3, "log_every": 1,
                "checkpoint_every": 2, "preview_every": 0, "seed": 3, "crop_jitter": 3} | overrides  # fmt: skip
    return PretrainConfig.model_validate(settings)


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"))
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) < radius**2


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Six exams cached at 32^3: four with a tumour ball at different places, one with an empty
    segmentation, one with none."""
    root = tmp_path_factory.mktemp("cerebral")
    rng = np.random.default_rng(0)
    head = _ball((16, 16, 16), 13)
    rows = []
    for exam, tumour in TUMOURS.items():
        row = {"exam_id": exam, "patient_id": f"P{exam}", "site": "s0", "timepoint": "0"}
        lesion = _ball(tumour, 3.2) if isinstance(tumour, tuple) else np.zeros(SHAPE, dtype=bool)
        volumes = {s: head * (300.0 + 50 * i) + lesion * 400.0 + rng.normal(0, 5, SHAPE) * head
                   for i, s in enumerate(SEQUENCES)}  # fmt: skip
        if tumour is not None:
            volumes["seg"] = lesion.astype(np.uint8)
        for name, data in volumes.items():
            row[name] = f"data/{exam}/{name}.nii.gz"
            (root / "data" / exam).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data.astype(np.float32 if name != "seg" else np.uint8), np.diag([2.0] * 3 + [1])),
                     root / row[name])  # fmt: skip
        rows.append(row)
    manifest = Manifest(pd.DataFrame(rows), root)
    report = run_preprocess(manifest, root / "cache", PreprocessConfig(shape=SHAPE))
    assert report.ok, report.failures
    return root / "cache", manifest.table


def _segs(cache: Path) -> dict[str, np.ndarray]:
    dataset = CacheDataset(cache, masks=True)
    return {item["exam_id"]: item["seg"].numpy() for item in (dataset[i] for i in range(len(dataset)))}


def test_only_exams_with_a_tumour_are_kept_at_their_box_centres(cohort) -> None:
    cache, _ = cohort
    dataset = CacheDataset(cache)
    centres, skipped = tumour_centres(dataset)
    assert skipped == 2 and sorted(centres) == ["E0", "E1", "E2", "E3"]
    assert sorted(e["exam_id"] for e in dataset.entries) == ["E0", "E1", "E2", "E3"]
    for exam, seg in _segs(cache).items():
        voxels = np.argwhere(seg > 0)
        if exam in centres:  # the bounding-box centre, computed another way
            np.testing.assert_allclose(centres[exam].numpy(), (voxels.min(0) + voxels.max(0)) / 2)
        else:
            assert voxels.size == 0


@pytest.mark.parametrize("jitter", [0, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tumour_crops_hold_the_whole_tumour(cohort, jitter: int, seed: int) -> None:
    cache, _ = cohort
    segs = _segs(cache)
    centres, _ = tumour_centres(CacheDataset(cache))
    exams = sorted(centres)
    seg = torch.stack([torch.from_numpy(segs[e]) for e in exams])[:, None].float()  # [B, 1, X, Y, Z]
    extent = max(int(np.ptp(np.argwhere(segs[e] > 0), axis=0).max()) + 1 for e in exams)
    size = (extent + 2 * jitter + 1,) * 3
    crops = random_crop(
        seg, size, torch.Generator().manual_seed(seed), torch.stack([centres[e] for e in exams]), jitter
    )
    assert torch.equal(crops.sum(dim=(1, 2, 3, 4)), seg.sum(dim=(1, 2, 3, 4)))  # nothing of the tumour cut off
    if jitter == 0:  # centred: the tumour's box centre sits in the middle of the crop (within half a voxel)
        for crop in crops[:, 0]:
            voxels = np.argwhere(crop.numpy() > 0)
            assert np.abs((voxels.min(0) + voxels.max(0)) / 2 - (size[0] - 1) / 2).max() <= 0.5


def test_jittered_boxes_move_and_stay_inside_the_grid() -> None:
    images = torch.arange(20**3, dtype=torch.float32).reshape(1, 1, 20, 20, 20).expand(3, 1, -1, -1, -1)
    centres = torch.tensor([[0.0, 0.0, 0.0], [19.0, 19.0, 19.0], [10.0, 9.5, 10.0]])
    starts = set()
    for seed in range(20):
        crops = random_crop(images, (6, 6, 6), torch.Generator().manual_seed(seed), centres, jitter=2)
        first = [divmod(int(c[0, 0, 0, 0]), 400) for c in crops]  # voxel (0, 0, 0) of each crop -> its x
        assert first[0][0] == 0 and first[1][0] == 14  # pushed back inside the grid at both ends
        starts.add(first[2][0])
    assert starts == {5, 6, 7, 8, 9}  # 10 - 2.5 floored = 7, moved by -2..2
    with pytest.raises(ValueError, match="centres must be"):
        random_crop(images, (6, 6, 6), None, centres[:2], jitter=2)


def test_random_crop_runs_keep_their_saved_config() -> None:
    """Checkpoints of runs from before the crop mode have no crop keys; a random-crop config still matches."""
    assert "crop" not in _config(crop="random").to_dict() and "crop_jitter" not in _config().to_dict()
    assert _config(crop="tumour").to_dict()["crop"] == "tumour"
    assert PretrainConfig.model_validate(_config().to_dict()).crop == "random"
    assert "centred on the tumour" in describe(_config(crop="tumour")) and "tumour" not in describe(_config())


def test_the_loop_centres_every_view_on_the_batch_tumours(cohort, tmp_path: Path, monkeypatch) -> None:
    cache, _ = cohort
    expected, _ = tumour_centres(CacheDataset(cache))
    seen = []

    def recording(draws, grid, size, centres=None, jitter=0):
        seen.append((centres, jitter))
        return original(draws, grid, size, centres, jitter)

    original = views_module.crop_starts
    monkeypatch.setattr(views_module, "crop_starts", recording)
    result = pretrain(cache, tmp_path / "run", _config(crop="tumour", total_steps=2))
    assert result["exams"] == 4 and result["skipped_without_tumour"] == 2
    assert len(seen) == 4 and all(jitter == 3 and len(c) == 2 for c, jitter in seen)  # one read per exam: 2 boxes
    used = {tuple(c.tolist()) for centres, _ in seen for c in centres}
    assert used == {tuple(c.tolist()) for c in expected.values()}  # one epoch: every tumour exam once
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["skipped_without_tumour"] == 2 and record["config"]["crop"] == "tumour"


def test_pretrain_cerebral_resumes_exactly_and_exports(cohort, tmp_path: Path) -> None:
    cache, table = cohort
    config = _config()  # crop "random": pretrain_cerebral makes it "tumour"
    pretrain(cache, tmp_path / "straight", _config(crop="tumour"), exam_ids=list(table["exam_id"]))

    class Stop(Exception):
        pass

    def stop_at_three(step: int, total: int, losses: dict) -> None:
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        pretrain_cerebral(table, cache, tmp_path / "cerebral", config, on_step=stop_at_three)  # checkpoint at 2
    folder = pretrain_cerebral(table, cache, tmp_path / "cerebral", config)
    assert folder == tmp_path / "cerebral" / "encoder"
    assert pretraining_of(folder) == {"crop": "tumour", "image_size": [16, 16, 16], "steps": 4}  # read by readout_of
    straight = read_safetensors(tmp_path / "straight" / "checkpoints" / "step_000004" / "model.safetensors")[0]
    encoder = load_encoder(folder, image_size=(32, 32, 32))  # trained on 16^3 crops, run on the exam
    for name, value in encoder.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(value, straight[f"encoder.{name}"]), name
    assert encoder(torch.randn(1, 4, 32, 32, 32), torch.ones(1, 4, dtype=torch.bool)).shape == (1, MODEL["dim"])


def test_no_exam_with_a_tumour_is_refused(cohort, tmp_path: Path) -> None:
    cache, table = cohort
    without = table[table["exam_id"].isin(["E4", "E5"])]
    with pytest.raises(ValueError, match=r"none of the 2 exams .* has a segmented tumour"):
        pretrain_cerebral(without, cache, tmp_path / "none", _config())
    with pytest.raises(ValueError, match="is in the cache"):
        pretrain_cerebral(pd.DataFrame({"exam_id": ["X"]}), cache, tmp_path / "none", _config())

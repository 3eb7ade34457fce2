"""The pretraining data path: the exams of every step and their crops are the same for any number of processes
(same global batch), with or without loader workers, and after a resume in the middle of a read; crops are the
boxes of the memory-mapped cache file, absent sequences stay zero, and each read gives its views to consecutive
steps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from umbif.train.augment import crop_starts
from umbif.train.distributed import DistInfo
from umbif.train.views import CropDataset, DataPlan, crop_loader, epoch_order, step_batches

GRID, SIZE = (10, 9, 8), (4, 5, 3)
SEQUENCES_OF = {"A": ["t1", "t1c", "t2", "flair"], "B": ["t1", "t2"], "C": ["t1c", "t2", "flair"]}


def _dataset(exams: int = 6) -> SimpleNamespace:
    """A stand-in for CacheDataset (what CropDataset reads: ``entries`` and ``cache.load``) over arrays whose
    voxel values say where they are: channel c, voxel (x, y, z) of exam e holds 1000 e + 100 c + its flat index."""
    entries, arrays = [], {}
    flat = np.arange(np.prod(GRID)).reshape(GRID) % 97
    for e in range(exams):
        sequences = SEQUENCES_OF["ABC"[e % 3]]
        entries.append({"exam_id": f"E{e}", "sequences": sequences})
        arrays[f"E{e}"] = np.stack([1000 * e + 100 * c + flat for c in range(len(sequences))]).astype(np.float16)
    return SimpleNamespace(entries=entries, cache=SimpleNamespace(load=lambda exam_id, kind: arrays[exam_id]))


def _global_steps(plan: DataPlan, steps: int, start: int = 0) -> list[list[tuple[int, int]]]:
    """Per step, the (position, exam) of the whole global batch, in chunk order, from every rank's reads."""
    per_rank = [plan.reads(rank, start) for rank in range(plan.world_size)]
    out = []
    while len(out) < steps:
        chunks: dict[int, list[tuple[int, int]]] = {}
        for rank, reads in enumerate(per_rank):
            for micro in range(plan.accum_steps):
                chunks[plan.chunk(micro, rank)] = next(reads)[1]
        batch = [pick for c in sorted(chunks) for pick in chunks[c]]
        out += [batch] * plan.views_per_read
    return out[:steps]


@pytest.mark.parametrize("views_per_read", [1, 3])
def test_every_step_sees_the_same_exams_at_any_world_size(views_per_read: int) -> None:
    """Global batch 4: 4 processes, 2 processes x 2 accumulation steps, 1 process x 4: the same batches."""
    plans = [DataPlan(11, 1, 4 // w, w, views_per_read, seed=3) for w in (1, 2, 4)]
    steps = [_global_steps(plan, 20) for plan in plans]
    assert steps[0] == steps[1] == steps[2]
    first_epoch = [pick for batch in steps[0][: 2 * views_per_read : views_per_read] for pick in batch]
    assert sorted(e for _, e in first_epoch) == sorted(epoch_order(3, 0, 11)[:8])  # 2 batches of 4; 3 left out
    assert len({e for _, e in first_epoch}) == 8
    assert all(steps[0][i] == steps[0][i - i % views_per_read] for i in range(20))  # a read serves consecutive steps


def test_epochs_are_reshuffled_and_resume_starts_in_the_right_group() -> None:
    plan = DataPlan(8, 2, 1, 2, 2, seed=0)  # global batch 4: 2 groups, 4 steps per epoch
    assert plan.steps_per_epoch == 4 and plan.locate(5) == (1, 0, 1)
    steps = _global_steps(plan, 12)
    assert steps[0] != steps[4]  # epoch 1 is another order
    assert _global_steps(plan, 7, start=5) == steps[4:11]  # a resume re-reads the group of step 5


def test_crops_are_the_seeded_boxes_of_the_stored_array() -> None:
    dataset = _dataset()
    views = CropDataset(dataset, SIZE, views_per_read=2, views=2, seed=5)
    item = views[(1, [(7, 0), (8, 1)])]
    assert item["image"].shape == (2, 2, 2, 4, *SIZE) and item["image"].dtype == torch.float16
    assert item["exam_id"] == ["E0", "E1"]
    assert item["present"].tolist() == [[True] * 4, [True, False, True, False]]
    for b, (position, exam) in enumerate([(7, 0), (8, 1)]):
        stored = dataset.cache.load(f"E{exam}", "image")
        draws = torch.from_numpy(np.random.default_rng([5, 1, position]).random((4, 3)))
        starts = crop_starts(draws, GRID, SIZE)
        channels = np.flatnonzero(item["present"][b].numpy())
        for box, (x, y, z) in enumerate(starts):
            crop = item["image"][box // 2, b, box % 2].numpy()
            expected = stored[:, x : x + SIZE[0], y : y + SIZE[1], z : z + SIZE[2]]
            np.testing.assert_array_equal(crop[channels], expected)
            assert not crop[np.setdiff1d(range(4), channels)].any()  # absent sequences are zero
    assert not torch.equal(item["image"][0, 0, 0], item["image"][0, 0, 1])  # the two views differ
    assert torch.equal(item["image"], views[(1, [(7, 0), (8, 1)])]["image"])  # the same key, the same crops


def test_tumour_boxes_hold_the_centre() -> None:
    dataset = _dataset()
    centres = {e["exam_id"]: torch.tensor([5.0, 4.0, 4.0], dtype=torch.float64) for e in dataset.entries}
    item = CropDataset(dataset, (3, 3, 3), 2, 2, seed=0, centres=centres, jitter=1)[(0, [(0, 0)])]
    centre_value = float(dataset.cache.load("E0", "image")[0, 5, 4, 4])
    assert all((item["image"][k, 0, v, 0] == centre_value).any() for k in range(2) for v in range(2))


def _batches(views: CropDataset, plan: DataPlan, workers: int, start: int = 0, steps: int = 6) -> list[list[dict]]:
    stream = step_batches(crop_loader(views, plan, DistInfo(0, 1, 0, torch.device("cpu")), start, workers), plan, start)
    out = [next(stream) for _ in range(steps)]
    stream.close()
    return out


def test_workers_and_resumes_change_nothing() -> None:
    """The micro-batches of 6 steps from the training process, from 2 loader workers, and from a resume at step 3
    (the middle of a read of 2 views) are the same tensors."""
    views = CropDataset(_dataset(), SIZE, views_per_read=2, views=2, seed=1)
    plan = DataPlan(6, 2, 2, 1, 2, seed=1)  # 2 micro-batches of 2 exams per step
    alone, workers, resumed = _batches(views, plan, 0), _batches(views, plan, 2), _batches(views, plan, 0, 3, 3)
    for a, b in zip(alone, workers, strict=True):
        assert [m["exam_id"] for m in a] == [m["exam_id"] for m in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x["image"], y["image"]) for a, b in zip(alone[3:], resumed, strict=True)
               for x, y in zip(a, b, strict=True))  # fmt: skip
    assert alone[0][0]["image"].shape == (2, 2, 4, *SIZE)  # [B, V, S, X, Y, Z]
    assert alone[0][0]["exam_id"] == alone[1][0]["exam_id"] and not torch.equal(
        alone[0][0]["image"], alone[1][0]["image"]
    )  # the second step of a read: the same exams, their second view pair

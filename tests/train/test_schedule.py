from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from umbif.train.schedule import lr_at, warmup_cosine

BASE, WARMUP, TOTAL, FLOOR = 1e-3, 10, 110, 1e-5


def _direct(step: int) -> float:
    if step < WARMUP:
        return BASE * (step + 1) / WARMUP
    t = min(step - WARMUP, TOTAL - WARMUP) / (TOTAL - WARMUP)
    return FLOOR + (BASE - FLOOR) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("step", [0, 1, 5, 9, 10, 11, 35, 60, 85, 109, 110, 111, 500])
def test_lr_at_matches_the_formula(step):
    assert lr_at(step, BASE, WARMUP, TOTAL, FLOOR) == pytest.approx(_direct(step), rel=1e-12)


def test_pieces_are_monotonic_and_meet():
    lrs = [lr_at(s, BASE, WARMUP, TOTAL, FLOOR) for s in range(TOTAL + 5)]
    warmup, decay = lrs[:WARMUP], lrs[WARMUP:TOTAL]
    assert all(a < b for a, b in itertools.pairwise(warmup))
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert lrs[WARMUP - 1] == lrs[WARMUP] == BASE  # warm-up ends at the peak, where the cosine starts
    assert lrs[TOTAL:] == [FLOOR] * 5
    assert lrs[(WARMUP + TOTAL) // 2] == pytest.approx((BASE + FLOOR) / 2)  # cosine midpoint


def test_no_warmup():
    assert lr_at(0, BASE, 0, TOTAL) == BASE


@pytest.mark.parametrize(("warmup", "total"), [(-1, 10), (11, 10), (0, 0)])
def test_bad_arguments_are_refused(warmup, total):
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(0, BASE, warmup, total)


def test_scheduler_follows_lr_at_for_every_group_and_resumes():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": BASE}, {"params": params[1:], "lr": 2 * BASE}])
    scheduler = warmup_cosine(optimizer, WARMUP, TOTAL, min_lr_ratio=FLOOR / BASE)
    for step in range(40):
        lrs = [group["lr"] for group in optimizer.param_groups]
        assert lrs[0] == pytest.approx(_direct(step)) and lrs[1] == pytest.approx(2 * _direct(step))
        optimizer.step()
        scheduler.step()
    state = json.loads(json.dumps(scheduler.state_dict()))  # plain numbers: fits a checkpoint's JSON
    fresh = warmup_cosine(optimizer, WARMUP, TOTAL, min_lr_ratio=FLOOR / BASE)
    fresh.load_state_dict(state)
    fresh.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(_direct(41))

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_train import train
from torch import nn

import umbif.train.checkpoint as ckpt
from umbif.train.checkpoint import (
    CheckpointError,
    check_compatible,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

SCRIPT = Path(__file__).with_name("tiny_train.py")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _trained(steps: int = 2) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    for _ in range(steps):
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_exact_resume_in_process(tmp_path):
    """10 steps straight equal 6 steps (checkpoint at 4, 2 steps lost) + reload into fresh objects + 6 steps,
    bitwise, through AdamW state, the LR schedule, augmentation, dropout and global RNG draws."""
    straight = train(tmp_path / "a", steps=10, every=4)
    train(tmp_path / "b", steps=10, every=4, stop_at=6)
    torch.manual_seed(999), np.random.seed(999), random.seed(999)  # the new process's RNGs are elsewhere
    resumed = train(tmp_path / "b", steps=10, every=4, resume=True)
    _assert_same(straight, resumed)
    assert not torch.equal(straight["1.weight"], train(tmp_path / "c", steps=6, every=4)["1.weight"])


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, str(SCRIPT), "--steps", "12", "--every", "3"]
    straight = subprocess.Popen([*command, str(tmp_path / "a")], env=env)
    killed = subprocess.Popen([*command, str(tmp_path / "b"), "--delay", "0.15"], env=env)
    deadline = time.monotonic() + 30
    while latest_checkpoint(tmp_path / "b") is None or latest_checkpoint(tmp_path / "b").name < "step_000006":
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (tmp_path / "b" / "final.safetensors").exists()
    subprocess.run([*command, str(tmp_path / "b"), "--resume"], env=env, check=True, timeout=60)
    assert straight.wait(timeout=60) == 0
    assert (tmp_path / "a" / "final.safetensors").read_bytes() == (tmp_path / "b" / "final.safetensors").read_bytes()
    # keep=2: only the last two checkpoints remain
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*")) == ["step_000009", "step_000012"]


def test_checkpoint_files_and_names(tmp_path):
    model, optimizer, scheduler = _trained()
    generator = torch.Generator().manual_seed(5)
    folder = save_checkpoint(
        tmp_path, 7, model, optimizer, scheduler, config={"lr": 0.1}, extra={"epoch": 2}, generators={"aug": generator}
    )
    assert folder == tmp_path / "checkpoints" / "step_000007"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000007\n"
    assert set(load_file(folder / "optimizer.safetensors")) == {
        f"state.{i}.{key}" for i in range(4) for key in ("step", "exp_avg", "exp_avg_sq")
    }
    assert set(load_file(folder / "rng.safetensors")) == {"torch", "generator.aug"}
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] == 7 and state["config"] == {"lr": 0.1} and state["extra"] == {"epoch": 2}
    assert state["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    assert state["scheduler"]["last_epoch"] == 2
    assert "torch" in state["provenance"]["versions"]


def test_load_restores_everything_without_unpickling(tmp_path, monkeypatch):
    model, optimizer, scheduler = _trained()
    generator = torch.Generator().manual_seed(5)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    torch.manual_seed(42)
    save_checkpoint(
        tmp_path, 2, model, optimizer, scheduler, scaler=scaler, config={"lr": 0.1}, generators={"aug": generator}
    )
    expected_draws = torch.rand(3), np.random.rand(), random.random(), torch.rand(3, generator=generator)

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    fresh, fresh_optimizer, fresh_scheduler = _trained(steps=0)
    fresh_generator, fresh_scaler = torch.Generator(), torch.amp.GradScaler("cpu")
    state = load_checkpoint(
        tmp_path,
        fresh,
        fresh_optimizer,
        fresh_scheduler,
        scaler=fresh_scaler,
        generators={"aug": fresh_generator},
        config={"lr": 0.1},
    )
    assert fresh_scaler.state_dict() == scaler.state_dict()
    assert state["step"] == 2 and state["path"] == str(tmp_path / "checkpoints" / "step_000002")
    _assert_same(model.state_dict(), fresh.state_dict())
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]  # betas a tuple again
    for index, entry in saved["state"].items():
        _assert_same(entry, loaded["state"][index])
    draws = torch.rand(3), np.random.rand(), random.random(), torch.rand(3, generator=fresh_generator)
    assert torch.equal(draws[0], expected_draws[0]) and torch.equal(draws[3], expected_draws[3])
    assert draws[1:3] == expected_draws[1:3]


def test_plateau_scheduler_with_infinite_best_round_trips(tmp_path):
    model, optimizer, _ = _trained(steps=0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    save_checkpoint(tmp_path, 1, model, optimizer, plateau)
    fresh, fresh_optimizer, _ = _trained(steps=0)
    fresh_plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(fresh_optimizer)
    load_checkpoint(tmp_path, fresh, fresh_optimizer, fresh_plateau)
    assert fresh_plateau.best == float("inf")


def test_tied_weights_round_trip(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    save_checkpoint(tmp_path, 1, model)
    fresh = Tied()
    load_checkpoint(tmp_path, fresh)
    assert torch.equal(fresh.head.weight, model.embed.weight)
    assert fresh.head.weight is fresh.embed.weight


def test_keep_last_k_and_latest(tmp_path):
    model = nn.Linear(2, 2)
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, step, model, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000004", "step_000005"]
    # a run resumed from step 4 saves step 5 again: replaced in place
    with torch.no_grad():
        model.weight.fill_(7.0)
    save_checkpoint(tmp_path, 5, model, keep=2)
    fresh = nn.Linear(2, 2)
    load_checkpoint(tmp_path, fresh)
    assert torch.equal(fresh.weight, torch.full((2, 2), 7.0))


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, scheduler = _trained()
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", crash)  # dies after model.safetensors, before the rest
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, optimizer, scheduler)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001"]
    assert latest_checkpoint(tmp_path) == root / "step_000001"


@pytest.mark.parametrize("pointer", [None, "step_000009"], ids=["missing", "dangling"])
def test_latest_falls_back_to_newest_complete_folder(tmp_path, pointer):
    model = nn.Linear(2, 2)
    for step in (3, 12):
        save_checkpoint(tmp_path, step, model, keep=None)
    (tmp_path / "checkpoints" / "step_000020").mkdir()  # no state.json: not a checkpoint
    latest = tmp_path / "checkpoints" / "latest"
    latest.unlink()
    if pointer:
        latest.write_text(pointer)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000012"
    assert latest_checkpoint(tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty", model)


def test_check_compatible_names_differing_keys():
    saved = {"lr": 0.1, "model": {"depth": 12, "width": 384}, "total_steps": 100, "shape": [4, 4]}
    check_compatible(saved, {**saved, "total_steps": 500, "shape": (4, 4)})  # ignored key; tuple == list
    with pytest.raises(CheckpointError) as error:
        check_compatible(saved, {**saved, "lr": 0.2, "model": {"depth": 6, "width": 384}, "seed": 1})
    message = str(error.value)
    assert "lr (saved 0.1, now 0.2)" in message and "model.depth (saved 12, now 6)" in message
    assert "seed (absent in the checkpoint, now 1)" in message and "width" not in message
    check_compatible(saved, {**saved, "lr": 0.2}, ignore=("lr",))


def test_load_refuses_mismatches_before_touching_the_model(tmp_path):
    model, optimizer, _ = _trained()
    save_checkpoint(tmp_path, 2, model, optimizer, config={"lr": 0.1})
    fresh, fresh_optimizer, _ = _trained(steps=0)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"lr \(saved 0.1, now 0.5\)"):
        load_checkpoint(tmp_path, fresh, config={"lr": 0.5})
    _assert_same(before, fresh.state_dict())
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(tmp_path, nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(CheckpointError, match="size mismatch"):
        load_checkpoint(tmp_path, nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
    with pytest.raises(CheckpointError, match="holds AdamW state, the run uses SGD"):
        load_checkpoint(tmp_path, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    with pytest.raises(CheckpointError, match="no scheduler state"):
        load_checkpoint(tmp_path, fresh, fresh_optimizer, torch.optim.lr_scheduler.StepLR(fresh_optimizer, 1))

"""A run's life on a cluster, piece by piece: which checkpoint each resume mode takes, the accumulation that keeps
a global batch at another number of processes (or the message when none does), signals that only raise a flag,
and checkpoints written in the background from a copy taken at the call."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import umbif.train.lifecycle as lifecycle
from umbif.train.checkpoint import capture_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from umbif.train.lifecycle import AsyncCheckpointer, StopSignal, find_checkpoint, fit_global_batch


@pytest.mark.parametrize(
    ("resume", "has_checkpoint", "outcome"),
    [
        ("auto", False, None),
        ("auto", True, "step_000002"),
        ("yes", True, "step_000002"),
        (True, True, "step_000002"),
        ("yes", False, "no checkpoint to resume from"),
        ("no", False, None),
        (False, False, None),
        ("no", True, "already holds a run"),
        ("maybe", False, "auto, yes or no"),
    ],
)
def test_resume_modes(tmp_path: Path, resume, has_checkpoint: bool, outcome: str | None) -> None:
    if has_checkpoint:
        save_checkpoint(tmp_path, 2, nn.Linear(2, 2))
    if outcome is None or outcome.startswith("step_"):
        found = find_checkpoint(tmp_path, resume)
        assert (found.name if found is not None else None) == outcome
    else:
        with pytest.raises(ValueError, match=outcome):
            find_checkpoint(tmp_path, resume)


SAVED = {"global_batch": 16, "batch_size": 4, "accum_steps": 1, "world_size": 4}


@pytest.mark.parametrize(("world_size", "accum"), [(4, 1), (2, 2), (1, 4)])
def test_the_global_batch_is_kept_through_accumulation(world_size: int, accum: int) -> None:
    assert fit_global_batch(SAVED, 4, world_size, Path("ckpt")) == accum


def test_a_global_batch_the_processes_cannot_make_is_refused_with_what_to_set() -> None:
    with pytest.raises(ValueError) as error:
        fit_global_batch(SAVED, 4, 3, Path("run/checkpoints/step_000010"))
    message = str(error.value)
    assert "global batch of 16 exams per step (4 per process x 1 accumulation steps x 4 processes)" in message
    assert "3 processes of 4" in message and "Resume on 1 or 2 or 4 processes" in message


def test_signals_raise_a_flag_and_the_old_handlers_come_back() -> None:
    before = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGUSR1", "SIGTERM")}
    with StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process without the handler
        assert stop.requested and stop.name == "SIGUSR1"
    assert {name: signal.getsignal(getattr(signal, name)) for name in before} == before


def test_outside_the_main_thread_nothing_is_installed() -> None:
    seen = []

    def run() -> None:
        with StopSignal() as stop:
            seen.append(signal.getsignal(signal.SIGUSR1) == stop._handle)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [False]


def test_a_snapshot_is_a_copy_never_the_live_tensors() -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    snapshot = capture_checkpoint(1, model, optimizer)
    before = {k: v.clone() for k, v in snapshot.model.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    optimizer.step()
    assert all(torch.equal(before[k], snapshot.model[k]) for k in before)
    assert not torch.equal(snapshot.optimizer["state.0.exp_avg"], optimizer.state[model.weight]["exp_avg"])


def test_background_writes_hold_the_state_of_the_call(tmp_path: Path, monkeypatch) -> None:
    """Weights changed right after save() are not in the checkpoint; the next save waits for the write before it;
    leaving the block waits for the last one."""
    model = nn.Linear(3, 2)
    release = threading.Event()
    write = lifecycle.write_checkpoint

    def slow_write(*args, **kwargs):
        release.wait(10)
        return write(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "write_checkpoint", slow_write)
    with AsyncCheckpointer(tmp_path, keep=2) as checkpointer:
        checkpointer.save(1, model)
        saved = model.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)  # training goes on while the write waits
        assert latest_checkpoint(tmp_path) is None
        release.set()
        checkpointer.save(2, model)
    assert checkpointer.last == tmp_path / "checkpoints" / "step_000002"
    assert torch.equal(load_file(str(tmp_path / "checkpoints" / "step_000001" / "model.safetensors"))["weight"], saved)
    fresh = nn.Linear(3, 2)
    load_checkpoint(tmp_path, fresh)
    assert torch.equal(fresh.weight, model.weight)


def test_a_failed_background_write_is_raised_on_the_training_thread(tmp_path: Path, monkeypatch) -> None:
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lifecycle, "write_checkpoint", full_disk)
    checkpointer = AsyncCheckpointer(tmp_path)
    checkpointer.save(1, nn.Linear(2, 2))
    with pytest.raises(OSError, match="No space left"):
        checkpointer.wait()

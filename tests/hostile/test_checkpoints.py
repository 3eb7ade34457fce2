"""Hostile or damaged checkpoint folders (issue 14, classes 1 and 7): a ``latest`` pointer (or a linked step folder)
that leads to another run is refused by resume and export, and a truncated newest checkpoint is passed over, with a
warning, for the previous intact one, from which training resumes exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from umbif.cli import app
from umbif.models.umbif import ModelConfig, UMBIFPretrainer
from umbif.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from umbif.train.export import export_encoder
from umbif.train.pretrain import PretrainConfig

TINY = ModelConfig(
    image_size=(16, 16, 16), patch_size=8, dim=24, depth=1, heads=3, decoder_dim=12, decoder_depth=1, decoder_heads=2
)
CONFIG = PretrainConfig(model=TINY, total_steps=2)
FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")


def _pretrain_run(run_dir: Path, seed: int, steps: tuple[int, ...] = (1, 2)) -> dict[int, dict[str, torch.Tensor]]:
    """Checkpoints of a pretraining run at ``steps`` (weights moved between them); the encoder state at each."""
    torch.manual_seed(seed)
    model = UMBIFPretrainer(TINY)
    optimizer = torch.optim.AdamW(model.parameters())
    encoders = {}
    for step in steps:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01 * step)
        save_checkpoint(run_dir, step, model, optimizer, config=CONFIG.to_dict(), keep=None)
        encoders[step] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    return encoders


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """This run (steps 1, 2) and another run beside it (step 100) whose weights must never be read for this one."""
    _pretrain_run(tmp_path / "this_run", seed=0)
    _pretrain_run(tmp_path / "other_run", seed=1, steps=(100,))
    return tmp_path / "this_run", tmp_path / "other_run"


@pytest.mark.parametrize(
    "pointer",
    [
        "../../other_run/checkpoints/step_000100",
        "step_000002/../../../other_run/checkpoints/step_000100",
        "{other}/checkpoints/step_000100",  # an absolute path
    ],
)
def test_a_latest_pointer_out_of_the_run_is_refused(runs: tuple[Path, Path], tmp_path: Path, pointer: str) -> None:
    """Broken promise: `latest` was followed wherever it led, so `umbif export` (and `pretrain --resume`) read
    another run's weights and exported them as this run's encoder."""
    this_run, other_run = runs
    (this_run / "checkpoints" / "latest").write_text(pointer.format(other=other_run) + "\n")
    with pytest.raises(CheckpointError, match=r"latest names .*not a checkpoint folder of this run"):
        latest_checkpoint(this_run)
    with pytest.raises(CheckpointError, match="not a checkpoint folder of this run"):
        load_checkpoint(this_run, UMBIFPretrainer(TINY))
    with pytest.raises(CheckpointError, match="not a checkpoint folder of this run"):
        export_encoder(this_run, tmp_path / "exported")
    result = CliRunner().invoke(app, ["export", str(this_run), "--out", str(tmp_path / "exported")])
    assert result.exit_code == 1 and "not a checkpoint folder of this run" in result.output
    assert not (tmp_path / "exported").exists()


def test_a_step_folder_linked_to_another_run_is_refused(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Broken promise: a ``step_*`` folder that is a link to another run's checkpoint was taken as this run's."""
    this_run, other_run = runs
    os.symlink(other_run / "checkpoints" / "step_000100", this_run / "checkpoints" / "step_000100")
    (this_run / "checkpoints" / "latest").write_text("step_000100\n")
    with pytest.raises(CheckpointError, match="link out of the run folder"):
        export_encoder(this_run, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("damaged", FILES)
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damaged: str) -> None:
    """Broken promise: a newest checkpoint cut short mid-file (a full disk, an interrupted copy) made `export` and
    `--resume` fail although the previous checkpoint was intact; now they take that one, with a warning."""
    encoders = _pretrain_run(tmp_path / "run", seed=0)
    _truncate(tmp_path / "run" / "checkpoints" / "step_000002" / damaged)
    with pytest.warns(UserWarning, match=rf"step_000002.*{damaged}.*using step_000001"):
        assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "step_000001"
    with pytest.warns(UserWarning, match="passed over"):
        path, step = export_encoder(tmp_path / "run", tmp_path / "exported")
    assert step == 1
    assert _same(load_file(path / "encoder.safetensors"), encoders[1])
    with pytest.warns(UserWarning, match="passed over"):
        state = load_checkpoint(tmp_path / "run", UMBIFPretrainer(TINY), restore_rng=False)
    assert state["step"] == 1
    # the damaged folder named on its own is refused, naming the damaged file
    with pytest.raises(CheckpointError, match=rf"step_000002.*{damaged}"):
        load_checkpoint(tmp_path / "run" / "checkpoints" / "step_000002", UMBIFPretrainer(TINY))


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    """Broken promise: with every checkpoint truncated, resume failed inside safetensors with no word on which
    file; now the error names each damaged checkpoint."""
    _pretrain_run(tmp_path / "run", seed=0)
    for step in (1, 2):
        _truncate(tmp_path / "run" / "checkpoints" / f"step_00000{step}" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"every checkpoint .* is damaged: .*step_000002.*step_000001"):
        latest_checkpoint(tmp_path / "run")


def _train(run_dir: Path, steps: int, stop_at: int | None = None, resume: bool = False) -> dict[str, torch.Tensor]:
    """A tiny loop with every kind of state: AdamW moments, a named data generator, the global RNG (dropout)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    start = 0
    if resume:
        start = load_checkpoint(run_dir, model, optimizer, generators={"data": generator})["step"]
    for step in range(start, steps):
        if step == stop_at:
            break
        x = torch.randn(4, 8, generator=generator)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 2 == 0:
            save_checkpoint(run_dir, step + 1, model, optimizer, generators={"data": generator}, keep=3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resuming_past_a_truncated_checkpoint_is_still_exact(tmp_path: Path) -> None:
    """Broken promise: a run whose newest checkpoint was truncated could not be resumed at all; now it resumes
    from the previous checkpoint and ends with exactly the weights of a run that never stopped."""
    straight = _train(tmp_path / "straight", steps=10)
    _train(tmp_path / "broken", steps=10, stop_at=7)  # checkpoints at steps 2, 4, 6
    _truncate(tmp_path / "broken" / "checkpoints" / "step_000006" / "model.safetensors")
    with pytest.warns(UserWarning, match="step_000006.*using step_000004"):
        resumed = _train(tmp_path / "broken", steps=10, resume=True)
    assert _same(straight, resumed)
    # the resumed run wrote step 6 again, intact, and points at its newest checkpoint
    assert latest_checkpoint(tmp_path / "broken") == tmp_path / "broken" / "checkpoints" / "step_000010"

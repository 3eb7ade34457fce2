"""`umbif pretrain` end to end on a tiny synthetic cache: it learns, it writes what it promises, a run
killed with SIGKILL and resumed ends with exactly the weights of a run that never stopped, the same
command runs under torchrun with two processes, and `umbif export` gives a loadable encoder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import umbif
from umbif.cli import app
from umbif.config import PreprocessConfig, SynthConfig
from umbif.data.cache import run_preprocess
from umbif.data.manifest import Manifest
from umbif.data.synthetic.generate import generate
from umbif.train.logging import read_metrics
from umbif.train.pretrain import PretrainConfig, pretrain

MODEL = {"image_size": [32, 32, 32], "patch_size": 8, "dim": 32, "depth": 2, "heads": 2, "decoder_dim": 32,
         "decoder_depth": 1, "decoder_heads": 2, "proj_dim": 16}  # fmt: skip


def _config(**overrides) -> PretrainConfig:
    settings = {"model": MODEL, "batch_size": 2, "total_steps": 6, "warmup_steps": 2, "lr": 1e-3, "log_every": 1,
                "checkpoint_every": 3, "preview_every": 0, "seed": 7} | overrides  # fmt: skip
    return PretrainConfig.model_validate(settings)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Eight synthetic exams at 4 mm, cached on a 32^3 grid."""
    root = tmp_path_factory.mktemp("pretrain")
    generate(SynthConfig(exams=8, seed=5, spacing=4.0), root / "synth")
    manifest = Manifest.read(root / "synth" / "manifest.csv")
    report = run_preprocess(manifest, root / "cache", PreprocessConfig(spacing=(4.0,) * 3, shape=(32, 32, 32)))
    assert not report.failures
    return root


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def test_run_learns_and_writes_everything(cache: Path, tmp_path: Path) -> None:
    config = _config(total_steps=30, checkpoint_every=10, preview_every=15, keep_checkpoints=2)
    result = pretrain(cache / "cache", tmp_path / "run", config)
    assert result["step"] == 30
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert {"loss", "loss_rec", "loss_con", "lr", "grad_norm"} <= set(metrics[0])
    first, last = (sum(m["loss_rec"] for m in part) / 5 for part in (metrics[:5], metrics[-5:]))
    assert last < first  # reconstruction improves on the same few exams
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == ["step_000020", "step_000030"]
    assert sorted(p.name for p in (tmp_path / "run" / "previews").iterdir()) == ["step_000015.png", "step_000030.png"]
    assert (tmp_path / "run" / "config.json").is_file()


@pytest.mark.parametrize("objective", ["mae", "contrastive"])
def test_ablation_objectives_train(cache: Path, tmp_path: Path, objective: str) -> None:
    config = _config(model=MODEL | {"objective": objective}, total_steps=2)
    result = pretrain(cache / "cache", tmp_path / "run", config)
    assert (result["loss_con"] == 0) == (objective == "mae") and (result["loss_rec"] == 0) == (objective != "mae")


def test_killed_run_resumes_to_the_same_weights(cache: Path, tmp_path: Path) -> None:
    config = _config(total_steps=40, checkpoint_every=4)
    pretrain(cache / "cache", tmp_path / "straight", config)

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(config.model_dump_json())  # JSON is YAML
    manifest, out = str(cache / "synth" / "manifest.csv"), str(tmp_path / "killed")
    command = [sys.executable, "-m", "umbif", "pretrain", manifest, "--cache", str(cache / "cache"), "--out", out,
               "--config", str(yaml_file)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step_000008").exists() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = sorted((tmp_path / "killed" / "checkpoints").glob("step_*"))
    assert done and done[-1].name < "step_000040"

    result = CliRunner().invoke(app, [*command[3:], "--resume"])
    assert result.exit_code == 0, result.output
    straight, resumed = _weights(tmp_path / "straight", 40), _weights(tmp_path / "killed", 40)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_resume_refuses_other_settings_and_a_used_folder(cache: Path, tmp_path: Path) -> None:
    pretrain(cache / "cache", tmp_path / "run", _config(total_steps=3))
    with pytest.raises(ValueError, match="already holds a run"):
        pretrain(cache / "cache", tmp_path / "run", _config(total_steps=3))
    with pytest.raises(ValueError, match="mask_ratio"):
        pretrain(cache / "cache", tmp_path / "run", _config(model=MODEL | {"mask_ratio": 0.5}), resume=True)
    with pytest.raises(ValueError, match="no checkpoint"):
        pretrain(cache / "cache", tmp_path / "fresh", _config(), resume=True)


def test_resume_refuses_a_cache_rebuilt_with_other_settings(cache: Path, tmp_path: Path) -> None:
    """The run's data fingerprint holds the cache's plan: the same exams preprocessed otherwise are other data."""
    pretrain(cache / "cache", tmp_path / "run", _config(total_steps=3))
    manifest = Manifest.read(cache / "synth" / "manifest.csv")
    rebuilt = tmp_path / "rebuilt"
    run_preprocess(manifest, rebuilt, PreprocessConfig(spacing=(3.5,) * 3, shape=(32, 32, 32)))
    with pytest.raises(ValueError, match="data fingerprint differs"):
        pretrain(rebuilt, tmp_path / "run", _config(total_steps=6), resume=True)


def test_export_gives_a_loadable_encoder(cache: Path, tmp_path: Path) -> None:
    pretrain(cache / "cache", tmp_path / "run", _config(total_steps=3))
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    encoder = umbif.load_encoder(tmp_path / "model")
    images, present = torch.randn(2, 4, 32, 32, 32), torch.tensor([[1, 1, 1, 1], [0, 1, 0, 1]], dtype=torch.bool)
    assert encoder(images, present).shape == (2, MODEL["dim"])


def test_same_command_under_torchrun_with_two_processes(cache: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(_config(total_steps=3, batch_size=2).model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    command = [torchrun, "--nproc_per_node", "2", "--master_port", port, "-m", "umbif", "pretrain",
               str(cache / "synth" / "manifest.csv"), "--cache", str(cache / "cache"), "--out", str(tmp_path / "ddp"),
               "--config", str(yaml_file)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (tmp_path / "ddp" / "checkpoints" / "step_000003" / "model.safetensors").is_file()
    assert [m["step"] for m in read_metrics(tmp_path / "ddp")] == [1, 2, 3]  # rank 0 alone writes
    assert done.stdout.count("done: step 3") == 1  # and alone talks


def test_cli_options_win_over_the_yaml_and_derive_the_warm_up(cache: Path, tmp_path: Path) -> None:
    """A YAML that sets sizes but no warm-up: --steps 2 gets a fitting warm-up, --preset replaces the sizes."""
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model:\n  image_size: [32, 32, 32]\n  patch_size: 8\n  dim: 48\n  heads: 2\n")
    base = ["pretrain", str(cache / "synth" / "manifest.csv"), "--cache", str(cache / "cache"), "--config",
            str(yaml_file), "--steps", "2", "--batch-size", "2"]  # fmt: skip
    own = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "own")])
    assert own.exit_code == 0, own.output
    assert "encoder 48 wide" in own.output
    preset = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "preset"), "--preset", "tiny"])
    assert preset.exit_code == 0, preset.output
    assert "encoder 96 wide" in preset.output


def test_cli_crop_option(cache: Path, tmp_path: Path) -> None:
    """--crop reaches the config: an unknown mode is refused, tumour crops are named in the description."""
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model:\n  image_size: [32, 32, 32]\n  patch_size: 8\n  dim: 48\n  heads: 2\n")
    base = ["pretrain", str(cache / "synth" / "manifest.csv"), "--cache", str(cache / "cache"), "--config",
            str(yaml_file), "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "run")]  # fmt: skip
    bad = CliRunner().invoke(app, [*base, "--crop", "sideways"])
    assert bad.exit_code == 1 and "bad settings" in bad.output and "crop" in bad.output
    tumour = CliRunner().invoke(app, [*base, "--crop", "tumour"])
    assert tumour.exit_code == 0, tumour.output
    assert "tumour" in tumour.output

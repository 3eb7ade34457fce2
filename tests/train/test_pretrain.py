"""`umbif pretrain` end to end on a tiny synthetic cache: it learns, it writes what it promises, a run
killed with SIGKILL and resumed ends with exactly the weights of a run that never stopped, the same
command runs under torchrun with two processes, and `umbif export` gives a loadable encoder.

Cluster life (issue 15): a job stopped by SIGUSR1 and requeued with the same command line ends with exactly
the weights of a run that never stopped; a signal to one of two ranks (started as `srun` starts them) stops
both after the same step with one checkpoint, and that run continues on one process with two accumulation
steps to the weights of the two-process run."""

from __future__ import annotations

import json
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
from umbif.eval.methods import readout_of
from umbif.models.io import pretraining_of
from umbif.train.checkpoint import latest_checkpoint
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
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (record["world_size"], record["global_batch"], record["accum_steps"]) == (1, 2, 1)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_000030" / "state.json").read_text())
    assert (state["extra"]["world_size"], state["extra"]["global_batch"]) == (1, 2)


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
    state_file = tmp_path / "run" / "checkpoints" / "step_000003" / "state.json"
    state = json.loads(state_file.read_text())
    del state["extra"]["data_order"]  # as written before issue 15
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="earlier umbif whose batches depended on the number of processes"):
        pretrain(cache / "cache", tmp_path / "run", _config(total_steps=6), resume="auto")


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
    assert pretraining_of(tmp_path / "model") == {"crop": "random", "image_size": [32, 32, 32], "steps": 3}
    assert readout_of(tmp_path / "model") == "lesion"
    (tmp_path / "model" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON.*export the encoder again"):
        pretraining_of(tmp_path / "model")
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


def _wait_for_step(run: Path, step: int, processes: list[subprocess.Popen], timeout: float = 180) -> None:
    """Until rank 0 has logged ``step``; fails if a process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in processes):
        metrics = read_metrics(run)
        if metrics and metrics[-1]["step"] >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"no step {step} in {run} (return codes {[p.poll() for p in processes]})")


def _same_weights(a: Path, b: Path, step: int) -> None:
    first, second = _weights(a, step), _weights(b, step)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_a_signalled_job_requeued_with_its_command_line_ends_like_an_uninterrupted_run(
    cache: Path, tmp_path: Path
) -> None:
    """SIGUSR1 to the job's process group (as a scheduler signals every process of a job, the loader's worker
    included): a checkpoint at the next step, exit code 75; the same command line run again (`--resume-mode auto`
    both times) ends with bitwise the weights of a run that never stopped (and had no loader worker), and once
    more after the end does nothing."""
    config = _config(total_steps=40, checkpoint_every=8)
    pretrain(cache / "cache", tmp_path / "straight", config)

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(config.model_dump_json())
    command = [sys.executable, "-m", "umbif", "pretrain", str(cache / "synth" / "manifest.csv"), "--cache",
               str(cache / "cache"), "--out", str(tmp_path / "job"), "--config", str(yaml_file), "--num-workers", "1",
               "--prefetch", "1", "--resume-mode", "auto"]  # fmt: skip
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_step(tmp_path / "job", 3, [job])
    os.killpg(job.pid, signal.SIGUSR1)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 75, err[-3000:]
    stopped = read_metrics(tmp_path / "job")[-1]["step"]
    assert 3 <= stopped < 40 and f"stopped by SIGUSR1 at step {stopped}" in err
    assert latest_checkpoint(tmp_path / "job") == tmp_path / "job" / "checkpoints" / f"step_{stopped:06d}"

    requeued = CliRunner().invoke(app, command[3:])
    assert requeued.exit_code == 0, requeued.output
    assert [m["step"] for m in read_metrics(tmp_path / "job")] == list(range(1, 41))
    _same_weights(tmp_path / "straight", tmp_path / "job", 40)
    again = CliRunner().invoke(app, command[3:])  # requeued once more after the end: nothing left to do
    assert again.exit_code == 0 and "step 40: the run in" in again.output and "already complete" in again.output


def _free_port() -> str:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return str(free.getsockname()[1])


def _launch(command: list[str], tasks: int) -> list[subprocess.Popen]:
    """``tasks`` processes as ``srun`` starts them (Slurm's variables, no torchrun's); one process: no launcher."""
    launchers = ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launchers)} | {"OMP_NUM_THREADS": "1"}
    slurm = {"SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_NTASKS": str(tasks), "SLURM_JOB_ID": "15",
             "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1", "MASTER_PORT": _free_port()}  # fmt: skip
    return [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env | ({**slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} if tasks > 1 else {}))
        for r in range(tasks)
    ]  # fmt: skip


def _finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """(return code, stderr) of each process, once it has ended."""
    errors = [p.communicate(timeout=180)[1] for p in processes]
    return [(p.returncode, err) for p, err in zip(processes, errors, strict=True)]


def test_a_signal_to_one_rank_stops_both_and_the_run_continues_on_one_process(cache: Path, tmp_path: Path) -> None:
    """Two ranks started with Slurm's variables; SIGUSR1 to rank 1 alone: both stop after the same step, rank 0
    writes one checkpoint there, both exit 75. The run then continues on one process: two accumulation steps keep
    the global batch of 4, the batches are the same, and the weights at the end equal those of the two-process
    run that never stopped, bitwise (MAE: the loss of each rank's half needs no other rank; DDP's mean of two
    gradients and the sum of two half-gradients are the same floating-point additions)."""
    config = _config(model=MODEL | {"objective": "mae"}, total_steps=24, checkpoint_every=8, amp="off")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(config.model_dump_json())

    def command(out: str) -> list[str]:
        return [sys.executable, "-m", "umbif", "pretrain", str(cache / "synth" / "manifest.csv"), "--cache",
                str(cache / "cache"), "--out", str(tmp_path / out), "--config", str(yaml_file), "--resume-mode",
                "auto"]  # fmt: skip

    for code, err in _finish(_launch(command("straight"), 2)):
        assert code == 0, err[-3000:]

    ranks = _launch(command("job"), 2)
    _wait_for_step(tmp_path / "job", 2, ranks)
    ranks[1].send_signal(signal.SIGUSR1)
    ended = _finish(ranks)
    stopped = read_metrics(tmp_path / "job")[-1]["step"]
    assert stopped < 24 and [code for code, _ in ended] == [75, 75], ended[0][1][-3000:] + ended[1][1][-3000:]
    assert "stopped by SIGUSR1" in ended[1][1] and "a signal to another rank" in ended[0][1]
    assert all(f"at step {stopped}" in err for _, err in ended)
    assert latest_checkpoint(tmp_path / "job") == tmp_path / "job" / "checkpoints" / f"step_{stopped:06d}"

    [(code, err)] = _finish(_launch(command("job"), 1))
    assert code == 0, err[-3000:]
    assert "global batch 4 kept at 1 processes with 2 accumulation steps (was 1)" in err
    _same_weights(tmp_path / "straight", tmp_path / "job", 24)


def test_a_resume_in_the_middle_of_a_read_is_exact(cache: Path, tmp_path: Path) -> None:
    """Two view pairs per read: a checkpoint at step 3 falls between the two steps of a read; resumed there, the
    run reads the group again, skips the used view and ends with the weights of a run that never stopped."""
    config = _config(views_per_read=2, total_steps=6, checkpoint_every=3)
    pretrain(cache / "cache", tmp_path / "straight", config)

    def stop_at_four(step: int, total: int, losses: dict) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cache / "cache", tmp_path / "run", config, resume="auto", on_step=stop_at_four)
    assert latest_checkpoint(tmp_path / "run").name == "step_000003"
    pretrain(cache / "cache", tmp_path / "run", config, resume="auto")
    _same_weights(tmp_path / "straight", tmp_path / "run", 6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--resume", "--resume-mode", "auto"], "contradicts --resume-mode auto"),
        (["--resume-mode", "sometimes"], "must be auto, yes or no"),
        (["--num-workers", "-1"], "num_workers"),
        (["--prefetch", "0"], "prefetch_factor"),
    ],
)
def test_cli_lifecycle_and_loader_options_are_checked(cache: Path, tmp_path: Path, options: list, message: str) -> None:
    base = ["pretrain", str(cache / "synth" / "manifest.csv"), "--cache", str(cache / "cache"), "--out",
            str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(app, [*base, *options])
    assert result.exit_code == 1 and "bad settings" in result.output and message in result.output
    assert not (tmp_path / "run").exists()

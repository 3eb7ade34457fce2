"""A pretraining run's life on a cluster: start or resume with one command line, stop cleanly when the scheduler
asks, continue at another number of processes with the same global batch, and write checkpoints while training
goes on.

- ``resume="auto"`` (:func:`find_checkpoint`) continues the run folder's latest checkpoint when there is one and
  starts otherwise, so a requeued job reuses the command line that started it.
- :class:`StopSignal`: SIGUSR1 (what ``sbatch --signal=USR1@120`` sends before the time limit) and SIGTERM (what
  Slurm sends on preemption and ``scancel``) only raise a flag; the loop agrees on it over all ranks at the next
  step, writes a checkpoint there and raises :class:`Preempted`; the command line exits with
  :data:`REQUEUE_EXIT`.
- :func:`fit_global_batch`: a checkpoint records its global batch (``batch_size * accum_steps * world_size``);
  at another number of processes the accumulation is chosen to keep it, or the resume is refused, naming both
  sizes and what to set.
- :class:`AsyncCheckpointer`: the state is copied to CPU memory on the training thread, and written (safetensors
  + JSON, atomically, :func:`umbif.train.checkpoint.write_checkpoint`) by a background thread.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from umbif.train.checkpoint import Snapshot, capture_checkpoint, latest_checkpoint, write_checkpoint

REQUEUE_EXIT = 75  # EX_TEMPFAIL (sysexits.h): stopped on a signal after a checkpoint; run the same command again
STOP_SIGNALS = ("SIGUSR1", "SIGTERM")
ResumeMode = Literal["auto", "yes", "no"]


class Preempted(RuntimeError):
    """The run stopped on SIGUSR1 or SIGTERM after writing a checkpoint at ``step``; run it again to continue."""

    def __init__(self, step: int, signal_name: str, checkpoint: Path | None):
        where = f" (checkpoint {checkpoint})" if checkpoint is not None else ""
        super().__init__(f"stopped by {signal_name} at step {step}{where}; run the same command to continue")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint


def find_checkpoint(run_dir: str | Path, resume: bool | ResumeMode) -> Path | None:
    """The checkpoint a run continues from, by ``resume``: ``"auto"`` the latest one if any; ``"yes"`` (or True)
    the latest one, which must exist; ``"no"`` (or False) none, and the folder must not hold a run yet.

    Raises:
        ValueError: ``"yes"`` without a checkpoint, ``"no"`` with one, or an unknown mode.
    """
    mode = ("yes" if resume else "no") if isinstance(resume, bool) else resume
    if mode not in ("auto", "yes", "no"):
        raise ValueError(f"resume must be auto, yes or no, got {resume!r}")
    found = latest_checkpoint(run_dir)
    if mode == "yes" and found is None:
        raise ValueError(
            f"{run_dir} has no checkpoint to resume from; start without --resume (or with --resume-mode auto)"
        )
    if mode == "no" and found is not None:
        raise ValueError(
            f"{run_dir} already holds a run; pass --resume to continue it (--resume-mode auto in a job that may be "
            "requeued) or choose another --out"
        )
    return found if mode != "no" else None


def fit_global_batch(saved_extra: Mapping[str, Any], batch_size: int, world_size: int, where: Path) -> int:
    """The accumulation steps that keep a checkpoint's global batch at ``world_size`` processes of ``batch_size``.

    Args:
        saved_extra: the checkpoint's ``extra`` (``global_batch``, ``world_size``, ``batch_size``, ``accum_steps``).
        where: the checkpoint, for the message.

    Raises:
        ValueError: ``world_size * batch_size`` does not divide the global batch; names both sizes and the
            numbers of processes that would.
    """
    total, per_step = int(saved_extra["global_batch"]), batch_size * world_size
    if total % per_step:
        fits = [n for n in range(1, total // batch_size + 1) if total % (n * batch_size) == 0]
        raise ValueError(
            f"{where} was trained with a global batch of {total} exams per step ({saved_extra['batch_size']} per "
            f"process x {saved_extra['accum_steps']} accumulation steps x {saved_extra['world_size']} processes); "
            f"{world_size} processes of {batch_size} cannot make it up with whole accumulation steps. Resume on "
            f"{' or '.join(map(str, fits))} processes, or start a new run folder"
        )
    return total // per_step


class StopSignal:
    """Within ``with StopSignal() as stop:``, SIGUSR1 and SIGTERM set ``stop.requested`` (and ``stop.name``)
    instead of ending the process; the previous handlers come back at the end. Outside the main thread (where
    Python cannot handle signals) nothing is installed and ``requested`` stays False."""

    def __init__(self) -> None:
        self.requested, self.name = False, ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested, self.name = True, signal.Signals(signum).name  # nothing else: no I/O in a signal handler

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class AsyncCheckpointer:
    """Checkpoints written by a background thread: :meth:`save` copies the state to CPU memory now (the training
    thread waits only for that copy, and for the previous write) and writes it while training goes on. Leaving
    the ``with`` block waits for the last write; an error of the writer is raised by the next :meth:`save` or
    :meth:`wait`.

    Example:
        >>> with AsyncCheckpointer(run_dir, keep=3) as checkpointer:
        ...     checkpointer.save(step, model, optimizer, scheduler, config=config.to_dict())
    """

    def __init__(self, run_dir: str | Path, keep: int | None = 3):
        self.run_dir, self.keep = Path(run_dir), keep
        self.last: Path | None = None  # the newest checkpoint written
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, step: int, model: Any, *args: Any, **kwargs: Any) -> None:
        """:func:`umbif.train.checkpoint.save_checkpoint`'s arguments (but ``keep``, given to the constructor)."""
        self.wait()
        snapshot = capture_checkpoint(step, model, *args, **kwargs)
        self._thread = threading.Thread(target=self._write, args=(snapshot,), name=f"checkpoint-{step}")
        self._thread.start()

    def _write(self, snapshot: Snapshot) -> None:
        try:
            self.last = write_checkpoint(self.run_dir, snapshot, self.keep)
        except BaseException as error:  # handed to the training thread
            self._error = error

    def wait(self) -> Path | None:
        """Block until the pending write is on disk; returns the newest checkpoint written."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.last

    def __enter__(self) -> AsyncCheckpointer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.wait()
        elif self._thread is not None:  # finish the write, but let the loop's own error through
            self._thread.join()

"""Machine-readable training metrics: one JSON object per line in ``RUN/metrics.jsonl``, and TensorBoard
event files in ``RUN/tensorboard/`` when the ``tensorboard`` package is installed. Only rank 0 writes."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from umbif.utils import json_text, write_text_atomic

METRICS_FILE = "metrics.jsonl"
log = logging.getLogger(__name__)
_tensorboard_warned = False


def _number(value: Any) -> Any:
    """Tensors to Python numbers; NaN and infinities to ``None`` (strict JSON has no NaN)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metric records of a run, in order; a last line cut short by a crash is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLogger:
    """Append metrics to ``RUN/metrics.jsonl`` (and TensorBoard when available) on the main rank.

    Each record is written with one ``write`` to a file opened for appending, so a line is complete or
    absent even when the process is killed, and readers (``tail -f``, :func:`read_metrics`) see it at once.

    Args:
        run_dir: the run folder.
        is_main: False on other ranks, which then write nothing.
        resume_step: when resuming from a checkpoint at this step, records of later steps (logged before
            the interruption, and about to be logged again) are removed first.
        tensorboard: also write TensorBoard events when the package is installed.

    Example:
        >>> with MetricsLogger("runs/a", info.is_main) as logger:
        ...     logger.log(step, {"loss": loss, "lr": scheduler.get_last_lr()[0]})
    """

    def __init__(
        self, run_dir: str | Path, is_main: bool = True, resume_step: int | None = None, tensorboard: bool = True
    ):
        self.path = Path(run_dir) / METRICS_FILE
        self.is_main = is_main
        self.start = time.time()
        self._fd: int | None = None
        self._writer: Any = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path.parent) if r.get("step", -1) <= resume_step]
            write_text_atomic(
                self.path, "".join(json_text({k: _number(v) for k, v in r.items()}, indent=None) + "\n" for r in kept)
            )
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if tensorboard:
            purge = None if resume_step is None else resume_step + 1  # TensorBoard drops events from this step on
            self._writer = _tensorboard_writer(Path(run_dir) / "tensorboard", purge)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (numbers or one-element tensors) at optimiser step ``step``."""
        if self._fd is None:
            return
        values = {name: _number(value) for name, value in metrics.items()}
        now = time.time()
        record = {"step": step, "time": round(now, 3), "elapsed": round(now - self.start, 3), **values}
        os.write(self._fd, (json_text(record, indent=None) + "\n").encode())
        if self._writer is not None:
            for name, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensorboard_writer(folder: Path, purge_step: int | None) -> Any:
    """A ``SummaryWriter``, or ``None`` with a one-time console note when tensorboard is not installed."""
    global _tensorboard_warned
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module imports the tensorboard package, which is optional
        if not _tensorboard_warned:
            log.warning(
                "TensorBoard logging is off: the tensorboard package is not installed (pip install tensorboard)"
            )
            _tensorboard_warned = True
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)

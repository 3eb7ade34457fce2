from __future__ import annotations

import json
import logging
import sys

import torch

import umbif.train.logging as metrics_logging
from umbif.train.logging import METRICS_FILE, MetricsLogger, read_metrics


def test_one_complete_json_object_per_line(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": torch.tensor(0.5), "lr": 1e-3})
        logger.log(2, {"loss": float("nan"), "note": "x"})
        lines = (tmp_path / METRICS_FILE).read_text().splitlines()  # visible before close
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 0.5 and records[0]["lr"] == 1e-3 and records[0]["time"] > 0
    assert records[1]["loss"] is None and records[1]["note"] == "x"  # NaN: strict JSON has none


def test_only_the_main_rank_writes(tmp_path):
    with MetricsLogger(tmp_path, is_main=False) as logger:
        logger.log(1, {"loss": 1.0})
    assert not (tmp_path / METRICS_FILE).exists()


def test_resume_drops_records_after_the_checkpoint_and_appends(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 7):
            logger.log(step, {"loss": float(step)})
    with (tmp_path / METRICS_FILE).open("a") as handle:
        handle.write('{"step": 7, "lo')  # a line cut short by a crash
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    with MetricsLogger(tmp_path, resume_step=4) as logger:
        logger.log(5, {"loss": 50.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)][-2:] == [(4, 4.0), (5, 50.0)]


def test_missing_tensorboard_is_said_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(metrics_logging, "_tensorboard_warned", False)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with caplog.at_level(logging.WARNING, logger="umbif.train.logging"):
        MetricsLogger(tmp_path).close()
        MetricsLogger(tmp_path).close()
    assert [r.getMessage() for r in caplog.records].count(
        "TensorBoard logging is off: the tensorboard package is not installed (pip install tensorboard)"
    ) == 1

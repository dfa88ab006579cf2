"""OutlierCallback: when it probes, what reaches the CSV logger, and what the W&B run file holds.

The end-to-end test trains gpt2_tiny with W&B offline and reads the run's transaction log
(``run-*.wandb``) back: a LevelDB-style log of protobuf records (wandb 0.31 ships no Python
reader any more, so a minimal one is below).
"""

from __future__ import annotations

import csv
import json
import os
import struct
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sysout.callbacks import OutlierCallback
from sysout.outliers.keys import GROUPS
from sysout.training.run import train

os.environ.setdefault("SYSOUT_ROOT", str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SYSOUT_SHARED_DIR", str(Path(__file__).resolve().parents[2] / "shared"))
os.environ["WANDB_MODE"] = "offline"

FIGURES = (
    "outliers-activation/layer_curves",
    "outliers-activation/sentence_surface",
    "outliers-attention/sentence_heatmap",
    "outliers-weight/c_proj_row_ratios",
)
TABLE = "outliers-activation/outlier_table"


# ------------------------------------------------------------------------- W&B run-file reader
def wandb_records(path: Path):
    """Yield the raw protobuf records of a W&B transaction log: a 7-byte file header
    (':W&B', magic 0xBEE1, version) then 32 KiB blocks of chunks, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last); block tails < 7 bytes are padding."""
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        elif kind == 4:
            yield parts + chunk
            parts = b""


def wandb_history(path: Path, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The run's history rows; media values (logged as nested keys) come back as dicts.

    W&B's service may still be writing the file when ``wandb.finish`` returns: wait (up to
    ``timeout`` seconds) for the run's exit record before reading."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        records = []
        for raw in wandb_records(path):
            record = pb.Record()
            record.ParseFromString(raw)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout}s"
        time.sleep(0.2)
    rows = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            keys = [item.key] if item.key else list(item.nested_key)
            node = row
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = json.loads(item.value_json)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- end to end
def test_tiny_training_run_logs_outliers_to_wandb_and_csv(compose_train, tmp_path) -> None:
    cfg = compose_train(
        "model=gpt2_tiny",
        "logger=[csv,wandb]",
        "trainer.max_steps=5",
        "trainer.accumulate_grad_batches=2",  # probes follow optimizer steps, not micro-batches
        "trainer.val_check_interval=10",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "data.batch_size=2",
        "data.val_windows=2",
        "test=false",
        "callbacks.outliers.every_n_steps=2",
        "callbacks.outliers.probe_windows=2",
        # an untrained model has no massive activations: loose thresholds fill the table
        "callbacks.outliers.thresholds.abs_threshold=0.0",
        "callbacks.outliers.thresholds.median_ratio=4.0",
    )
    train(cfg)
    expected_steps = [0, 2, 4, 5]  # start, every 2 optimizer steps, end

    # --- CSV: every scalar at the optimizer step it was measured at
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("outliers/summary/max_top1")]
    assert [int(r["step"]) for r in rows] == expected_steps
    for r in rows:
        assert float(r["outliers/summary/max_top1"]) > 0
        assert float(r["outliers/activation/layer_01/top1"]) > 0
        assert 0 < float(r["outliers/attention/layer_00/first_token_share"]) <= 1
        assert float(r["outliers/weight/layer_00/mlp_c_proj/max_row_ratio"]) >= 1
        assert r["outliers/channel/layer_00/ln_1/out/count"] != ""
        assert r["outliers/moments/layer_01/mlp/kurtosis"] != ""
        assert r["outliers/consistency/layer_01/dimension"] != ""
        assert float(r["outliers/summary/probe_seconds"]) > 0
        # Guo et al.'s residual-peak figures, and their growth relative to the step-0 probe
        norm = float(r["outliers/residual/layer_01/first_token_norm"])
        assert norm > 0
        growth = float(r["outliers/residual/layer_01/first_token_norm_vs_step0"])
        assert growth == pytest.approx(
            norm / float(rows[0]["outliers/residual/layer_01/first_token_norm"])
        )
    csv_top1 = {int(r["step"]): float(r["outliers/summary/max_top1"]) for r in rows}
    # training moved the weights, so the probes differ
    assert len(set(csv_top1.values())) > 1

    # --- W&B: the same figures at the same steps, one section per outlier type, plus images
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history = wandb_history(runs[0])
    probes = [h for h in history if "outliers-summary/max_top1" in h]
    assert [h["trainer/global_step"] for h in probes] == expected_steps
    for h in probes:
        step = h["trainer/global_step"]
        assert h["outliers-summary/max_top1"] == pytest.approx(csv_top1[step], rel=1e-6)
        assert not any(k.startswith("outliers/") for k in h)  # W&B names carry the section
        sections = {k.split("/")[0] for k in h if k.startswith("outliers-")}
        assert sections == {f"outliers-{group}" for group in GROUPS}
        # where each probe sequence's sink sits, as a histogram per layer
        assert h["outliers-attention/layer_00/top_key_positions"]["_type"] == "histogram"
        for key in FIGURES:
            image = h[key]
            assert image["_type"] == "image-file" and image["format"] == "png"
            assert (runs[0].parent / "files" / image["path"]).stat().st_size > 1000
        table = h[TABLE]
        assert "table" in table["_type"]
    # the outlier table holds (step, layer, position, token, dim, value) rows
    table_files = sorted((runs[0].parent / "files").rglob("*.table.json"))
    assert table_files
    content = json.loads(table_files[-1].read_text())
    cols = content["columns"]
    assert cols[:1] == ["step"] and {"layer", "position", "token", "dim", "value"} <= set(cols)
    assert content["data"] and all(row[0] in expected_steps for row in content["data"])


# --------------------------------------------------------------------------- when it probes
class _Recorder(OutlierCallback):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps: list[int] = []

    def _probe(self, trainer, pl_module) -> None:  # record instead of probing
        self._last_step = trainer.global_step
        self.steps.append(trainer.global_step)


def _drive(callback: OutlierCallback, micro_batches: int, accumulate: int, rank: int = 0):
    trainer = SimpleNamespace(global_step=0, is_global_zero=rank == 0, loggers=[])
    callback.on_train_start(trainer, None)
    for i in range(micro_batches):
        if (i + 1) % accumulate == 0:
            trainer.global_step += 1  # Lightning steps the optimizer before on_train_batch_end
        callback.on_train_batch_end(trainer, None, None, None, i)
    callback.on_train_end(trainer, None)


@pytest.mark.parametrize(
    ("every", "micro_batches", "accumulate", "expected"),
    [
        (3, 7, 1, [0, 3, 6, 7]),
        (3, 6, 1, [0, 3, 6]),  # the last step was just probed: no duplicate at the end
        (2, 8, 4, [0, 2]),  # accumulation: one probe per optimizer step, not per micro-batch
        (0, 5, 1, [0, 5]),  # start and end only
    ],
)
def test_probe_schedule(every: int, micro_batches: int, accumulate: int, expected) -> None:
    cb = _Recorder(every_n_steps=every)
    _drive(cb, micro_batches, accumulate)
    assert cb.steps == expected


def test_resumed_run_does_not_repeat_the_probe_of_its_checkpoint_step() -> None:
    cb = _Recorder(every_n_steps=3)
    cb.load_state_dict(_Recorder(every_n_steps=3).state_dict() | {"last_step": 6})
    trainer = SimpleNamespace(global_step=6, is_global_zero=True, loggers=[])
    cb.on_train_start(trainer, None)
    for i in range(4):
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, None, None, None, i)
    cb.on_train_end(trainer, None)
    assert cb.steps == [9, 10]


def test_only_rank_zero_probes() -> None:
    cb = _Recorder(every_n_steps=1)
    _drive(cb, 4, 1, rank=1)
    assert cb.steps == []


def test_invalid_arguments_fail_early() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        OutlierCallback(every_n_steps=-1)
    with pytest.raises(ValueError, match="unknown outlier thresholds"):
        OutlierCallback(thresholds={"abs": 1.0})


def test_probe_is_disabled_under_fsdp() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    callback = _Recorder(every_n_steps=1)
    trainer = SimpleNamespace(
        global_step=0, is_global_zero=True, loggers=[], strategy=FSDPStrategy()
    )
    callback.on_train_start(trainer, None)
    for step in (1, 2):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step - 1)
    callback.on_train_end(trainer, None)
    assert callback.steps == []  # rank 0 alone cannot run sharded blocks

"""End-to-end training via the Hydra config: loss falls, every variant trains, sweeps, errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sysout.attention import variant_names
from sysout.data import DataSourceError
from sysout.training.run import train

ROOT = Path(__file__).resolve().parents[1]
FAST = (
    "model=gpt2_tiny",
    "data.batch_size=4",
    "data.val_windows=2",
    "test=false",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
)


def read_csv_metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_run_loss_falls_and_writes_checkpoints(compose_train, tmp_path) -> None:
    cfg = compose_train(
        *FAST,
        "logger=csv",
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "data.batch_size=8",
        "optim.warmup_steps=5",
        "optim.lr=3e-3",
    )
    metrics = train(cfg)
    rows = read_csv_metrics(tmp_path)
    train_losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val_losses = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val_losses) == 2
    assert sum(train_losses[-5:]) / 5 < train_losses[0] - 2.0  # from ~ln(50304) = 10.8
    assert val_losses[-1] < val_losses[0] < 10.5
    assert metrics["val/loss"] == pytest.approx(val_losses[-1], rel=1e-5)
    # the gradient norm clipping would see, logged at the logging interval
    grad_norms = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")]
    assert grad_norms and all(0 < g < float("inf") for g in grad_norms)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / "checkpoints").glob("step*.ckpt"))) == 1  # the best by val/loss


@pytest.mark.parametrize("variant", variant_names())
def test_every_variant_trains_a_few_steps(compose_train, variant: str) -> None:
    cfg = compose_train(
        *FAST,
        f"attention={variant}",
        "logger=none",
        "callbacks=none",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    )
    metrics = train(cfg)
    assert 0 < metrics["train/loss"] < 12 and 0 < metrics["val/loss"] < 12


def test_test_split_reports_wikitext_perplexity(compose_train) -> None:
    cfg = compose_train(
        *FAST,
        "logger=none",
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
        "test=true",
        "data.test_windows=3",
    )
    metrics = train(cfg)
    assert metrics["test/ppl"] == pytest.approx(2.718281828 ** metrics["test/loss"], rel=1e-4)


def test_wandb_offline_run_is_recorded_and_reported(compose_train, tmp_path, capsys) -> None:
    cfg = compose_train(*FAST, "trainer.max_steps=2", "trainer.val_check_interval=2")
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    out = capsys.readouterr().out
    assert "W&B run (offline)" in out and "wandb sync" in out and "last checkpoint:" in out


def test_multirun_gives_each_job_its_own_folder_and_wandb_run(tmp_path, shared_dir) -> None:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "SYSOUT_SHARED_DIR": str(shared_dir)}
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "attention=softmax,kv_bias",
        *FAST,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_softmax", "1_kv_bias"]
    run_ids = set()
    for job in jobs:
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2


def test_command_line_overrides_compose_with_an_experiment(compose_train) -> None:
    cfg = compose_train(
        "experiment=quickstart",
        "attention=kv_bias",
        "model=gpt2_tiny",
        "logger=csv",
        "trainer.max_steps=3",
    )
    assert cfg.model.name == "gpt2_tiny" and cfg.attention.name == "kv_bias"
    assert cfg.trainer.max_steps == 3 and cfg.experiment_name == "quickstart"
    assert list(cfg.logger) == ["csv"] and cfg.data.block_size == 64
    paper = compose_train("experiment=paper_gpt2_124m")
    assert paper.model.n_layer == 12 and paper.trainer.accumulate_grad_batches == 40
    assert paper.data.batch_size * paper.model.block_size * 40 == 491_520


def _rejected_before_training(compose_train, tmp_path, *overrides, error=ValueError, match=""):
    cfg = compose_train(*FAST, "logger=csv", "trainer.max_steps=2", *overrides)
    with pytest.raises(error, match=match) as err:
        train(cfg)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "csv").exists()
    return str(err.value)


def test_unknown_variant_is_rejected_listing_valid_ones(compose_train, tmp_path) -> None:
    message = _rejected_before_training(compose_train, tmp_path, "attention.name=flash")
    assert "unknown attention variant 'flash'" in message
    assert all(name in message for name in variant_names())


def test_heads_must_divide_width(compose_train, tmp_path) -> None:
    _rejected_before_training(
        compose_train,
        tmp_path,
        "model.n_head=3",
        match="n_embd=64 is not divisible by model.n_head=3",
    )


def test_block_size_longer_than_data(compose_train, tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Too short to fill a window. " * 5)
    _rejected_before_training(
        compose_train,
        tmp_path,
        f"data.splits.val.path={short}",
        error=DataSourceError,
        match="fewer than block_size",
    )


def test_missing_data_folder_says_where_it_looked(compose_train, tmp_path) -> None:
    message = _rejected_before_training(
        compose_train, tmp_path, "paths.shared_dir=/nonexistent/shared", error=DataSourceError
    )
    assert "/nonexistent/shared/data/enwiki-sample/train.txt" in message
    assert "SYSOUT_SHARED_DIR" in message

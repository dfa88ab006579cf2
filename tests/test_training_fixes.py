"""Issue 12's training fixes: empty WANDB_MODE, block size beyond the data, DDP accumulation,
one console line per message, and the shared logger helper."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from sysout.data import DataSourceError
from sysout.loggers import build_loggers, close_loggers, resolve_wandb_mode
from sysout.training.run import keep_global_batch, train

ROOT = Path(__file__).resolve().parents[1]
FAST = (
    "model=gpt2_tiny",
    "data.batch_size=4",
    "data.val_windows=2",
    "test=false",
    "trainer.enable_progress_bar=false",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
)


def test_empty_wandb_mode_is_treated_as_unset(compose_train, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert resolve_wandb_mode() in ("offline", "online")
    assert "WANDB_MODE" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "  ")
    cfg = compose_train(*FAST, "callbacks=none")
    train(cfg)  # W&B would stop this with a pydantic error on mode=''
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_huge_block_size_fails_fast_with_the_data_message(compose_train, tmp_path) -> None:
    cfg = compose_train(*FAST, "logger=csv", "model.block_size=1000000000")
    start = time.time()
    with pytest.raises(DataSourceError, match="fewer than block_size"):
        train(cfg)
    assert time.time() - start < 60  # before any position table of 10^9 rows
    assert not (tmp_path / "csv").exists()


def fake_trainer(world: int, accumulate: int, interval: int | float = 100):
    return SimpleNamespace(
        world_size=world, accumulate_grad_batches=accumulate, val_check_interval=interval
    )


def test_keep_global_batch_divides_accumulation_when_it_can(caplog) -> None:
    trainer = fake_trainer(4, 8, 200)
    assert keep_global_batch(trainer) == 2
    assert trainer.val_check_interval == 50  # same optimizer steps between validations
    single = fake_trainer(1, 3, 99)
    assert keep_global_batch(single) == 3 and single.val_check_interval == 99


def test_keep_global_batch_keeps_the_per_device_batch_when_it_cannot(caplog) -> None:
    trainer = fake_trainer(2, 1, 50)
    with caplog.at_level(logging.WARNING, logger="sysout.training.run"):
        assert keep_global_batch(trainer) == 1
    assert trainer.val_check_interval == 50
    assert "global batch is 2x the configured one" in caplog.text
    trainer = fake_trainer(4, 6, 60)
    assert keep_global_batch(trainer) == 6
    with pytest.raises(ValueError, match="multiple of the accumulation"):
        keep_global_batch(fake_trainer(2, 3, 50))


def test_console_says_each_thing_once(tmp_path, shared_dir) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "SYSOUT_SHARED_DIR": str(shared_dir)}
    env.pop("WANDB_SILENT", None)
    cmd = [
        sys.executable,
        "train.py",
        *FAST,
        "trainer.log_every_n_steps=1",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "max_steps=2` reached" in console
    # W&B's own run summary has blank "wandb:" separators and "+N ..." continuation rows;
    # everything else must appear once.
    filler = re.compile(r"^wandb:\s*(\+\d+ \.\.\.)?\s*$")
    lines = [ln for ln in console.splitlines() if ln.strip() and not filler.match(ln)]
    repeated = [ln for ln, n in Counter(lines).items() if n > 1]
    assert not repeated, repeated
    # The same message under two formats (Lightning's "INFO: ..." and Hydra's) counts too.
    assert not any(ln.startswith("INFO: ") for ln in lines)
    assert "anonymous" not in console
    # Other libraries' lines a user cannot act on stay off the console (sysout.loggers.console).
    assert "litlogger" not in console and "LeafSpec" not in console


def test_logger_helper_builds_with_overrides_and_closes(tmp_path) -> None:
    group = {
        "csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(tmp_path)},
        "wandb": {
            "_target_": "sysout.loggers.wandb_logger",
            "project": "sysout-test",
            "name": "from-config",
            "save_dir": str(tmp_path),
            "mode": "offline",
        },
    }
    loggers = build_loggers(group, overrides={"wandb": {"name": "overridden"}})
    assert [type(lg) for lg in loggers] == [CSVLogger, WandbLogger]
    assert loggers[1].experiment.name == "overridden"
    loggers[0].log_metrics({"x": 1.0}, step=0)
    close_loggers(loggers)
    assert (Path(loggers[0].log_dir) / "metrics.csv").read_text().startswith("step,x")
    import wandb

    assert wandb.run is None  # finished
    with pytest.raises(ValueError, match="has no _target_"):
        build_loggers({"csv": {"save_dir": "."}})
    assert build_loggers(None) == []

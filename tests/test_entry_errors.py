"""Errors for people: train.py and evaluate.py stop on sysout's own errors with one message that
says what to do (the traceback in the run's log, or with HYDRA_FULL_ERROR=1), keep the
traceback of any other error, and keep other libraries' noise off the console."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from sysout.data import DataSourceError
from sysout.loggers.console import errors_for_people, own_error, quiet_third_party
from sysout.model.checkpoint import CheckpointError
from sysout.training.run import resolve_ckpt_path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *overrides: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *overrides], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def _env(tmp_path: Path, shared_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(
        SYSOUT_SHARED_DIR=str(shared_dir),
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),  # an empty Hugging Face cache: gpt2 is not in it
    )
    return env


def test_evaluate_an_unreachable_hf_model_says_what_to_do_in_two_lines(tmp_path, shared_dir):
    out = tmp_path / "eval"
    run = _run(
        "evaluate.py", "checkpoints=[hf:gpt2]", f"hydra.run.dir={out}",
        env=_env(tmp_path, shared_dir),
    )  # fmt: skip
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode == 1
    assert len(lines) <= 5 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith("evaluate.py stopped: HFLoadError (HYDRA_FULL_ERROR=1")
    assert "hf:gpt2: cannot read its config: offline" in lines[-1]
    assert lines[-1].endswith("huggingface-cli download gpt2")  # what to do, last
    log = (out / "evaluate.log").read_text()  # the traceback is kept, in the run's log
    assert "Traceback" in log and "HFLoadError" in log


def test_train_with_a_missing_data_file_says_what_to_do(tmp_path, shared_dir):
    run = _run(
        "train.py", "model=gpt2_tiny", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
        f"data.splits.train.path={tmp_path / 'no-such-corpus.txt'}",
        env=_env(tmp_path, shared_dir),
    )  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and len(lines) == 2, run.stderr
    assert lines[0].startswith("train.py stopped: DataSourceError (HYDRA_FULL_ERROR=1")
    assert "data.splits.train: no such file or folder" in lines[1] and "no-such-corpus" in lines[1]
    assert "Fix: set SYSOUT_SHARED_DIR" in lines[1]


# ----------------------------------------------------------------------------- in process
def _sysout_value_error() -> None:
    resolve_ckpt_path("/no/such/file.ckpt", trainer=None)  # raised inside sysout


def test_sysouts_own_errors_are_told_apart_from_the_others() -> None:
    with pytest.raises(CheckpointError) as own:
        _sysout_value_error()
    assert own_error(own.value) is own.value
    with pytest.raises(ValueError) as foreign:
        int("a value error of Python's, raised in this test file")
    assert own_error(foreign.value) is None
    assert own_error(RuntimeError("kaboom")) is None
    run_error = RuntimeError("every checkpoint failed")
    assert own_error(run_error, run_errors=(RuntimeError,)) is run_error
    # Hydra's instantiate wraps a constructor's error: the cause is found under it.
    try:
        try:
            _sysout_value_error()
        except CheckpointError as err:
            raise InstantiationException("Error in call to target\nfull_key: callbacks.x") from err
    except InstantiationException as wrapped:
        assert isinstance(own_error(wrapped), CheckpointError)


def test_an_own_error_exits_with_two_lines_and_others_keep_their_traceback(
    capsys, monkeypatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop, errors_for_people("x.py"):
        try:
            _sysout_value_error()
        except CheckpointError as err:
            raise InstantiationException("Error in call\nfull_key: ckpt") from err
    assert stop.value.code == 1
    first, message = capsys.readouterr().err.strip().splitlines()
    assert first.startswith(
        "x.py stopped: CheckpointError (HYDRA_FULL_ERROR=1 prints the traceback"
    )
    assert message.startswith("ckpt: ckpt_path=/no/such/file.ckpt: no such checkpoint file")
    assert message.endswith("hydra.run.dir=<the run's folder>")
    with pytest.raises(KeyError), errors_for_people("x.py"):  # not sysout's: as it is
        raise KeyError("k")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(DataSourceError), errors_for_people("x.py"):
        raise DataSourceError("the full traceback was asked for")


def test_lightnings_litlogger_tip_stays_off_the_console() -> None:
    import lightning as L

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        quiet_third_party()
        L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    finally:
        logger.removeHandler(handler)
    assert any("GPU available" in r for r in records)  # the handler does see Lightning's lines
    assert not any("litlogger" in r for r in records)


def test_a_machine_without_network_learns_it_at_once(monkeypatch) -> None:
    """Without HF_HUB_OFFLINE and without network, an uncached hub model fails in one quick
    check of the hub, not after transformers' half-minute of printed retries."""
    import time

    from sysout.adapters import hf_load

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_load, "hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(hf_load.HFLoadError, match="no network to the hub and not in the local"):
        hf_load.load_config("sysout-test/not-a-cached-model")
    assert time.perf_counter() - start < 5

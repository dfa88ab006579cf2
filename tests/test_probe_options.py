"""The outlier probe's options: their defaults written once (``ProbeOptions``, the probe
sentence), one config group (``conf/probe``) read by the training callback and by evaluate.py."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from sysout.evaluation.settings import EvalSettings
from sysout.outliers import PROBE_SENTENCE
from sysout.outliers.options import ProbeOptions

ROOT = Path(__file__).resolve().parents[1]


def test_the_group_lists_every_option_and_writes_no_default() -> None:
    group = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "probe" / "default.yaml"))
    assert set(group) == {f.name for f in fields(ProbeOptions)}
    assert all(value is None for value in group.values())


def test_the_probe_sentence_is_written_once() -> None:
    in_configs = [p for p in (ROOT / "conf").rglob("*.yaml") if PROBE_SENTENCE in p.read_text()]
    assert in_configs == []
    in_code = [p for p in (ROOT / "sysout").rglob("*.py") if PROBE_SENTENCE in p.read_text()]
    assert in_code == [ROOT / "sysout" / "outliers" / "reports.py"]


def test_nulls_keep_the_defaults_and_bad_values_name_the_option() -> None:
    assert ProbeOptions.from_any({"windows": None, "sentence": None, "max_records": None}) == (
        ProbeOptions()
    )
    assert ProbeOptions.from_any({"windows": 3}) == ProbeOptions(windows=3)
    with pytest.raises(ValueError, match=r"unknown probe options \['window'\]; valid"):
        ProbeOptions.from_any({"window": 3})
    for bad, match in (
        ({"windows": 0}, "windows must be an integer >= 1"),
        ({"windows": True}, "windows must be an integer >= 1"),
        ({"max_records": -1}, "max_records must be an integer >= 0"),
        ({"sentence": 5}, "sentence must be a string"),
    ):
        with pytest.raises(ValueError, match=match):
            ProbeOptions.from_any(bad)


def _callback_options(cfg) -> tuple:
    cb = hydra.utils.instantiate(cfg.callbacks.outliers)
    return cb.probe_windows, cb.probe_sentence, cb.max_table_rows


def test_training_and_evaluation_read_the_same_group(compose_train) -> None:
    overrides = ("probe.windows=3", "probe.sentence='Hot and cold.'", "probe.max_records=7")
    assert _callback_options(compose_train(*overrides)) == (3, "Hot and cold.", 7)
    cfg = compose_train("checkpoints=x", *overrides, config_name="evaluate")
    assert EvalSettings.from_config(cfg).probe == ProbeOptions(3, "Hot and cold.", 7)


def test_null_gives_the_python_defaults_and_the_callback_keys_still_win(compose_train) -> None:
    defaults = ProbeOptions()
    assert defaults.sentence == PROBE_SENTENCE
    assert _callback_options(compose_train()) == (
        defaults.windows,
        defaults.sentence,
        defaults.max_records,
    )
    # An experiment (sink_lab, massive_lab) sets the callback's own key, for training alone.
    cfg = compose_train("probe.windows=3", "callbacks.outliers.probe_windows=5")
    assert _callback_options(cfg)[0] == 5
    # evaluate.yaml keeps more records for its CSV than the W&B table gets per probe.
    probe = EvalSettings.from_config(compose_train("checkpoints=x", config_name="evaluate")).probe
    assert probe == ProbeOptions(max_records=200)

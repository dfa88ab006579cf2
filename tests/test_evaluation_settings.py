"""evaluate.py's settings: the config read once into frozen dataclasses, every value checked at
the boundary with an error naming its key, the device resolved once."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_evaluate import _save_ckpt

from sysout.adapters.hf_load import HFLoadError
from sysout.data import DataSourceError, TextSource
from sysout.evaluation import CheckpointError
from sysout.evaluation.run import evaluate
from sysout.evaluation.settings import EvalSettings
from sysout.outliers.options import ProbeOptions


@pytest.fixture()
def compose_eval(compose_train):
    def _compose(*overrides: str):
        return compose_train(
            "checkpoints=unused", "logger=none", "progress=false", *overrides,
            config_name="evaluate",
        )  # fmt: skip

    return _compose


def test_every_value_is_read_into_one_frozen_object(compose_eval) -> None:
    s = EvalSettings.from_config(
        compose_eval(
            "checkpoints=[a.ckpt,hf:gpt2]", "methods=[W8A8,wanda_50]", "batch_size=3",
            "stride=16", "device=cpu", "precision=bf16", "hf.max_length=512",
            "calibration.train.batch_size=null", "calibration.train.batches=2",
            "val.source={kind: local, path: v.txt}", "val.windows=5",
            "probe.windows=4", "probe.thresholds.gamma_tau=5",
        )
    )  # fmt: skip
    assert s.checkpoints == ("a.ckpt", "hf:gpt2")
    assert s.methods == ("baseline", "w8a8", "wanda_50")
    assert (s.batch_size, s.protocol.stride, s.hf_max_length) == (3, 16, 512)
    assert s.device == torch.device("cpu") and s.autocast_dtype is torch.bfloat16
    assert isinstance(s.eval_text, TextSource) and s.eval_text.path.endswith("wiki.test.raw")
    assert s.val.source == TextSource(kind="local", path="v.txt") and s.val_windows == 5
    assert s.val.fallback.path.endswith("valid.txt") and s.calibration.text.source == "val"
    # calibration.train.batch_size=null is the evaluation's batch_size: 2 batches of 3 windows
    train = s.train_calibration
    assert (train.batch_size, train.windows, train.text.where) == (3, 6, "calibration.train")
    assert s.probe == ProbeOptions(windows=4, max_records=200) and s.thresholds.gamma_tau == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 1


@pytest.mark.parametrize(
    ("override", "error", "match"),
    [
        ("methods=[w8a8,w5a5]", ValueError, "unknown compression method 'w5a5'"),
        ("which=first", ValueError, "which must be one of"),
        ("batch_size=0", ValueError, "batch_size must be >= 1, got 0"),
        ("batch_size=2.5", ValueError, "batch_size must be an integer, got 2.5"),
        ("stride=0", ValueError, "stride must be >= 1"),
        ("max_eval_tokens=1", ValueError, "max_eval_tokens must be >= 2"),
        ("progress=maybe", ValueError, "progress must be true or false, got 'maybe'"),
        ("weights_only=1", ValueError, "weights_only must be true or false"),
        ("precision=int4", ValueError, "unknown precision 'int4'"),
        ("device=gpu0", ValueError, "device='gpu0' is not a device; use auto, cpu"),
        ("hf.dtype=int8", HFLoadError, "unknown dtype 'int8'"),
        ("hf.max_length=0", ValueError, "hf.max_length must be >= 1"),
        ("eval_stream=lm_eval", ValueError, "eval_stream must be one of"),
        ("val.windows=0", ValueError, "val.windows must be >= 1"),
        ("val.source=5", ValueError, "val.source must be a split name of the run"),
        ("val.fallback.kind=ftp", DataSourceError, "val.fallback.kind must be 'local' or 'hub'"),
        ("calibration.windows=null", ValueError, "calibration.windows must be an integer"),
        ("calibration.train.batches=0", ValueError, "calibration.train.batches must be >= 1"),
        ("probe.windows=0", ValueError, "probe windows must be an integer >= 1"),
        ("+probe.colour=red", ValueError, r"unknown probe options \['colour'\]"),
        ("+probe.thresholds.gamma=5", ValueError, "unknown outlier thresholds"),
        ("eval_text.kind=ftp", DataSourceError, "eval_text.kind must be 'local' or 'hub'"),
        ("eval_text.path=/nowhere/wiki.raw", DataSourceError, "no such file.*nowhere.*Fix:"),
        ("checkpoints=[]", CheckpointError, "checkpoints is empty: give a .ckpt file"),
    ],
)
def test_a_wrong_value_fails_at_the_boundary_naming_its_key(compose_eval, override, error, match):
    with pytest.raises(error, match=match):
        EvalSettings.from_config(compose_eval(override))


def test_a_missing_checkpoints_key_says_what_to_give(compose_train) -> None:
    cfg = compose_train("logger=none", config_name="evaluate")
    with pytest.raises(ValueError, match="checkpoints is required: checkpoints=<a .ckpt file"):
        EvalSettings.from_config(cfg)


def test_cuda_without_cuda_is_refused(compose_eval) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available; use device=cpu or auto"):
        EvalSettings.from_config(compose_eval("device=cuda"))


def test_evaluate_resolves_the_device_once_and_passes_the_probe_options_down(
    compose_eval, tmp_path, monkeypatch
) -> None:
    import sysout.evaluation.settings as settings_module

    calls = []
    resolve = settings_module.resolve_device
    monkeypatch.setattr(
        settings_module, "resolve_device", lambda name: calls.append(name) or resolve(name)
    )
    seen = []

    def fake_report(model, out_dir, batch, sentence, **kw):
        seen.append((kw["max_records"], kw["sentence_text"], "".join(map(kw["decode"], sentence))))
        return {}, {}

    monkeypatch.setattr("sysout.evaluation.per_checkpoint.outlier_report", fake_report)
    for run in ("0_softmax", "1_softmax"):
        _save_ckpt(tmp_path / "sweep" / run / "checkpoints" / "last.ckpt")
    results = evaluate(
        compose_eval(
            f"checkpoints={tmp_path / 'sweep'}", "methods=[]", "max_eval_tokens=40",
            "outlier_report=true", "probe.max_records=7", "probe.sentence='Hot and cold.'",
        )
    )  # fmt: skip
    assert [r.error for r in results] == [None, None]
    assert calls == ["auto"]  # once per evaluation, not per checkpoint or per measurement
    assert seen == [(7, "Hot and cold.", "Hot and cold.")] * 2

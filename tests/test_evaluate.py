"""evaluate.py and sysout.evaluation: perplexity, checkpoint handling, the robustness table."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sysout.compress import METHODS, Method
from sysout.evaluation import (
    CheckpointError,
    evaluate_methods,
    load_checkpoint,
    normalize_methods,
    perplexity,
    resolve_checkpoints,
    window_plan,
)
from sysout.evaluation.run import EvaluationError, evaluate
from sysout.model import build_gpt
from sysout.training.module import GPTLitModule

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=50304)


def _tiny_model(block_size: int = 8, vocab: int = 97, seed: int = 0):
    torch.manual_seed(seed)
    model = build_gpt(
        dict(n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab),
        {"name": "softmax"},
    )
    return model.eval()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- perplexity
@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_equals_exp_of_direct_cross_entropy_non_overlapping(batch_size):
    model, block = _tiny_model(), 8
    ids = torch.randint(0, 97, (53,), generator=torch.Generator().manual_seed(1))
    # Direct: windows x = ids[s:s+L], y = ids[s+1:s+L+1] every `block` tokens, last one shorter.
    losses = []
    for s in range(0, len(ids) - 1, block):
        length = min(block, len(ids) - 1 - s)
        logits, _ = model(ids[s : s + length][None])
        losses.append(F.cross_entropy(logits[0], ids[s + 1 : s + 1 + length], reduction="none"))
    direct = torch.cat(losses).double()
    res = perplexity(model, ids.numpy(), block_size=block, batch_size=batch_size)
    assert res.tokens == len(ids) - 1 == direct.numel()
    assert res.nll == pytest.approx(direct.mean().item(), rel=1e-6)
    assert res.ppl == pytest.approx(math.exp(direct.mean().item()), rel=1e-6)


def test_perplexity_stride_one_gives_every_token_its_full_context():
    model, block = _tiny_model(), 8
    ids = torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(2))
    # Direct: token i predicted from (up to) the `block` tokens before it, one forward each.
    nll = []
    for i in range(1, len(ids)):
        ctx = ids[max(0, i - block) : i]
        logits, _ = model(ctx[None])
        nll.append(F.cross_entropy(logits[0, -1:], ids[i : i + 1]).item())
    res = perplexity(model, ids, block_size=block, stride=1, batch_size=4)
    assert res.tokens == len(ids) - 1
    assert res.ppl == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)


@pytest.mark.parametrize(("n", "block", "stride"), [(53, 8, 3), (9, 8, 8), (100, 16, 5), (2, 4, 4)])
def test_window_plan_scores_each_target_once_with_enough_context(n, block, stride):
    scored = []
    for w in window_plan(n, block, stride):
        assert 1 <= w.scored <= w.length <= block
        targets = range(w.start + w.length - w.scored + 1, w.start + w.length + 1)
        for t in targets:  # context of target t: tokens w.start .. t-1
            assert t - w.start >= min(t, block - stride + 1)
        scored += list(targets)
    assert scored == list(range(1, n))


def test_window_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="stride"):
        window_plan(100, 8, 9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        window_plan(1, 8)


# ----------------------------------------------------------------------------- methods
def test_method_specs_are_validated_and_baseline_comes_first():
    assert normalize_methods(["w8a8", "Gamma_Reset_One+W8A8", "w8a8"]) == [
        "baseline",
        "w8a8",
        "gamma_reset_one+w8a8",
    ]
    with pytest.raises(ValueError, match="unknown compression method 'w3a3'.*valid names: base"):
        normalize_methods(["w8a8", "gamma_reset_one+w3a3"])


def test_a_failing_method_gives_nan_and_its_error_and_the_rest_still_run(monkeypatch):
    @contextmanager
    def boom(model, cal, thresholds):
        raise RuntimeError("kaboom")
        yield

    monkeypatch.setitem(METHODS, "boom", Method("boom", "quantize", "always fails", boom))
    model = _tiny_model()
    ids = torch.randint(0, 97, (40,))
    measure = lambda m: perplexity(m, ids, block_size=8)
    results = evaluate_methods(
        model,
        ["baseline", "boom", "w8a8", "wanda_50"],
        measure,
        calibration=None,
        calibration_error="no text",
    )
    by = {r.method: r for r in results}
    assert math.isfinite(by["baseline"].ppl) and math.isfinite(by["w8a8"].ppl)
    assert math.isnan(by["boom"].ppl) and "kaboom" in by["boom"].error
    assert "no calibration data: no text" in by["wanda_50"].error


# ----------------------------------------------------------------------------- checkpoints
def _save_ckpt(path: Path, model_cfg=TINY, attention="softmax", state=None, hparams=None) -> Path:
    module = GPTLitModule(dict(model_cfg), {"name": attention})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict() if state is None else state,
            "hyper_parameters": (
                {"model": dict(model_cfg), "attention": {"name": attention}}
                if hparams is None
                else hparams
            ),
            "global_step": 7,
            "pytorch-lightning_version": "2.6.0",
        },
        path,
    )
    return path


def test_run_and_sweep_folders_resolve_to_best_or_last(tmp_path):
    for run, losses in (("0_softmax", [3.2, 2.9]), ("1_kv_bias", [])):
        for i, loss in enumerate(losses):
            (tmp_path / run / "checkpoints" / f"step{i:06d}-val_loss{loss:.3f}.ckpt").parent.mkdir(
                parents=True, exist_ok=True
            )
            (tmp_path / run / "checkpoints" / f"step{i:06d}-val_loss{loss:.3f}.ckpt").touch()
        (tmp_path / run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (tmp_path / run / "checkpoints" / "last.ckpt").touch()
    best = resolve_checkpoints(str(tmp_path))
    assert [(e.name, e.path.name) for e in best] == [
        ("0_softmax", "step000001-val_loss2.900.ckpt"),
        ("1_kv_bias", "last.ckpt"),
    ]
    last = resolve_checkpoints([str(tmp_path / "0_softmax")], which="last")
    assert [e.path.name for e in last] == ["last.ckpt"]
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoints([str(tmp_path), str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        resolve_checkpoints(str(tmp_path / "empty"))


def test_loading_errors_name_the_problem(tmp_path):
    good = _save_ckpt(tmp_path / "good.ckpt")
    assert load_checkpoint(good).variant == "softmax"
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_checkpoint(tmp_path / "plain.ckpt")
    _save_ckpt(tmp_path / "other.ckpt", hparams={"lr": 0.1})
    with pytest.raises(CheckpointError, match=r"not a sysout checkpoint.*\['model', 'attention'\]"):
        load_checkpoint(tmp_path / "other.ckpt")
    wide = GPTLitModule({**TINY, "n_embd": 32}, {"name": "softmax"}).state_dict()
    _save_ckpt(tmp_path / "bad.ckpt", state=wide)
    with pytest.raises(CheckpointError, match="incompatible checkpoint.*shape mismatches"):
        load_checkpoint(tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")


# ----------------------------------------------------------------------------- evaluate()
@pytest.fixture()
def compose_eval(compose_train):
    def _compose(*overrides: str):
        return compose_train(
            "logger=none",
            "outlier_report=false",
            "progress=false",
            "max_eval_tokens=120",
            "methods=[w8a8,wanda_50]",
            *overrides,
            config_name="evaluate",
        )

    return _compose


def test_unknown_method_fails_before_any_work(compose_eval, tmp_path):
    ckpt = _save_ckpt(tmp_path / "ckpts" / "a.ckpt")
    cfg = compose_eval(f"checkpoints={ckpt}", "methods=[w8a8,w5a5]", "eval_text.path=/nonexistent")
    with pytest.raises(ValueError, match=r"unknown compression method 'w5a5'.*valid names"):
        evaluate(cfg)
    assert not (tmp_path / "robustness.csv").exists()


def test_missing_checkpoint_and_empty_text_are_clear_errors(compose_eval, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*nowhere.ckpt"):
        evaluate(compose_eval(f"checkpoints={tmp_path / 'nowhere.ckpt'}"))
    ckpt = _save_ckpt(tmp_path / "ckpts" / "a.ckpt")
    (tmp_path / "empty.txt").write_text("")
    cfg = compose_eval(f"checkpoints={ckpt}", f"eval_text.path={tmp_path / 'empty.txt'}")
    with pytest.raises(ValueError, match="eval_text: the text is empty"):
        evaluate(cfg)


def test_a_broken_checkpoint_keeps_the_other_rows(compose_eval, tmp_path):
    _save_ckpt(tmp_path / "sweep" / "0_softmax" / "checkpoints" / "last.ckpt")
    wide = GPTLitModule({**TINY, "n_embd": 32}, {"name": "softmax"}).state_dict()
    _save_ckpt(tmp_path / "sweep" / "1_broken" / "checkpoints" / "last.ckpt", state=wide)
    results = evaluate(compose_eval(f"checkpoints={tmp_path / 'sweep'}", "logger=wandb"))
    assert [r.label for r in results] == ["0_softmax", "1_broken"]
    rows = _read_csv(tmp_path / "robustness.csv")
    assert [r["label"] for r in rows] == ["0_softmax", "1_broken"]
    assert all(math.isfinite(float(rows[0][m])) for m in ("baseline", "w8a8", "wanda_50"))
    assert math.isfinite(float(rows[0]["val_loss"]))
    assert rows[1]["baseline"] == "nan" and "incompatible checkpoint" in rows[1]["errors"]
    assert "incompatible checkpoint" in (tmp_path / "robustness.md").read_text()
    # The table also went to the (offline) W&B run.
    assert list((tmp_path / "wandb").glob("offline-run-*/files/media/table/**/*.table.json"))

    # Only broken checkpoints: the table is still written, and the run fails naming the cause.
    with pytest.raises(EvaluationError, match="1 of 1 checkpoint.*incompatible checkpoint"):
        evaluate(compose_eval(f"checkpoints={tmp_path / 'sweep' / '1_broken'}"))


# ----------------------------------------------------------------------------- end to end
def _env(shared_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SYSOUT_SHARED_DIR=str(shared_dir),
        TIKTOKEN_CACHE_DIR=str(shared_dir / "tiktoken"),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    return env


@pytest.mark.slow
def test_evaluate_a_trained_sweep(tmp_path, shared_dir, token_cache_dir):
    env, sweep, out = _env(shared_dir), tmp_path / "sweep", tmp_path / "eval"
    train = subprocess.run(
        [sys.executable, "train.py", "-m", "attention=softmax,kv_bias", "model=gpt2_tiny",
         "logger=none", "trainer.max_steps=4", "trainer.val_check_interval=2",
         "data.val_windows=2", "test=false", f"hydra.sweep.dir={sweep}",
         f"paths.cache_dir={token_cache_dir}",
         "data.splits.train.path=${paths.shared_dir}/data/enwiki-sample/valid.txt"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    methods = ["w8a8", "w4a16", "magnitude_2of4", "wanda_50", "gamma_reset_one",
               "set_mean", "gamma_reset_one+w8a8"]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "evaluate.py", f"checkpoints={sweep}", f"methods=[{','.join(methods)}]",
         "max_eval_tokens=300", "logger=none", "progress=false", f"hydra.run.dir={out}",
         f"paths.cache_dir={token_cache_dir}", "probe.windows=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    rows = _read_csv(out / "robustness.csv")
    assert [r["label"] for r in rows] == ["0_softmax", "1_kv_bias"]
    assert [r["variant"] for r in rows] == ["softmax", "kv_bias"]
    for row in rows:
        for column in ["baseline", *methods]:
            assert math.isfinite(float(row[column])), (row["label"], column, row["errors"])
        assert row["errors"] == ""
        assert int(row["tokens"]) == 299
        # The validation loss is train.py's val/loss, which the best checkpoint's name carries.
        name_loss = float(Path(row["checkpoint"]).stem.split("val_loss")[1])
        assert float(row["val_loss"]) == pytest.approx(name_loss, abs=1e-3)
    md = (out / "robustness.md").read_text()
    assert "0_softmax" in md and "1_kv_bias" in md
    assert all(f" {m} |" in md for m in ["baseline", *methods])
    assert (out / "robustness.png").stat().st_size > 0
    for label in ("0_softmax", "1_kv_bias"):
        assert (out / label / "outlier_layers.csv").is_file()
        assert (out / label / "consistency.csv").is_file()
        assert list((out / label).glob("*.png"))
    assert [r["label"] for r in _read_csv(out / "outliers.csv")] == ["0_softmax", "1_kv_bias"]


def test_unloadable_run_text_falls_back_to_the_configured_one(tmp_path) -> None:
    from omegaconf import OmegaConf

    from sysout.evaluation.texts import Texts, load_source

    fallback = tmp_path / "fallback.txt"
    fallback.write_text("A local text that is there. " * 20)
    run_cfg = OmegaConf.create(
        {"data": {"splits": {"val": {"kind": "local", "path": str(tmp_path / "moved.txt")}}}}
    )
    texts = Texts(str(tmp_path / "cache"), None)
    tokens, source, origin = load_source(
        texts, "val", {"kind": "local", "path": str(fallback)}, run_cfg, "val"
    )
    assert origin == "fallback" and source["path"] == str(fallback) and len(tokens) > 100
    with pytest.raises(Exception, match="moved.txt"):  # without a fallback the error stands
        load_source(texts, "val", None, run_cfg, "val")


# ----------------------------------------------------------------------------- hf: models
def _tiny_hf_gpt2(folder: Path, seed: int = 0) -> Path:
    """A save_pretrained folder of a random tiny GPT-2 with GPT-2's tokenizer (built offline)."""
    import transformers as T

    from sysout.model.convert import gpt2_tokenizer

    torch.manual_seed(seed)
    cfg = T.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=50257)
    T.GPT2LMHeadModel(cfg).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


def test_evaluate_a_mixed_list_of_hf_and_sysout_models(compose_eval, tmp_path):
    hf = _tiny_hf_gpt2(tmp_path / "tiny_gpt2")
    ckpt = _save_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")
    cfg = compose_eval(
        f"checkpoints=[hf:{hf},{tmp_path / 'run'}]",
        "outlier_report=true",
        "probe.windows=2",
        "eval_stream=blank_lines",
    )
    results = evaluate(cfg)
    assert [r.label for r in results] == ["hf_tiny_gpt2", "run_softmax"]
    assert [r.error for r in results] == [None, None] and not any(r.problems for r in results)
    rows = _read_csv(tmp_path / "robustness.csv")
    assert [r["variant"] for r in rows] == ["hf:gpt2", "softmax"]
    assert rows[0]["checkpoint"] == f"hf:{hf}" and rows[1]["checkpoint"] == str(ckpt)
    for row in rows:
        assert all(math.isfinite(float(row[m])) for m in ("baseline", "w8a8", "wanda_50"))
        assert int(row["tokens"]) == 119  # max_eval_tokens=120, each scored once
    # The HF model is scored on its own tokenizer's ids (GPT-2's equal tiktoken's here), and its
    # perplexity is the transformers model's own loss over the same windows.
    import transformers as T

    from sysout.evaluation.texts import Texts

    model = T.AutoModelForCausalLM.from_pretrained(hf).eval()
    ids = Texts(str(tmp_path / "c"), None).load(cfg.eval_text, "eval", "e", "blank_lines")[:120]
    ids = torch.as_tensor(ids)
    nll = []
    with torch.no_grad():
        for s in range(0, 119, 32):
            x = ids[s : s + min(32, 119 - s) + 1]
            nll.append(F.cross_entropy(model(x[None, :-1]).logits[0], x[1:], reduction="none"))
    assert float(rows[0]["baseline"]) == pytest.approx(math.exp(torch.cat(nll).mean()), rel=1e-5)
    for label in ("hf_tiny_gpt2", "run_softmax"):
        assert (tmp_path / label / "outlier_layers.csv").is_file()
        assert list((tmp_path / label).glob("*.png"))
    assert [r["label"] for r in _read_csv(tmp_path / "outliers.csv")] == [
        "hf_tiny_gpt2",
        "run_softmax",
    ]
    md = (tmp_path / "robustness.md").read_text()
    assert "blank_lines" in md or '"\\n\\n"' in md


def test_hf_entries_fail_clearly_before_any_work(compose_eval, tmp_path, monkeypatch):
    from sysout.adapters.hf_load import HFLoadError

    ckpt = _save_ckpt(tmp_path / "a.ckpt")
    with pytest.raises(HFLoadError, match="offline .* not in the local Hugging Face cache"):
        evaluate(compose_eval(f"checkpoints=[{ckpt},hf:nobody/no-such-model-xyz]"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HFLoadError, match="has no config.json"):
        evaluate(compose_eval(f"checkpoints=[hf:{tmp_path / 'empty'}]"))
    import transformers as T

    T.BloomConfig(n_layer=1, n_head=2, hidden_size=16, vocab_size=32).save_pretrained(
        tmp_path / "bloom"
    )
    with pytest.raises(HFLoadError, match="'bloom' is not supported.*gpt2, llama"):
        evaluate(compose_eval(f"checkpoints=[hf:{tmp_path / 'bloom'}]"))
    hf = _tiny_hf_gpt2(tmp_path / "tiny")
    monkeypatch.setattr("sysout.adapters.hf_load.device_memory", lambda device: 1000)
    with pytest.raises(HFLoadError, match=r"need .* GiB, more than cpu has"):
        evaluate(compose_eval(f"checkpoints=[hf:{hf}]"))
    assert not (tmp_path / "robustness.csv").exists()

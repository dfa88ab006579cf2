"""What ``evaluate.py`` does, as a function of the composed Hydra config (tests call it too).

For every checkpoint: WikiText-2 perplexity of the unmodified model and under each compression
method / mitigation probe, the validation loss of its own run, and the outlier report. Everything
that can be checked without evaluating (method names, checkpoint paths, the evaluation text) is
checked first; after that, a failing checkpoint or method becomes a row with its error.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sysout.adapters import encode_text
from sysout.data import DataSourceError, get_tokenizer, probe_windows_from_tokens
from sysout.evaluation.calibration import build_calibration
from sysout.evaluation.checkpoints import (
    CheckpointEntry,
    LoadedCheckpoint,
    load_entry,
    make_label,
    plain,
    resolve_checkpoints,
)
from sysout.evaluation.outlier_report import outlier_report, write_outlier_summary
from sysout.evaluation.perplexity import perplexity, plan_windows
from sysout.evaluation.protocol import EvalProtocol, model_tokens
from sysout.evaluation.report import (
    log_results,
    plot_robustness,
    print_summary,
    save_figure,
    write_robustness,
)
from sysout.evaluation.robustness import (
    CheckpointResult,
    calibration_sets,
    evaluate_methods,
    normalize_methods,
)
from sysout.evaluation.texts import Texts, load_source
from sysout.loggers import build_loggers, close_loggers
from sysout.outliers.rules import OutlierThresholds

log = logging.getLogger(__name__)

PRECISIONS = {
    "fp32": None, "32": None, "32-true": None,
    "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
    "fp16": torch.float16, "16-mixed": torch.float16,
}  # fmt: skip


class EvaluationError(RuntimeError):
    """Nothing could be evaluated (every checkpoint failed)."""


# ----------------------------------------------------------------------------- set-up
def resolve_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available; use device=cpu or auto")
    return device


def resolve_precision(name: str | None) -> torch.dtype | None:
    key = str(name or "fp32").lower()
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; use one of {sorted(PRECISIONS)}")
    return PRECISIONS[key]


def _thresholds(cfg: DictConfig) -> OutlierThresholds:
    """The report's and the mitigation probes' thresholds (``probe.thresholds`` overrides)."""
    return OutlierThresholds.from_any(plain(OmegaConf.select(cfg, "probe.thresholds")) or None)


def _hf_options(cfg: DictConfig) -> dict[str, Any]:
    return plain(OmegaConf.select(cfg, "hf", default=None)) or {}


def _block_size(loaded: LoadedCheckpoint, cfg: DictConfig) -> int:
    """The window: a sysout model's block size; a Hugging Face model's context, capped by
    ``hf.max_length``."""
    block = loaded.block_size
    cap = _hf_options(cfg).get("max_length")
    return min(block, int(cap)) if loaded.is_hf and cap else block


# ----------------------------------------------------------------------------- one checkpoint
def _measure(
    tokens: np.ndarray,
    block_size: int,
    stride: int | None,
    cfg: DictConfig,
    desc: str,
    independent: bool = False,
):
    """``model -> PerplexityResult`` on ``tokens``, with a progress bar over the windows."""
    device, dtype = resolve_device(cfg.device), resolve_precision(cfg.precision)
    total = len(plan_windows(len(tokens), block_size, stride, independent))

    def measure(model: torch.nn.Module):
        with tqdm(total=total, desc=desc, unit="win", leave=False, disable=not cfg.progress) as bar:
            return perplexity(
                model,
                tokens,
                block_size,
                stride,
                cfg.batch_size,
                device,
                dtype,
                progress=bar.update,
                independent=independent,
            )

    return measure


def evaluate_checkpoint(
    entry: CheckpointEntry,
    methods: list[str],
    eval_tokens: np.ndarray,
    texts: Texts,
    cfg: DictConfig,
    out_dir: Path,
    taken: set[str],
) -> CheckpointResult:
    """Everything about one checkpoint; any failure is caught into the row's ``error``."""
    checkpoint = f"hf:{entry.hf.name}" if entry.hf else str(entry.path)
    result = CheckpointResult(
        label=make_label(None, entry.name), checkpoint=checkpoint, run=entry.name
    )
    model = loaded = None
    try:
        device = resolve_device(cfg.device)
        loaded = load_entry(entry, weights_only=cfg.weights_only, device=device)
        result.label = make_label(None if loaded.is_hf else loaded.variant, entry.name, taken)
        result.variant, result.step = loaded.variant, loaded.step
        model = loaded.model.to(device).eval()
        block = _block_size(loaded, cfg)
        stride = cfg.stride
        if stride is not None and not 0 < int(stride) <= block:
            raise ValueError(f"stride={stride} must be in [1, block_size={block}] of this model")
        run_cfg = entry.run_config()
        tok = loaded.tokenizer
        protocol = EvalProtocol.from_config(cfg)
        special = protocol.add_special_tokens
        result.info.update(block_size=block, stride=stride or block)
        if loaded.is_hf:
            result.info.update(
                dtype=loaded.hparams.get("dtype"),
                tokenizer=getattr(tok, "name_or_path", None) or "gpt2 BPE (tiktoken)",
                add_special_tokens=special,
            )
            eval_tokens = model_tokens(eval_tokens, texts, cfg, tok, model, protocol)

        val_tokens = _validation(result, model, block, run_cfg, texts, cfg, tok, special)
        needed = set().union(*(calibration_sets(m) for m in methods))
        calibration, cal_errors = build_calibration(
            needed, result, block, run_cfg, texts, cfg, tok, special
        )

        measure = _measure(eval_tokens, block, stride, cfg, "windows", protocol.independent)
        result.info.update(eval_tokens=len(eval_tokens))

        result.methods = []

        def done(r) -> None:
            # Recorded as they finish, so an abort later keeps what was measured.
            result.methods.append(r)
            bar.set_postfix_str(f"{r.method}: ppl {r.ppl:.4g}")
            bar.update(1)

        with tqdm(
            total=len(methods),
            desc=result.label,
            unit="method",
            leave=False,
            disable=not cfg.progress,
        ) as bar:
            evaluate_methods(
                model,
                methods,
                measure,
                calibration,
                cal_errors,
                on_done=done,
                thresholds=_thresholds(cfg),
            )
        if cfg.outlier_report:
            _outliers(
                result,
                model,
                val_tokens if val_tokens is not None else eval_tokens,
                block,
                cfg,
                out_dir / result.label,
                tok,
                special,
            )
    except Exception as err:  # noqa: BLE001  (the other checkpoints' rows must survive)
        result.error = f"{type(err).__name__}: {' '.join(str(err).split())}"
        if isinstance(err, torch.cuda.OutOfMemoryError):
            result.error += " (try a smaller batch_size)"
        log.error("checkpoint %s failed: %s", entry.path, result.error)
    finally:
        model = loaded = None  # free this checkpoint before loading the next
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def _validation(
    result: CheckpointResult,
    model: torch.nn.Module,
    block: int,
    run_cfg: DictConfig | None,
    texts: Texts,
    cfg: DictConfig,
    tok: Any | None = None,
    special: bool = False,
) -> np.ndarray | None:
    """The run's validation loss (train.py's val/loss: the first ``windows`` non-overlapping
    windows of its val split). A missing val text is a problem noted in the row, not a failure."""
    try:
        tokens, source, origin = load_source(
            texts, cfg.val.source, cfg.val.fallback, run_cfg, "val", tok, special
        )
        if tokens is None:
            return None
        windows = cfg.val.windows
        if windows is None and run_cfg is not None:
            windows = OmegaConf.select(run_cfg, "data.val_windows", default=None)
        # Only whole windows, as training's FixedWindows: a short tail would change the figure.
        windows = min(int(windows or 64), (len(tokens) - 1) // block)
        measure = _measure(tokens[: windows * block + 1], block, None, cfg, desc="val")
        res = measure(model)
        result.val_loss = res.nll
        result.info.update(val_text=source.get("path"), val_origin=origin, val_tokens=res.tokens)
        return tokens
    except Exception as err:  # noqa: BLE001
        result.problems.append(f"val loss: {type(err).__name__}: {err}")
        log.warning("%s: no validation loss (%s)", result.label, err)
        return None


def _outliers(
    result: CheckpointResult,
    model: torch.nn.Module,
    tokens: np.ndarray,
    block: int,
    cfg: DictConfig,
    out_dir: Path,
    tok: Any | None = None,
    special: bool = False,
) -> None:
    try:
        probe = cfg.probe
        batch = (
            probe_windows_from_tokens(tokens, block, int(probe.windows))
            if len(tokens) > block
            else None
        )
        if tok is not None:  # a Hugging Face model's own tokenizer (no BOS unless asked)
            encode = lambda text: encode_text(tok, text, special)
            decode = lambda i: tok.decode([int(i)])
        else:
            enc = get_tokenizer(cfg.tiktoken_cache_dir)
            encode, decode = enc.encode, lambda i: enc.decode([i])
        sentence = encode(probe.sentence)[:block] if probe.sentence else None
        summary, files = outlier_report(
            model,
            out_dir,
            batch,
            sentence,
            thresholds=_thresholds(cfg),
            decode=decode,
            sentence_text=probe.sentence,
            step=result.step,
        )
        result.outliers = {k: float(v) for k, v in summary.items()}
        result.files = {k: str(p) for k, p in files.items()}
    except Exception as err:  # noqa: BLE001  (the perplexities are still worth a row)
        result.problems.append(f"outlier report: {type(err).__name__}: {err}")
        log.warning("%s: outlier report failed (%s)", result.label, err)


# ----------------------------------------------------------------------------- the run
def evaluate(cfg: DictConfig) -> list[CheckpointResult]:
    """Evaluate every checkpoint of ``cfg.checkpoints``; write and log the tables; return rows."""
    # Checks that need no evaluation work come first, so a typo fails in seconds.
    methods = normalize_methods(cfg.methods)
    device = resolve_device(cfg.device)
    resolve_precision(cfg.precision)
    _thresholds(cfg)
    entries = resolve_checkpoints(
        plain(cfg.checkpoints),
        which=cfg.which,
        hf_dtype=_hf_options(cfg).get("dtype", "fp32"),
        device=device,
    )
    protocol = EvalProtocol.from_config(cfg)
    texts = Texts(cfg.cache_dir, cfg.tiktoken_cache_dir)
    eval_tokens = texts.load(cfg.eval_text, "eval", "eval_text", protocol.stream)
    if cfg.max_eval_tokens is not None:
        eval_tokens = eval_tokens[: int(cfg.max_eval_tokens)]
    if len(eval_tokens) < 2:
        raise DataSourceError(
            f"eval_text: {len(eval_tokens)} token(s) to score; perplexity needs at least 2 "
            f"(check eval_text.path and max_eval_tokens)"
        )
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "evaluating %d checkpoint(s) x %d method(s) on %d tokens of %s -> %s",
        len(entries),
        len(methods),
        len(eval_tokens),
        cfg.eval_text.path,
        out_dir,
    )
    hf_cap = _hf_options(cfg).get("max_length")
    meta = {
        "eval text": f"{cfg.eval_text.path} ({len(eval_tokens)} GPT-2 tokens)",
        **protocol.header(cfg.eval_text, hf_cap),
        "precision": cfg.precision,
        "device": str(resolve_device(cfg.device)),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }

    # W&B runs get this evaluation's name, group and tags (the logger group's name a training).
    loggers = build_loggers(cfg.get("logger"), {"wandb": plain(cfg.get("wandb_run")) or {}})
    results: list[CheckpointResult] = []
    taken: set[str] = set()
    files: dict = {}
    try:
        with logging_redirect_tqdm():
            for entry in tqdm(entries, desc="checkpoints", unit="ckpt", disable=not cfg.progress):
                result = evaluate_checkpoint(
                    entry, methods, eval_tokens, texts, cfg, out_dir, taken
                )
                results.append(result)
                # Rewritten after every checkpoint: an interrupted sweep keeps its rows.
                files = write_robustness(results, methods, out_dir, meta)
        images: dict[str, Path] = {}
        try:
            chart = plot_robustness(results, methods)
            images["robustness"] = save_figure(chart, out_dir / "robustness.png")
        except Exception as err:  # noqa: BLE001  (the tables are written; the chart is extra)
            log.warning("could not draw robustness.png: %s", err)
        files.update(write_outlier_summary(results, out_dir))
        for r in results:
            images.update(
                {f"{r.label}/{k}": Path(p) for k, p in r.files.items() if p.endswith(".png")}
            )
        log_results(loggers, results, methods, images)
    finally:
        close_loggers(loggers)
    print_summary(results, methods, files)

    failed = [r for r in results if r.error]
    if failed and (len(failed) == len(results) or cfg.fail_on_error):
        raise EvaluationError(
            f"{len(failed)} of {len(results)} checkpoint(s) failed: "
            + "; ".join(f"{r.checkpoint}: {r.error}" for r in failed)
        )
    return results

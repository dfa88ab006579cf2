"""One checkpoint's row of the evaluation: load it, score the evaluation text under every
method, its run's validation loss, and its outlier report. Any failure is caught into the row
(``error`` for the checkpoint, ``problems`` for a missing validation loss or report), so the
other checkpoints' rows survive."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sysout.adapters import encode_text
from sysout.data import get_tokenizer, probe_windows_from_tokens
from sysout.evaluation.calibration import build_calibration
from sysout.evaluation.checkpoints import CheckpointEntry, LoadedCheckpoint, load_entry, make_label
from sysout.evaluation.outlier_report import outlier_report
from sysout.evaluation.perplexity import PerplexityResult, perplexity, plan_windows
from sysout.evaluation.protocol import model_tokens
from sysout.evaluation.robustness import CheckpointResult, MethodResult, evaluate_methods
from sysout.evaluation.robustness import calibration_sets as method_calibration_sets
from sysout.evaluation.settings import EvalSettings
from sysout.evaluation.texts import Texts, load_source

log = logging.getLogger(__name__)

#: Validation windows without a run config (train.py's data.val_windows default).
DEFAULT_VAL_WINDOWS = 64


def window_size(loaded: LoadedCheckpoint, settings: EvalSettings) -> int:
    """The window: a sysout model's block size; a Hugging Face model's context, capped by
    ``hf.max_length``."""
    block = loaded.block_size
    cap = settings.hf_max_length
    return min(block, cap) if loaded.is_hf and cap else block


def measurer(
    tokens: np.ndarray,
    block_size: int,
    settings: EvalSettings,
    desc: str,
    stride: int | None = None,
    independent: bool = False,
) -> Callable[[torch.nn.Module], PerplexityResult]:
    """``model -> PerplexityResult`` on ``tokens``, with a progress bar over the windows."""
    total = len(plan_windows(len(tokens), block_size, stride, independent))

    def measure(model: torch.nn.Module) -> PerplexityResult:
        with tqdm(
            total=total, desc=desc, unit="win", leave=False, disable=not settings.progress
        ) as bar:
            return perplexity(
                model,
                tokens,
                block_size,
                stride,
                settings.batch_size,
                settings.device,
                settings.autocast_dtype,
                progress=bar.update,
                independent=independent,
            )

    return measure


def evaluate_checkpoint(
    entry: CheckpointEntry,
    eval_tokens: np.ndarray,
    texts: Texts,
    settings: EvalSettings,
    taken: set[str],
) -> CheckpointResult:
    """Everything about one checkpoint; any failure is caught into the row's ``error``."""
    checkpoint = f"hf:{entry.hf.name}" if entry.hf else str(entry.path)
    result = CheckpointResult(
        label=make_label(None, entry.name), checkpoint=checkpoint, run=entry.name
    )
    device, methods, protocol = settings.device, list(settings.methods), settings.protocol
    model = loaded = None
    try:
        loaded = load_entry(entry, weights_only=settings.weights_only, device=device)
        result.label = make_label(None if loaded.is_hf else loaded.variant, entry.name, taken)
        result.variant, result.step = loaded.variant, loaded.step
        model = loaded.model.to(device).eval()
        block = window_size(loaded, settings)
        stride = protocol.stride
        if stride is not None and stride > block:
            raise ValueError(f"stride={stride} must be in [1, block_size={block}] of this model")
        run_cfg = entry.run_config()
        tok = loaded.tokenizer
        special = protocol.add_special_tokens
        result.info.update(block_size=block, stride=stride or block)
        if loaded.is_hf:
            result.info.update(
                dtype=loaded.hparams.get("dtype"),
                tokenizer=getattr(tok, "name_or_path", None) or "gpt2 BPE (tiktoken)",
                add_special_tokens=special,
            )
            eval_tokens = model_tokens(
                eval_tokens,
                texts,
                settings.eval_text,
                settings.max_eval_tokens,
                tok,
                model,
                protocol,
            )

        val_tokens = _validation(result, model, block, run_cfg, texts, settings, tok)
        needed = set().union(*(method_calibration_sets(m) for m in methods))
        calibration, cal_errors = build_calibration(
            needed, result, block, run_cfg, texts, settings.calibration_sets, tok, special
        )
        measure = measurer(eval_tokens, block, settings, "windows", stride, protocol.independent)
        result.info.update(eval_tokens=len(eval_tokens))
        result.methods = []

        def done(r: MethodResult) -> None:
            # Recorded as they finish, so an abort later keeps what was measured.
            result.methods.append(r)
            bar.set_postfix_str(f"{r.method}: ppl {r.ppl:.4g}")
            bar.update(1)

        with tqdm(
            total=len(methods),
            desc=result.label,
            unit="method",
            leave=False,
            disable=not settings.progress,
        ) as bar:
            evaluate_methods(
                model,
                methods,
                measure,
                calibration,
                cal_errors,
                on_done=done,
                thresholds=settings.thresholds,
            )
        if settings.outlier_report:
            probed = val_tokens if val_tokens is not None else eval_tokens
            _outliers(result, model, probed, block, settings, tok)
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
    settings: EvalSettings,
    tok: Any | None = None,
) -> np.ndarray | None:
    """The run's validation loss (train.py's val/loss: the first ``windows`` non-overlapping
    windows of its val split). A missing val text is a problem noted in the row, not a failure."""
    special = settings.protocol.add_special_tokens
    val = settings.val
    try:
        tokens, source, origin = load_source(
            texts, val.source, val.fallback, run_cfg, val.where, tok, special
        )
        if tokens is None:
            return None
        windows = settings.val_windows
        if windows is None and run_cfg is not None:
            windows = OmegaConf.select(run_cfg, "data.val_windows", default=None)
        # Only whole windows, as training's FixedWindows: a short tail would change the figure.
        windows = min(int(windows or DEFAULT_VAL_WINDOWS), (len(tokens) - 1) // block)
        measure = measurer(tokens[: windows * block + 1], block, settings, desc="val")
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
    settings: EvalSettings,
    tok: Any | None = None,
) -> None:
    """The outlier report into ``<output_dir>/<label>/``; a failure is a problem of the row."""
    probe = settings.probe
    try:
        batch = (
            probe_windows_from_tokens(tokens, block, probe.windows) if len(tokens) > block else None
        )
        if tok is not None:  # a Hugging Face model's own tokenizer (no BOS unless asked)
            special = settings.protocol.add_special_tokens
            encode = lambda text: encode_text(tok, text, special)
            decode = lambda i: tok.decode([int(i)])
        else:
            enc = get_tokenizer(settings.tiktoken_cache_dir)
            encode, decode = enc.encode, lambda i: enc.decode([i])
        sentence = encode(probe.sentence)[:block] if probe.sentence else None
        summary, files = outlier_report(
            model,
            settings.output_dir / result.label,
            batch,
            sentence,
            thresholds=settings.thresholds,
            decode=decode,
            sentence_text=probe.sentence,
            step=result.step,
            max_records=probe.max_records,
        )
        result.outliers = {k: float(v) for k, v in summary.items()}
        result.files = {k: str(p) for k, p in files.items()}
    except Exception as err:  # noqa: BLE001  (the perplexities are still worth a row)
        result.problems.append(f"outlier report: {type(err).__name__}: {err}")
        log.warning("%s: outlier report failed (%s)", result.label, err)

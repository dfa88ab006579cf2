"""What ``evaluate.py`` does, as a function of the composed Hydra config (tests call it too).

For every checkpoint: WikiText-2 perplexity of the unmodified model and under each compression
method / mitigation probe, the validation loss of its own run, and the outlier report. The data
flow: the config becomes one frozen :class:`~sysout.evaluation.settings.EvalSettings` (every
value checked, the device resolved once), the checkpoints are resolved and the evaluation text
loaded (so method names, checkpoint paths and the text fail before any work), then each
checkpoint is evaluated (:mod:`sysout.evaluation.per_checkpoint`; a failing checkpoint or method
becomes a row with its error) and the tables are written after each one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sysout.data import DataSourceError
from sysout.evaluation.checkpoints import resolve_checkpoints
from sysout.evaluation.outlier_report import write_outlier_summary
from sysout.evaluation.per_checkpoint import evaluate_checkpoint
from sysout.evaluation.report import (
    log_results,
    plot_robustness,
    print_summary,
    save_figure,
    write_robustness,
)
from sysout.evaluation.robustness import CheckpointResult
from sysout.evaluation.settings import EvalSettings
from sysout.evaluation.texts import Texts
from sysout.loggers import build_loggers, close_loggers

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Nothing could be evaluated (every checkpoint failed)."""


def load_eval_tokens(texts: Texts, settings: EvalSettings) -> np.ndarray:
    """The evaluation text as GPT-2 ids (its stream, the first ``max_eval_tokens``)."""
    tokens = texts.load(settings.eval_text, "eval", "eval_text", settings.protocol.stream)
    if settings.max_eval_tokens is not None:
        tokens = tokens[: settings.max_eval_tokens]
    if len(tokens) < 2:
        raise DataSourceError(
            f"eval_text: {len(tokens)} token(s) to score; perplexity needs at least 2 "
            f"(check eval_text.path and max_eval_tokens)"
        )
    return tokens


def table_header(settings: EvalSettings, eval_tokens: int) -> dict[str, Any]:
    """What every table says about this evaluation: text, stream, windows, precision, device."""
    return {
        "eval text": f"{settings.eval_text.path} ({eval_tokens} GPT-2 tokens)",
        **settings.protocol.header(settings.eval_text, settings.hf_max_length),
        "precision": settings.precision,
        "device": str(settings.device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def evaluate(cfg: DictConfig) -> list[CheckpointResult]:
    """Evaluate every checkpoint of ``cfg.checkpoints``; write and log the tables; return rows."""
    # Checks that need no evaluation work come first, so a typo fails in seconds.
    settings = EvalSettings.from_config(cfg)
    methods = list(settings.methods)
    entries = resolve_checkpoints(
        list(settings.checkpoints),
        which=settings.which,
        hf_dtype=settings.hf_dtype,
        device=settings.device,
    )
    texts = Texts(settings.cache_dir, settings.tiktoken_cache_dir)
    eval_tokens = load_eval_tokens(texts, settings)
    out_dir = settings.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "evaluating %d checkpoint(s) x %d method(s) on %d tokens of %s -> %s",
        len(entries),
        len(methods),
        len(eval_tokens),
        settings.eval_text.path,
        out_dir,
    )
    meta = table_header(settings, len(eval_tokens))

    # W&B runs get this evaluation's name, group and tags (the logger group's name a training).
    loggers = build_loggers(settings.logger, {"wandb": settings.wandb_run})
    results: list[CheckpointResult] = []
    taken: set[str] = set()
    files: dict = {}
    try:
        with logging_redirect_tqdm():
            for entry in tqdm(
                entries, desc="checkpoints", unit="ckpt", disable=not settings.progress
            ):
                result = evaluate_checkpoint(entry, eval_tokens, texts, settings, taken)
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
    if failed and (len(failed) == len(results) or settings.fail_on_error):
        raise EvaluationError(
            f"{len(failed)} of {len(results)} checkpoint(s) failed: "
            + "; ".join(f"{r.checkpoint}: {r.error}" for r in failed)
        )
    return results

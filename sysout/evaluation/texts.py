"""The texts an evaluation reads: the evaluation stream, a run's own validation and calibration
splits (with a configured fallback), tokenized with GPT-2's BPE through the token cache or with a
Hugging Face model's own tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sysout.data import DataSourceError, RandomWindows, TextSource, get_tokenizer, load_tokens
from sysout.evaluation.checkpoints import plain

log = logging.getLogger(__name__)

# How the evaluation text's rows become one stream: "concat" as stored (through the token
# cache); "blank_lines" joins the rows with "\n\n", as lm-eval-harness and the massive-activations
# code stream WikiText-2 ("\n\n".join(test["text"])).
STREAMS = ("concat", "blank_lines")


def _rows(src: TextSource, where: str) -> list[str]:
    """The text's rows as the hub dataset stores WikiText (each line with its newline)."""
    docs = src.load_documents(where)[src.text_field]
    text = "".join(d.replace("\r\n", "\n") for d in docs)
    return text.splitlines(keepends=True)


class Texts:
    """Token ids of text sources, each loaded once: GPT-2's BPE through the shared token cache,
    or a Hugging Face model's own tokenizer (kept in memory per tokenizer)."""

    def __init__(self, cache_dir: str, tiktoken_cache_dir: str | None) -> None:
        self.cache_dir = cache_dir
        self.tiktoken_cache_dir = tiktoken_cache_dir
        self._tokens: dict[Any, np.ndarray] = {}

    def load(
        self,
        source: Mapping[str, Any] | TextSource,
        split: str,
        where: str,
        stream: str = "concat",
        tokenizer: Any | None = None,
    ) -> np.ndarray:
        if stream not in STREAMS:
            raise ValueError(f"{where}: stream must be one of {STREAMS}, got {stream!r}")
        src = TextSource.from_config(plain(source), where=where)
        key = (src, stream, None if tokenizer is None else getattr(tokenizer, "name_or_path", ""))
        if key in self._tokens:
            return self._tokens[key]
        if tokenizer is None and stream == "concat":
            ids = load_tokens(src, split, self.cache_dir, self.tiktoken_cache_dir, where=where)
        else:
            rows = _rows(src, where)
            text = "\n\n".join(rows) if stream == "blank_lines" else "".join(rows)
            if not text:
                raise DataSourceError(f"{where}: the text is empty ({split} split): {src.path}")
            if tokenizer is None:
                ids = np.asarray(get_tokenizer(self.tiktoken_cache_dir).encode_ordinary(text))
            else:  # the model's own special tokens (LLaMA's BOS), as the anchors tokenize
                ids = np.asarray(tokenizer(text, verbose=False)["input_ids"])
            ids = ids.astype(np.int64)
        self._tokens[key] = ids
        return ids


def run_source(
    spec: Any, fallback: Any, run_cfg: DictConfig | None, where: str
) -> tuple[dict[str, Any] | None, str]:
    """A text source given as a split name of the run's own data config (``val``, ``train``),
    or as a source dict; the fallback when the run's config is missing. Returns (source, origin)."""
    spec = plain(spec)
    if spec is None:
        return None, "off"
    if isinstance(spec, Mapping):
        return dict(spec), "config"
    if run_cfg is not None:
        try:
            node = OmegaConf.select(run_cfg, f"data.splits.{spec}", throw_on_missing=True)
            if node is not None:
                return OmegaConf.to_container(node, resolve=True), f"run data.splits.{spec}"
        except Exception as err:  # noqa: BLE001  (unresolvable interpolation in an old config)
            log.warning("%s: cannot read data.splits.%s of the run's config (%s)", where, spec, err)
    fallback = plain(fallback)
    if fallback is None:
        raise DataSourceError(
            f"{where}: the checkpoint's run has no data.splits.{spec} and {where}.fallback is null"
        )
    return dict(fallback), "fallback"


def load_source(
    texts: Texts,
    spec: Any,
    fallback: Any,
    run_cfg: DictConfig | None,
    where: str,
    tokenizer: Any | None = None,
) -> tuple[np.ndarray | None, dict[str, Any] | None, str]:
    """Tokens of :func:`run_source`; when the run's own split cannot be loaded (a hub corpus
    offline, a moved file), the fallback instead. Returns (tokens, source, origin)."""
    source, origin = run_source(spec, fallback, run_cfg, where)
    if source is None:
        return None, None, origin
    try:
        return (
            texts.load(source, where, f"{where}.source", tokenizer=tokenizer),
            source,
            origin,
        )
    except Exception as err:  # noqa: BLE001  (any loading failure: try the fallback)
        fallback = plain(fallback)
        if origin == "fallback" or fallback is None:
            raise
        log.warning("%s: the run's text failed to load (%s); using %s.fallback", where, err, where)
        source = dict(fallback)
        tokens = texts.load(source, where, f"{where}.fallback", tokenizer=tokenizer)
        return tokens, source, "fallback"


def calibration_windows(
    tokens: np.ndarray, block_size: int, windows: int, batch_size: int, seed: int
) -> list[torch.Tensor]:
    """``windows`` random windows [T] of the calibration text, in batches [B, T]."""
    data = RandomWindows(tokens, block_size, windows, seed)
    xs = [data[i][0] for i in range(len(data))]
    return [torch.stack(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)]

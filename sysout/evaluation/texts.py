"""The texts an evaluation reads: the evaluation stream, a run's own validation and calibration
splits (with a configured fallback), tokenized with GPT-2's BPE through the token cache or with a
Hugging Face model's own tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sysout.adapters import encode_text
from sysout.data import DataSourceError, RandomWindows, TextSource, get_tokenizer, load_tokens
from sysout.data.sources import LOCAL_JSON_SUFFIXES
from sysout.evaluation.checkpoints import plain

log = logging.getLogger(__name__)

# How the evaluation text's rows become one stream: "concat" as stored (through the token
# cache); "blank_lines" joins the rows with "\n\n" ("\n\n".join(rows), rows as the dataset
# stores them, empty ones included); "sun" is that stream scored as Sun et al. and An et al. do
# (no special tokens, independent windows, remainder dropped: sysout.evaluation.protocol).
STREAMS = ("concat", "blank_lines", "sun")


def source_rows(src: TextSource, where: str) -> list[str]:
    """The source's rows as its dataset stores them: a hub (or JSON) dataset's rows verbatim,
    empty rows included; a local text file's lines, each with its newline (CRLF read as LF).
    A local text file has no empty rows where the hub has them (``wiki.test.raw`` here lacks
    the hub's 1,467), so its "\n\n" join is not the hub's."""
    docs = src.load_documents(where)[src.text_field]
    if is_local_text(src, where):
        text = "".join(d.replace("\r\n", "\n") for d in docs)
        return text.splitlines(keepends=True)
    return [str(d) for d in docs]


def is_local_text(src: TextSource, where: str = "eval_text") -> bool:
    """A local source read as plain text (not JSON rows)."""
    if src.kind != "local":
        return False
    return not all(str(f).endswith(LOCAL_JSON_SUFFIXES) for f in src.local_files(where))


def stream_text(rows: list[str], stream: str) -> str:
    """The one string a stream scores: rows as stored, or joined with "\n\n"."""
    if stream not in STREAMS:
        raise ValueError(f"eval_stream must be one of {STREAMS}, got {stream!r}")
    return "".join(rows) if stream == "concat" else "\n\n".join(rows)


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
        add_special_tokens: bool = False,
    ) -> np.ndarray:
        """Token ids of ``source`` as ``stream``: GPT-2's BPE (no special tokens), or
        ``tokenizer``'s ids, with its special tokens (LLaMA's ``<s>``) only when
        ``add_special_tokens`` (the anchors tokenize without them)."""
        if stream not in STREAMS:
            raise ValueError(f"{where}: stream must be one of {STREAMS}, got {stream!r}")
        src = TextSource.from_config(plain(source), where=where)
        name = None if tokenizer is None else getattr(tokenizer, "name_or_path", "")
        key = (src, stream, name, bool(add_special_tokens) and tokenizer is not None)
        if key in self._tokens:
            return self._tokens[key]
        if tokenizer is None and stream == "concat":
            ids = load_tokens(src, split, self.cache_dir, self.tiktoken_cache_dir, where=where)
        else:
            text = stream_text(source_rows(src, where), stream)
            if not text:
                raise DataSourceError(f"{where}: the text is empty ({split} split): {src.path}")
            if tokenizer is None:
                ids = np.asarray(get_tokenizer(self.tiktoken_cache_dir).encode_ordinary(text))
            else:
                ids = np.asarray(encode_text(tokenizer, text, add_special_tokens))
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
    if isinstance(spec, TextSource):
        return asdict(spec), "config"
    if isinstance(spec, Mapping):
        return dict(spec), "config"
    if run_cfg is not None:
        try:
            node = OmegaConf.select(run_cfg, f"data.splits.{spec}", throw_on_missing=True)
            if node is not None:
                return OmegaConf.to_container(node, resolve=True), f"run data.splits.{spec}"
        except Exception as err:  # noqa: BLE001  (unresolvable interpolation in an old config)
            log.warning("%s: cannot read data.splits.%s of the run's config (%s)", where, spec, err)
    fallback = _as_dict(fallback)
    if fallback is None:
        raise DataSourceError(
            f"{where}: the checkpoint's run has no data.splits.{spec} and {where}.fallback is null"
        )
    return fallback, "fallback"


def _as_dict(source: Any) -> dict[str, Any] | None:
    """A source (a :class:`TextSource`, a mapping or a config node) as a plain dict."""
    source = plain(source)
    if source is None:
        return None
    return asdict(source) if isinstance(source, TextSource) else dict(source)


def load_source(
    texts: Texts,
    spec: Any,
    fallback: Any,
    run_cfg: DictConfig | None,
    where: str,
    tokenizer: Any | None = None,
    add_special_tokens: bool = False,
) -> tuple[np.ndarray | None, dict[str, Any] | None, str]:
    """Tokens of :func:`run_source`; when the run's own split cannot be loaded (a hub corpus
    offline, a moved file), the fallback instead. Returns (tokens, source, origin)."""
    source, origin = run_source(spec, fallback, run_cfg, where)
    if source is None:
        return None, None, origin
    try:
        return (
            texts.load(source, where, f"{where}.source", "concat", tokenizer, add_special_tokens),
            source,
            origin,
        )
    except Exception as err:  # noqa: BLE001  (any loading failure: try the fallback)
        fallback = _as_dict(fallback)
        if origin == "fallback" or fallback is None:
            raise
        log.warning("%s: the run's text failed to load (%s); using %s.fallback", where, err, where)
        source = fallback
        special = add_special_tokens
        tokens = texts.load(source, where, f"{where}.fallback", "concat", tokenizer, special)
        return tokens, source, "fallback"


def calibration_windows(
    tokens: np.ndarray, block_size: int, windows: int, batch_size: int, seed: int
) -> list[torch.Tensor]:
    """``windows`` random windows [T] of the calibration text, in batches [B, T]."""
    data = RandomWindows(tokens, block_size, windows, seed)
    xs = [data[i][0] for i in range(len(data))]
    return [torch.stack(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)]

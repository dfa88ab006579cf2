"""How an evaluation reads and scores its text: the stream, the special tokens, the windows, and
the words each table's header uses to say so.

``eval_stream`` (``conf/evaluate.yaml``):

- ``concat``: the rows as stored, chained windows (every token after the first scored once);
- ``blank_lines``: the rows joined with ``"\\n\\n"``, chained windows;
- ``sun``: the rows joined with ``"\\n\\n"``, no special tokens, independent windows of the
  window length, the remainder dropped: Sun et al.'s and An et al.'s WikiText perplexity
  (``lib/load_data.py`` ``get_wikitext`` and ``lib/eval_utils.py`` ``eval_ppl`` in
  ``locuslab/massive-activations`` and ``an-yongqi/systematic-outliers``). Their stream is the
  hub's ``wikitext-2-raw-v1`` test rows, the 1,467 empty ones included; the preset
  ``eval_protocol=sun`` sets it all (and 4096-token windows for ``hf:`` models).

``hf.add_special_tokens`` (default false) decides whether ``hf:`` models' tokenizers add their
special tokens (LLaMA's ``<s>``); the anchors never do (``add_special_tokens=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sysout.data import TextSource
from sysout.evaluation.checkpoints import plain
from sysout.evaluation.texts import STREAMS, Texts, is_local_text

#: Empty rows of the hub's wikitext-2-raw-v1 test split (4,358 rows, 2,891 with text).
HUB_EMPTY_ROWS = 1467


@dataclass(frozen=True)
class EvalProtocol:
    """The stream, tokenization and windows of one evaluation (checked at construction)."""

    stream: str = "concat"
    add_special_tokens: bool = False  # hf: models' tokenizers only
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ValueError(f"eval_stream must be one of {STREAMS}, got {self.stream!r}")
        if self.stream == "sun" and self.add_special_tokens:
            raise ValueError(
                "eval_stream=sun tokenizes without special tokens, as Sun et al.'s get_wikitext "
                "does (add_special_tokens=False): drop hf.add_special_tokens=true, or use "
                "eval_stream=blank_lines to score the same text with them"
            )
        if self.stream == "sun" and self.stride is not None:
            raise ValueError(
                f"eval_stream=sun scores independent, non-overlapping windows: stride must be "
                f"null, got {self.stride} (use eval_stream=blank_lines for strided windows)"
            )

    @property
    def independent(self) -> bool:
        """Windows scored on their own, remainder dropped (Sun et al.'s ``eval_ppl``)."""
        return self.stream == "sun"

    def header(self, eval_text: Any, hf_cap: int | None) -> dict[str, str]:
        """What every table says about the text and the windows."""
        src = TextSource.from_config(plain(eval_text), where="eval_text")
        cap = f"hf: context capped at {hf_cap}" if hf_cap else "hf: its context length"
        if self.independent:
            window = (
                f"independent windows of each model's block size ({cap}), each scored on its own "
                "(window - 1 targets), the remainder dropped (Sun et al. eval_ppl)"
            )
        else:
            window = f"each model's block size ({cap}); every token after the first scored once"
        special = "with" if self.add_special_tokens else "without"
        return {
            "stream": f"{self.stream}: {describe_stream(self.stream, src)}",
            "tokens": (
                f"sysout models: GPT-2 BPE, no special tokens; hf: models: their own tokenizer, "
                f"{special} special tokens (the anchors: without)"
            ),
            "window": window,
            "stride": str(self.stride) if self.stride else "window (non-overlapping windows)",
        }


def describe_stream(stream: str, src: TextSource) -> str:
    """One line on what ``stream`` makes of ``src``: honest about a local file's missing rows."""
    if stream == "concat":
        return "rows concatenated as stored"
    if is_local_text(src):
        return (
            'the local file\'s lines joined with "\\n\\n"; a local file has no empty rows '
            f"(wiki.test.raw lacks the hub's {HUB_EMPTY_ROWS:,}), so its stream has one "
            '"\\n\\n" fewer per missing row: not Sun et al.\'s stream'
        )
    where = f"{src.path} {src.name or ''} {src.split}".strip()
    own = " (Sun et al.'s and An et al.'s stream)" if _is_hub_wikitext2_test(src) else ""
    return f'the rows of {where}, empty rows included, joined with "\\n\\n"{own}'


def _is_hub_wikitext2_test(src: TextSource) -> bool:
    return (
        src.kind == "hub"
        and src.path.split("/")[-1] == "wikitext"
        and src.name == "wikitext-2-raw-v1"
        and src.split == "test"
    )


def model_tokens(
    gpt2_tokens: np.ndarray,
    texts: Texts,
    eval_text: TextSource,
    max_tokens: int | None,
    tok: Any,
    model: torch.nn.Module,
    protocol: EvalProtocol,
) -> np.ndarray:
    """The evaluation text for a Hugging Face model: tokenized with its own tokenizer (the first
    ``max_tokens``); without one, GPT-2's BPE ids, which must fit its vocabulary."""
    if tok is None:
        vocab = int(model.config.vocab_size)
        if int(np.max(gpt2_tokens)) >= vocab:
            raise ValueError(
                f"the model has no tokenizer and its vocabulary ({vocab}) is smaller than "
                "GPT-2's: put tokenizer files in its folder"
            )
        return gpt2_tokens
    special = protocol.add_special_tokens
    tokens = texts.load(eval_text, "eval", "eval_text", protocol.stream, tok, special)
    return tokens[:max_tokens] if max_tokens is not None else tokens

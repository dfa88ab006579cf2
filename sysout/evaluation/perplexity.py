"""Perplexity over strided windows (pure: a model and token ids in, numbers out).

Every token after the first is scored exactly once, as a next-token prediction. Window k feeds
``tokens[s_k : s_k + L_k]`` (``s_k = k * stride``, ``L_k <= block_size``) and scores only the
targets the previous window did not reach (Hugging Face's strided-perplexity method). With
``stride == block_size`` the windows do not overlap and this is nanoGPT's validation loss
(``x = tokens[s:s+T], y = tokens[s+1:s+T+1]``) plus a shorter last window for the remainder; with
a smaller stride each scored token sees at least ``block_size - stride`` tokens of context.

``independent=True`` is Sun et al.'s and An et al.'s WikiText protocol (``lib/load_data.py``
``get_wikitext``, ``lib/eval_utils.py`` ``eval_ppl``): ``num_tokens // block_size`` disjoint
windows of ``block_size`` tokens, each scored on its own (``block_size - 1`` targets: the first
token of a window is never a target, the last logit is unused), the remainder dropped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Window:
    start: int  # first input token
    length: int  # input tokens (= targets, unless ``inside``) in this window
    scored: int  # the last ``scored`` targets count towards the mean
    inside: bool = False  # targets only inside the window: ``length - 1`` of them


@dataclass(frozen=True)
class PerplexityResult:
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # scored tokens
    windows: int

    @property
    def ppl(self) -> float:
        return nll_to_ppl(self.nll)


def nll_to_ppl(nll: float) -> float:
    """exp(nll), NaN for NaN and inf past float range (exp overflows past ~709)."""
    if math.isnan(nll):
        return math.nan
    return math.exp(nll) if nll < 700 else math.inf


def window_plan(num_tokens: int, block_size: int, stride: int | None = None) -> list[Window]:
    """Windows covering targets 1..num_tokens-1 once each (see the module docstring)."""
    stride = block_size if stride is None else int(stride)
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if not 0 < stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    if num_tokens < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {num_tokens}")
    n_targets = num_tokens - 1
    plan, done, start = [], 0, 0  # done: targets 1..done are scored
    while done < n_targets:
        length = min(block_size, n_targets - start)
        end = start + length  # index of this window's last target
        plan.append(Window(start, length, end - done))
        done, start = end, start + stride
    return plan


def independent_plan(num_tokens: int, block_size: int) -> list[Window]:
    """Disjoint windows of ``block_size`` tokens scored on their own, remainder dropped (see the
    module docstring)."""
    if block_size < 2:
        raise ValueError(f"independent windows need block_size >= 2, got {block_size}")
    count = num_tokens // block_size
    if count == 0:
        raise ValueError(
            f"{num_tokens} tokens are fewer than one window of {block_size}: independent windows "
            "drop the remainder, so nothing would be scored (lower the window or use more text)"
        )
    return [Window(i * block_size, block_size, block_size - 1, True) for i in range(count)]


def plan_windows(
    num_tokens: int, block_size: int, stride: int | None = None, independent: bool = False
) -> list[Window]:
    """:func:`independent_plan` or :func:`window_plan` (a stride needs chained windows)."""
    if not independent:
        return window_plan(num_tokens, block_size, stride)
    if stride is not None and int(stride) != block_size:
        raise ValueError(
            f"independent windows do not overlap: stride must be null, got {stride} (set "
            "stride=null, or use a chained stream such as eval_stream=blank_lines)"
        )
    return independent_plan(num_tokens, block_size)


def _batches(plan: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    # Only windows of equal length can share a batch (only the last window may be shorter).
    for _, group in itertools.groupby(plan, key=lambda w: w.length):
        group = list(group)
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def _logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    if hasattr(out, "logits"):  # a transformers ModelOutput
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokens: np.ndarray | torch.Tensor | Sequence[int],
    block_size: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
    independent: bool = False,
) -> PerplexityResult:
    """Mean next-token NLL (and ``.ppl``) of ``model`` on ``tokens`` over strided windows.

    ``model(idx)`` must return logits [B, T, V], a tuple whose first item they are, or an object
    with ``.logits`` (a transformers causal LM).
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward under autocast; the loss is
    always computed in float32 and summed in float64. ``progress(n)`` is called after each batch
    with the number of windows done. ``independent``: Sun et al.'s disjoint windows (module
    docstring).
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    # On the device once: every window is then a slice, with no copy per batch.
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64)).to(device)
    plan = plan_windows(len(ids), block_size, stride, independent)
    cast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    try:
        for batch in _batches(plan, max(1, int(batch_size))):
            length, inside = batch[0].length, batch[0].inside
            xy = torch.stack([ids[w.start : w.start + length + (not inside)] for w in batch])
            x, y = (xy, xy[:, 1:]) if inside else (xy[:, :-1], xy[:, 1:])
            with cast:
                logits = _logits(model, x)
            if inside:  # the last position predicts a token outside the window: unused
                logits, length = logits[:, :-1], length - 1
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none"
            ).view(len(batch), length)
            first = torch.tensor([length - w.scored for w in batch], device=device)
            keep = torch.arange(length, device=device)[None, :] >= first[:, None]
            total += torch.where(keep, nll, 0.0).double().sum()  # no host sync per batch
            count += sum(w.scored for w in batch)
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return PerplexityResult(nll=total.item() / count, tokens=count, windows=len(plan))

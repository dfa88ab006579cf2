"""One-shot weight pruning: magnitude and Wanda, per output row, per matrix and N:M (SPEC 5).

Scores (higher = more important, kept), on a projection's ``[out, in]`` weight view:
  * magnitude: ``S_ij = |W_ij|``;
  * Wanda (Sun et al. 2023): ``S_ij = |W_ij| * ||X_j||_2`` where ``||X_j||_2`` is the L2 norm of
    input feature j over all calibration tokens (all batches, all positions).

Comparison groups (the official Wanda code, ``lib/prune.py``):
  * ``"unstructured"`` - per output row (Wanda's group): exactly ``floor(sparsity * in)``
    entries removed from every row;
  * ``"matrix"`` - one threshold for the whole matrix (Wanda's magnitude baseline): exactly
    ``floor(sparsity * out * in)`` entries removed, however they fall on rows.  (Wanda's code
    thresholds at the sorted value of index ``floor(sparsity * numel)`` with ``<=``, which removes
    one entry more, plus ties; an exact count keeps every method at the same sparsity.)  GPT-2's
    fused ``c_attn`` (q, k and v in one matrix) gets one threshold, as in Hugging Face's GPT-2;
  * ``"n:m"`` - ``n`` of every ``m`` consecutive input weights of a row kept (2:4 = NVIDIA
    semi-structured sparsity).

Ties are broken deterministically: scores are sorted with a *stable* ascending sort, so among
equal scores the entry with the lower (row-major) index is pruned first.

Wanda with ``sequential=True`` (default, as in the official code) calibrates block by block: the
input norms of block l's projections are measured with blocks < l already pruned (and block l
still dense); projections outside the blocks are calibrated last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sysout.adapters import ModelAdapter, adapter_for, linear_weight

from .layers import (
    WeightSnapshot,
    check_batches,
    projection_input,
    run_batches,
    select_targets,
    set_weight,
)

PRUNE_METHODS = ("magnitude", "wanda")

# ----------------------------------------------------------------------------- scores and masks


def magnitude_scores(weight: Tensor) -> Tensor:
    """``|W|`` in float32."""
    return weight.detach().float().abs()


def wanda_scores(weight: Tensor, input_col_norm: Tensor) -> Tensor:
    """Wanda score ``|W_ij| * ||X_j||_2`` (float32); ``weight`` is [out, in], ``input_col_norm``
    [in]."""
    if weight.dim() != 2:
        raise ValueError(f"wanda_scores expects a 2-D weight [out, in], got {tuple(weight.shape)}")
    norm = input_col_norm.detach().float().reshape(-1).to(weight.device)
    if norm.numel() != weight.shape[1]:
        raise ValueError(
            f"input_col_norm has {norm.numel()} entries but the weight has {weight.shape[1]} "
            "input features"
        )
    return weight.detach().float().abs() * norm.unsqueeze(0)


def n_pruned(count: int, sparsity: float) -> int:
    """``floor(sparsity * count)`` (a 1e-9 guard absorbs float noise such as 0.29*100)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return min(count, int(math.floor(sparsity * count + 1e-9)))


def _check_2d(scores: Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [out, in], got shape {tuple(scores.shape)}")


def unstructured_row_mask(scores: Tensor, sparsity: float = 0.5) -> Tensor:
    """Keep-mask (bool, True = kept) removing the ``floor(sparsity*in)`` lowest scores per row."""
    _check_2d(scores)
    k = n_pruned(scores.shape[1], sparsity)
    mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k:
        order = torch.sort(scores, dim=1, stable=True).indices
        mask.scatter_(1, order[:, :k], False)
    return mask


def matrix_mask(scores: Tensor, sparsity: float = 0.5) -> Tensor:
    """Keep-mask removing the ``floor(sparsity*numel)`` lowest scores of the whole matrix."""
    _check_2d(scores)
    k = n_pruned(scores.numel(), sparsity)
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        mask[torch.sort(scores.reshape(-1), stable=True).indices[:k]] = False
    return mask.reshape(scores.shape)


def semi_structured_mask(scores: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """N:M keep-mask: in each group of ``m`` consecutive inputs of a row, the top ``n`` are kept.
    Requires ``in_features % m == 0``."""
    _check_2d(scores)
    if not (0 < n <= m):
        raise ValueError(f"need 0 < n <= m for an n:m pattern, got {n}:{m}")
    out_f, in_f = scores.shape
    if in_f % m != 0:
        raise ValueError(
            f"{n}:{m} semi-structured pruning needs in_features divisible by {m}, got {in_f}"
        )
    groups = scores.reshape(out_f, in_f // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices
    mask = torch.ones(groups.shape, dtype=torch.bool, device=scores.device)
    if n < m:
        mask.scatter_(2, order[:, :, : m - n], False)
    return mask.reshape(out_f, in_f)


def parse_pattern(pattern: str) -> str | tuple[int, int]:
    """``"unstructured"`` (per row) / ``"matrix"`` as they are; ``"2:4"`` or ``"2of4"`` (any
    ``n:m``) -> (n, m)."""
    p = pattern.strip().lower()
    if p in ("unstructured", "matrix"):
        return p
    m = re.fullmatch(r"(\d+)\s*(?::|of)\s*(\d+)", p)
    if m is None:
        raise ValueError(
            f"unknown pruning pattern {pattern!r}; expected 'unstructured', 'matrix' or 'n:m'"
        )
    return int(m.group(1)), int(m.group(2))


def build_mask(scores: Tensor, pattern: str = "unstructured", sparsity: float = 0.5) -> Tensor:
    """Keep-mask for ``pattern`` (``sparsity`` is ignored by ``n:m``)."""
    kind = parse_pattern(pattern)
    if kind == "unstructured":
        return unstructured_row_mask(scores, sparsity)
    if kind == "matrix":
        return matrix_mask(scores, sparsity)
    return semi_structured_mask(scores, *kind)


# ----------------------------------------------------------------------------- calibration


def _input_norms(
    adapter: ModelAdapter,
    batches: Sequence[Tensor],
    modules: dict[str, nn.Module],
    stop_after: nn.Module | None = None,
) -> dict[str, Tensor]:
    sums: dict[str, Tensor] = {}
    handles: list[RemovableHandle] = []

    def make_hook(name: str):
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            x = projection_input(args, kwargs)
            sq = x.detach().float().reshape(-1, x.shape[-1]).pow(2).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq

        return hook

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_pre_hook(make_hook(name), with_kwargs=True))
        run_batches(adapter, batches, stop_after)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in sums]
    if missing:
        raise RuntimeError(f"these projections received no input during calibration: {missing}")
    return {n: sums[n].sqrt() for n in modules}


def collect_input_norms(
    model: nn.Module | ModelAdapter,
    batches: Sequence[Tensor] | Tensor,
    names: Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """Per-projection input-feature L2 norms ``||X_j||_2`` over all calibration tokens.

    ``names``: qualified projection names (default: every projection, the LM head included).
    Returns ``{name: float32 tensor [in_features]}``.
    """
    adapter = adapter_for(model)
    projections = dict(adapter.projections(include_head=True))
    if names is None:
        modules = projections
    else:
        modules = {}
        for n in names:
            if n not in projections:
                raise KeyError(f"{n!r} is not a projection (Linear / Conv1D) of the model")
            modules[n] = projections[n]
    return _input_norms(adapter, check_batches(batches, "collect_input_norms"), modules)


# ----------------------------------------------------------------------------- context manager


@dataclass
class PruneRecord:
    """What :func:`pruned` did: per-module fraction of zero weights after pruning, etc."""

    method: str
    pattern: str
    sparsity: float
    modules: dict[str, float] = field(default_factory=dict)
    numel: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    input_norms: dict[str, Tensor] = field(default_factory=dict)

    @property
    def overall_sparsity(self) -> float:
        """Fraction of zeros over all pruned weights (numel-weighted)."""
        total = sum(self.numel.values())
        if total == 0:
            return 0.0
        return sum(self.modules[n] * self.numel[n] for n in self.modules) / total

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "pattern": self.pattern,
            "target_sparsity": self.sparsity,
            "overall_sparsity": self.overall_sparsity,
            "n_modules": len(self.modules),
            "skipped": list(self.skipped),
        }


def _apply(
    name: str,
    mod: nn.Module,
    scores: Tensor,
    pattern: str,
    sparsity: float,
    snapshot: WeightSnapshot,
    record: PruneRecord,
) -> None:
    w = linear_weight(mod)
    keep = build_mask(scores, pattern, sparsity).to(w.device)
    set_weight(mod, w.detach().masked_fill(~keep, 0), snapshot)
    record.modules[name] = float((w == 0).float().mean())
    record.numel[name] = w.numel()


def _wanda_groups(
    adapter: ModelAdapter, weights: list[tuple[str, nn.Module]], sequential: bool
) -> list[tuple[nn.Module | None, dict[str, nn.Module]]]:
    """(block to stop after, its projections) in forward order; outside-block ones last."""
    if not sequential:
        return [(None, dict(weights))]
    owner = adapter.block_index()
    blocks = adapter.blocks()
    per_block: list[dict[str, nn.Module]] = [{} for _ in blocks]
    outside: dict[str, nn.Module] = {}
    for name, mod in weights:
        i = owner.get(id(mod))
        (outside if i is None else per_block[i])[name] = mod
    groups: list[tuple[nn.Module | None, dict[str, nn.Module]]] = [
        (blk, g) for blk, g in zip(blocks, per_block) if g
    ]
    if outside:
        groups.append((None, outside))
    return groups


@contextmanager
def pruned(
    model: nn.Module | ModelAdapter,
    method: str = "magnitude",
    pattern: str = "unstructured",
    sparsity: float = 0.5,
    calibration: Sequence[Tensor] | Tensor | None = None,
    skip: Iterable[str] = (),
    include_head: bool = False,
    sequential: bool = True,
) -> Iterator[PruneRecord]:
    """Zero pruned weights of every projection (Linear / Conv1D) inside the block.

    ``method``: ``"magnitude"`` or ``"wanda"`` (needs ``calibration``: LongTensor [B, T]
    batches).  ``pattern``: ``"unstructured"`` (per output row), ``"matrix"`` (one threshold per
    matrix) or ``"n:m"`` (``sparsity`` ignored).  The LM head is left out unless
    ``include_head`` (with it, its tied embedding); ``skip``: more name patterns.  Tied
    Parameters are pruned once.  Weights are restored bit for bit on exit, also on an exception.
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of {PRUNE_METHODS}")
    parse_pattern(pattern)  # validate early
    n_pruned(1, sparsity)
    batches = check_batches(calibration, "Wanda pruning") if method == "wanda" else []
    adapter = adapter_for(model)
    record = PruneRecord(method=method, pattern=pattern, sparsity=sparsity)
    snapshot = WeightSnapshot()
    try:
        targets = select_targets(adapter, skip, include_head)
        record.skipped = targets.skipped
        if method == "magnitude":
            for name, mod in targets.weights:
                scores = magnitude_scores(linear_weight(mod))
                _apply(name, mod, scores, pattern, sparsity, snapshot, record)
        else:
            for stop, group in _wanda_groups(adapter, targets.weights, sequential):
                norms = _input_norms(adapter, batches, group, stop_after=stop)
                for name, mod in group.items():
                    record.input_norms[name] = norms[name]
                    scores = wanda_scores(linear_weight(mod), norms[name])
                    _apply(name, mod, scores, pattern, sparsity, snapshot, record)
        yield record
    finally:
        snapshot.restore()

"""One-shot weight pruning: magnitude and Wanda, unstructured per output row and N:M (SPEC 5).

Scores (higher = more important, kept):
  * magnitude: ``S_ij = |W_ij|``;
  * Wanda (Sun et al. 2023): ``S_ij = |W_ij| * ||X_j||_2`` where ``||X_j||_2`` is the L2 norm of
    input feature j over all calibration tokens (all batches, all positions).

Both are compared *within an output row* (Wanda's comparison group): unstructured pruning removes
exactly ``floor(sparsity * in_features)`` entries from every row; N:M keeps ``n`` of every ``m``
consecutive input weights of a row (2:4 = NVIDIA semi-structured sparsity).

Ties are broken deterministically: scores are sorted with a *stable* ascending sort, so among
equal scores the entry with the lower input index is pruned first.

Wanda with ``sequential=True`` (default, as in the official Wanda code) calibrates block by block:
the input norms of block l's Linears are measured with blocks < l already pruned (and block l
still dense); Linears outside ``model.transformer.h`` (the LM head) are calibrated last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .quantize import WeightSnapshot, editable_weights

PRUNE_METHODS = ("magnitude", "wanda")

# ----------------------------------------------------------------------------- scores and masks


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """``|W|`` in float32."""
    return weight.detach().float().abs()


def wanda_scores(weight: torch.Tensor, input_col_norm: torch.Tensor) -> torch.Tensor:
    """Wanda score ``|W_ij| * ||X_j||_2`` (float32); ``input_col_norm`` has shape [in_features]."""
    if weight.dim() != 2:
        raise ValueError(f"wanda_scores expects a 2-D weight [out, in], got {tuple(weight.shape)}")
    norm = input_col_norm.detach().float().reshape(-1).to(weight.device)
    if norm.numel() != weight.shape[1]:
        raise ValueError(
            f"input_col_norm has {norm.numel()} entries but the weight has {weight.shape[1]} "
            "input features"
        )
    return weight.detach().float().abs() * norm.unsqueeze(0)


def n_pruned_per_row(in_features: int, sparsity: float) -> int:
    """``floor(sparsity * in_features)`` (a 1e-9 guard absorbs float noise such as 0.29*100)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return min(in_features, int(math.floor(sparsity * in_features + 1e-9)))


def unstructured_row_mask(scores: torch.Tensor, sparsity: float = 0.5) -> torch.Tensor:
    """Keep-mask (bool, True = kept) removing the ``floor(sparsity*in)`` lowest scores per row.

    Ties: stable ascending sort, the lower input index is removed first.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [out, in], got shape {tuple(scores.shape)}")
    k = n_pruned_per_row(scores.shape[1], sparsity)
    mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k == 0:
        return mask
    order = torch.sort(scores, dim=1, stable=True).indices
    mask.scatter_(1, order[:, :k], False)
    return mask


def semi_structured_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M keep-mask: in each group of ``m`` consecutive inputs of a row, the top ``n`` are kept.

    Requires ``in_features % m == 0``.  Ties as in :func:`unstructured_row_mask`.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [out, in], got shape {tuple(scores.shape)}")
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


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"2:4"`` or ``"2of4"`` (any ``n:m``) -> (n, m)."""
    p = pattern.strip().lower()
    if p == "unstructured":
        return None
    m = re.fullmatch(r"(\d+)\s*(?::|of)\s*(\d+)", p)
    if m is None:
        raise ValueError(f"unknown pruning pattern {pattern!r}; expected 'unstructured' or 'n:m'")
    return int(m.group(1)), int(m.group(2))


def build_mask(scores: torch.Tensor, pattern: str = "unstructured", sparsity: float = 0.5):
    """Keep-mask for ``pattern`` (``sparsity`` only used by ``"unstructured"``)."""
    nm = parse_pattern(pattern)
    if nm is None:
        return unstructured_row_mask(scores, sparsity)
    return semi_structured_mask(scores, *nm)


# ----------------------------------------------------------------------------- calibration


class _StopForward(Exception):
    """Raised by a forward hook to end a calibration pass early (nothing later is needed)."""


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _as_idx(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _run_batches(
    model: nn.Module, batches: Iterable[Any], stop_module: nn.Module | None = None
) -> None:
    """``model(idx)`` for each batch in eval mode without grad; output ignored."""
    device = _model_device(model)
    was_training = model.training
    handle = None
    if stop_module is not None:

        def stop(mod: nn.Module, args: Any, out: Any) -> None:
            raise _StopForward

        handle = stop_module.register_forward_hook(stop)
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                with suppress(_StopForward):
                    model(_as_idx(batch).to(device))
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)


def _collect(
    model: nn.Module,
    batches: Iterable[Any],
    modules: dict[str, nn.Module],
    stop_module: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["input"]
            sq = x.detach().float().reshape(-1, x.shape[-1]).pow(2).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq

        return hook

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_pre_hook(make_hook(name), with_kwargs=True))
        _run_batches(model, batches, stop_module)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in sums]
    if missing:
        raise RuntimeError(f"these Linears received no input during calibration: {missing}")
    return {n: sums[n].sqrt() for n in modules}


def collect_input_norms(
    model: nn.Module, batches: Iterable[Any], names: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Per-Linear input-feature L2 norms ``||X_j||_2`` over all calibration tokens.

    Runs ``model(idx)`` for every batch (LongTensor [B, T], moved to the model's device; a
    ``(x, y)`` pair uses x) in eval mode under ``no_grad``, with forward pre-hooks accumulating
    ``sum_tokens x_j^2`` in float32.  ``names``: qualified Linear names (default: all Linears).
    Returns ``{name: float32 tensor [in_features]}``.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if names is None:
        modules = linears
    else:
        modules = {}
        for n in names:
            if n not in linears:
                raise KeyError(f"{n!r} is not an nn.Linear of the model")
            modules[n] = linears[n]
    return _collect(model, list(batches), modules)


def _block_list(model: nn.Module) -> Sequence[nn.Module] | None:
    h = getattr(getattr(model, "transformer", None), "h", None)
    return h if isinstance(h, nn.ModuleList) else None


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
    input_norms: dict[str, torch.Tensor] = field(default_factory=dict)

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


@torch.no_grad()
def _apply(
    name: str,
    mod: nn.Linear,
    scores: torch.Tensor,
    pattern: str,
    sparsity: float,
    snapshot: WeightSnapshot,
    record: PruneRecord,
) -> None:
    mask = build_mask(scores, pattern, sparsity)
    snapshot.save(mod.weight)
    mod.weight.masked_fill_(~mask.to(mod.weight.device), 0)
    record.modules[name] = float((mod.weight == 0).float().mean())
    record.numel[name] = mod.weight.numel()


@contextmanager
def pruned(
    model: nn.Module,
    method: str = "magnitude",
    pattern: str = "unstructured",
    sparsity: float = 0.5,
    calibration: Iterable[Any] | None = None,
    skip: Iterable[str] = ("lm_head",),
    sequential: bool = True,
) -> Iterator[PruneRecord]:
    """Zero pruned weights of every ``nn.Linear`` except ``skip`` inside the block.

    ``method``: ``"magnitude"`` or ``"wanda"`` (needs ``calibration``: batches of token ids).
    ``pattern``: ``"unstructured"`` (``sparsity`` per output row) or ``"2:4"`` / any ``"n:m"``
    (``sparsity`` ignored).  Tied Parameters are pruned and restored once; a Parameter used by a
    skipped Linear (``lm_head`` <-> ``wte``) is left untouched.  Weights are restored bit for bit on
    exit, also on an exception.  Yields a :class:`PruneRecord`.
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of {PRUNE_METHODS}")
    parse_pattern(pattern)  # validate early
    if method == "wanda" and calibration is None:
        raise ValueError("Wanda pruning needs calibration batches (calibration=...)")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    record = PruneRecord(method=method, pattern=pattern, sparsity=sparsity)
    snapshot = WeightSnapshot()
    try:
        editable, record.skipped = editable_weights(model, skip)
        if method == "magnitude":
            for name, mod in editable:
                _apply(name, mod, magnitude_scores(mod.weight), pattern, sparsity, snapshot, record)
        else:
            batches = list(calibration)  # type: ignore[arg-type]
            blocks = _block_list(model) if sequential else None
            groups: list[tuple[nn.Module | None, dict[str, nn.Linear]]]
            if blocks is None:
                groups = [(None, dict(editable))]
            else:
                owner = {id(m): i for i, blk in enumerate(blocks) for m in blk.modules()}
                per_block: list[dict[str, nn.Linear]] = [{} for _ in blocks]
                outside: dict[str, nn.Linear] = {}
                for name, mod in editable:
                    i = owner.get(id(mod))
                    (outside if i is None else per_block[i])[name] = mod
                groups = [(blk, g) for blk, g in zip(blocks, per_block) if g]
                if outside:
                    groups.append((None, outside))
            for stop, group in groups:
                norms = _collect(model, batches, dict(group), stop_module=stop)
                for name, mod in group.items():
                    record.input_norms[name] = norms[name]
                    scores = wanda_scores(mod.weight, norms[name])
                    _apply(name, mod, scores, pattern, sparsity, snapshot, record)
        yield record
    finally:
        snapshot.restore()

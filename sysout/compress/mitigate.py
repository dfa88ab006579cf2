"""Mitigation probes (SPEC 2, 5) of Raman et al. 2025, "Rethinking the outlier distribution".

Two reversible interventions, each a context manager that restores the model on exit:

* :func:`reset_layernorm_gamma_outliers` - channel-wise outliers are traced to outlier entries of
  the LayerNorm scale gamma.  Entries with ``|gamma_c| > tau * median_c |gamma_c|`` are reset to 1
  (``value="one"``) or to the mean of the *non-outlier* entries of that gamma (``value="mean"``;
  the plain mean would be dragged towards the outliers being removed).  ``median`` is
  ``torch.median`` (the lower middle value for an even count).  Biases are not touched.

* :func:`clip_residual_activations` - massive activations created by an early block and carried
  along the residual stream are replaced in the *inputs* of the later blocks.  Detection is SPEC
  section 2's rule, ``|x| > abs_threshold and |x| >= median_ratio * median|x|``, with the median
  taken per sequence (over the [T, C] slice of each batch element, so the result does not depend
  on what else is in the batch; for a single sequence this is exactly the per-layer median).
  ``mode="median"`` replaces a flagged element by the median of its token's values
  (``median_c x[b, t, c]``, signed, lower middle value, outliers included - the median is robust
  to them); ``mode="clip"`` clips it to ``sign(x) * max(abs_threshold, median_ratio * median|x|)``,
  the boundary of the flagged region.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .prune import _as_idx, _model_device

GAMMA_VALUES = ("one", "mean")
RESIDUAL_MODES = ("median", "clip")

# ----------------------------------------------------------------------------- LayerNorm gamma


def is_layernorm(module: nn.Module) -> bool:
    """``nn.LayerNorm``/``nn.RMSNorm`` or any module whose class name contains LayerNorm/RMSNorm
    (nanoGPT's bias-optional LayerNorm) and that has a 1-D ``weight`` (gamma)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        return False
    if isinstance(module, nn.LayerNorm):
        return True
    cls = type(module).__name__.lower()
    return "layernorm" in cls or "rmsnorm" in cls


def gamma_outlier_indices(gamma: torch.Tensor, tau: float = 10.0) -> torch.Tensor:
    """Indices c with ``|gamma_c| > tau * median|gamma|`` (empty when the median is 0)."""
    a = gamma.detach().float().abs().reshape(-1)
    if a.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=gamma.device)
    med = a.median()
    if med <= 0:
        return torch.empty(0, dtype=torch.long, device=gamma.device)
    return torch.nonzero(a > tau * med).reshape(-1)


def find_gamma_outliers(model: nn.Module, tau: float = 10.0) -> dict[str, list[int]]:
    """``{LayerNorm name: [outlier indices]}`` for the LayerNorms that have any."""
    out: dict[str, list[int]] = {}
    for name, mod in model.named_modules():
        if is_layernorm(mod):
            idx = gamma_outlier_indices(mod.weight, tau)
            if idx.numel():
                out[name] = idx.tolist()
    return out


@dataclass
class GammaResetRecord:
    """Entries changed by :func:`reset_layernorm_gamma_outliers` (name -> indices/values)."""

    tau: float
    value: str
    changed: dict[str, list[int]] = field(default_factory=dict)

    @property
    def n_changed(self) -> int:
        return sum(len(v) for v in self.changed.values())

    def summary(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "value": self.value,
            "n_changed": self.n_changed,
            "changed": {k: list(v) for k, v in self.changed.items()},
        }


@contextmanager
def reset_layernorm_gamma_outliers(
    model: nn.Module, tau: float = 10.0, value: str = "one"
) -> Iterator[GammaResetRecord]:
    """Reset LayerNorm gamma outlier entries (``|gamma_c| > tau * median|gamma|``) inside the block.

    ``value="one"`` sets them to 1; ``value="mean"`` to the mean of that gamma's non-outlier
    entries.  Yields a :class:`GammaResetRecord` (``changed``: name -> indices).  Restores the
    original entries bit for bit on exit (also on an exception).
    """
    if value not in GAMMA_VALUES:
        raise ValueError(f"value must be one of {GAMMA_VALUES}, got {value!r}")
    record = GammaResetRecord(tau=tau, value=value)
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (param, idx, old)
    seen: set[int] = set()
    try:
        with torch.no_grad():
            for name, mod in model.named_modules():
                if not is_layernorm(mod) or id(mod.weight) in seen:
                    continue
                seen.add(id(mod.weight))
                gamma = mod.weight
                idx = gamma_outlier_indices(gamma, tau)
                if idx.numel() == 0:
                    continue
                old = gamma.detach()[idx].clone()
                if value == "one":
                    new = torch.ones_like(old)
                else:
                    keep = torch.ones(gamma.numel(), dtype=torch.bool, device=gamma.device)
                    keep[idx] = False
                    new = torch.full_like(old, float(gamma.detach().float()[keep].mean()))
                saved.append((gamma, idx, old))
                gamma[idx] = new
                record.changed[name] = idx.tolist()
        yield record
    finally:
        with torch.no_grad():
            for gamma, idx, old in reversed(saved):
                gamma[idx] = old


# ----------------------------------------------------------------------------- massive activations


def massive_activation_mask(
    x: torch.Tensor, abs_threshold: float = 100.0, median_ratio: float = 1000.0
) -> torch.Tensor:
    """Bool mask of ``|x| > abs_threshold and |x| >= median_ratio * median|x|`` (SPEC 2).

    ``x`` is [B, T, C] (median per batch element over its T x C values) or [T, C] (one median).
    """
    return _massive(x.detach().float().abs(), abs_threshold, median_ratio)[0]


def _massive(
    a: torch.Tensor, abs_threshold: float, median_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the SPEC 2 rule on |x| = ``a``, the per-sequence bound median_ratio x median)."""
    rel = median_ratio * _per_seq_median(a)
    return (a > abs_threshold) & (a >= rel), rel


def _per_seq_median(a: torch.Tensor) -> torch.Tensor:
    """Median of |x| per batch element, shaped to broadcast (a single one for <= 2-D)."""
    if a.dim() <= 2:
        return a.reshape(-1).median().reshape([1] * a.dim())
    return a.reshape(a.shape[0], -1).median(dim=1).values.reshape([-1] + [1] * (a.dim() - 1))


def _block_list(model: nn.Module, blocks: Sequence[nn.Module] | None) -> Sequence[nn.Module]:
    if blocks is not None:
        return blocks
    h = getattr(getattr(model, "transformer", None), "h", None)
    if h is None:
        raise ValueError("model has no transformer.h; pass blocks=... explicitly")
    return h


def _first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def find_massive_activation_layer(
    model: nn.Module,
    batch: torch.Tensor | Iterable[Any],
    abs_threshold: float = 100.0,
    median_ratio: float = 1000.0,
    blocks: Sequence[nn.Module] | None = None,
) -> int | None:
    """Index of the first block whose output holds a massive activation (SPEC 2), else None.

    ``batch``: one LongTensor [B, T] of token ids, or an iterable of them (the earliest block
    over all batches is returned).  Runs ``model(idx)`` in eval mode under ``no_grad``.
    """
    blocks = _block_list(model, blocks)
    batches = [batch] if isinstance(batch, torch.Tensor) else list(batch)
    found: list[int] = []
    handles: list[RemovableHandle] = []

    def make_hook(i: int):
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            if massive_activation_mask(_first_tensor(out), abs_threshold, median_ratio).any():
                found.append(i)

        return hook

    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        for i, blk in enumerate(blocks):
            handles.append(blk.register_forward_hook(make_hook(i)))
        with torch.no_grad():
            for b in batches:
                model(_as_idx(b).to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return min(found) if found else None


@dataclass
class ResidualRecord:
    """Counts of elements replaced by :func:`clip_residual_activations` (updated live)."""

    start_layer: int | None
    mode: str
    abs_threshold: float
    median_ratio: float
    hooked_blocks: list[int] = field(default_factory=list)
    calls: int = 0
    _counts: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def per_block(self) -> dict[int, int]:
        """``{block index: elements replaced in its inputs}`` (blocks that replaced any)."""
        return {i: int(c) for i, c in sorted(self._counts.items()) if int(c)}

    @property
    def replaced(self) -> int:
        """Total number of elements replaced so far."""
        return sum(int(c) for c in self._counts.values())

    def summary(self) -> dict[str, Any]:
        return {
            "start_layer": self.start_layer,
            "mode": self.mode,
            "replaced": self.replaced,
            "per_block": self.per_block,
            "calls": self.calls,
        }


def _replace(
    x: torch.Tensor, abs_threshold: float, median_ratio: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.detach().float()
    mask, rel = _massive(xf.abs(), abs_threshold, median_ratio)
    if mode == "median":
        repl = xf.median(dim=-1, keepdim=True).values.expand_as(xf)
    else:
        repl = torch.sign(xf) * torch.clamp(rel, min=abs_threshold)
    return torch.where(mask, repl.to(x.dtype), x), mask.sum()


@contextmanager
def clip_residual_activations(
    model: nn.Module,
    start_layer: int | None,
    abs_threshold: float = 100.0,
    median_ratio: float = 1000.0,
    mode: str = "median",
    blocks: Sequence[nn.Module] | None = None,
) -> Iterator[ResidualRecord]:
    """Replace massive activations in the inputs of blocks with index > ``start_layer``.

    The block at ``start_layer`` creates them (its MLP output is left alone, as the paper finds
    those cannot be removed without harm); forward pre-hooks on every later block replace the
    flagged elements of its input x [B, T, C] (``mode`` "median" or "clip", see module docstring)
    with a new tensor (the incoming tensor is not modified in place).  ``start_layer=None``
    installs nothing (no massive activations found).  Hooks are removed on exit.  Yields a
    :class:`ResidualRecord` whose counts grow with each forward pass.
    """
    if mode not in RESIDUAL_MODES:
        raise ValueError(f"mode must be one of {RESIDUAL_MODES}, got {mode!r}")
    record = ResidualRecord(
        start_layer=start_layer, mode=mode, abs_threshold=abs_threshold, median_ratio=median_ratio
    )
    handles: list[RemovableHandle] = []

    def make_hook(i: int):
        def hook(mod: nn.Module, args: tuple, kwargs: dict):
            if args:
                x, rest = args[0], args[1:]
            elif "x" in kwargs:
                x, rest = kwargs["x"], ()
            else:
                return None
            new, n = _replace(x, abs_threshold, median_ratio, mode)
            record.calls += 1
            record._counts[i] = record._counts[i] + n if i in record._counts else n
            if args:
                return (new, *rest), kwargs
            return args, {**kwargs, "x": new}

        return hook

    try:
        if start_layer is not None:
            for i, blk in enumerate(_block_list(model, blocks)):
                if i > start_layer:
                    handles.append(blk.register_forward_pre_hook(make_hook(i), with_kwargs=True))
                    record.hooked_blocks.append(i)
        yield record
    finally:
        for h in handles:
            h.remove()

"""Massive-activation replacement probes (SPEC 5): Sun et al. 2024's ``set_zero`` / ``set_mean``.

Sun et al. ("Massive activations in large language models", official code ``lib/hook.py``)
replace the massive activations in the *output of the layer that creates them* (the residual
stream every later layer reads) and measure perplexity: ``set_zero`` writes 0, ``set_mean``
writes each entry's mean over many sequences.  Their code hard-codes, per model, the
coordinates (the first token and one delimiter token, a few feature dims) and the means.
Here the same intervention is measured on any model:

* the **creating block** is the first block whose output holds a massive activation
  (:func:`sysout.outliers.rules.massive_activation_mask`, SPEC 2: ``|h| > abs_threshold`` and
  ``|h| >= median_ratio x`` the sequence's median) in any calibration sequence;
* on every forward pass the entries of that block's output flagged by the same rule (each
  sequence its own median) are replaced:

  - ``set_zero``: 0;
  - ``set_mean``: the signed mean of the flagged entries of the same feature dim over the
    calibration sequences, kept apart for the first token of a window and for later tokens (the
    anchors' means differ between the two, e.g. LLaMA-2-7B's 767.6 at token 0 and 2546.8 at the
    delimiter in dim 2533); a dim flagged only in the other group takes its mean over both; a dim
    never flagged in calibration is left unchanged and counted as ``unmatched``;
  - ``clip``: ``sign(h) x max(abs_threshold, median_ratio x median)``, the edge of the flagged
    region (not one of Sun et al.'s interventions).

Everything is undone on exit (hooks removed; nothing is written into parameters).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sysout.adapters import ModelAdapter, adapter_for, first_tensor
from sysout.outliers.rules import (
    DEFAULT_THRESHOLDS,
    OutlierThresholds,
    as_sequences,
    magnitudes,
    massive_activation_mask,
)

from .layers import check_batches, run_batches

MASSIVE_MODES = ("set_zero", "set_mean", "clip")


def _mask(h: Tensor, th: OutlierThresholds) -> tuple[Tensor, Tensor]:
    """SPEC 2 mask and per-sequence bound of a block output [B, T, C] (or [T, C])."""
    mask, bound = massive_activation_mask(as_sequences(magnitudes(h)), th)
    return mask.reshape(h.shape), bound


@dataclass
class MassiveCalibration:
    """Where massive activations are created and their means there (see module docstring).

    ``sums`` / ``counts`` are [2, C]: row 0 the first token of a window, row 1 later tokens.
    """

    layer: int | None
    sums: Tensor | None = None
    counts: Tensor | None = None

    def means(self) -> Tensor | None:
        """[2, C] float32: the group mean, else the dim's mean over both groups, else NaN."""
        if self.sums is None or self.counts is None:
            return None
        own = self.sums / self.counts
        both = self.sums.sum(0) / self.counts.sum(0)
        return torch.where(self.counts > 0, own, both.expand_as(own)).float()

    def summary(self) -> dict[str, Any]:
        means = self.means()
        if means is None:
            return {"layer": self.layer}
        seen = torch.nonzero(self.counts.sum(0) > 0).reshape(-1).tolist()
        return {
            "layer": self.layer,
            "dims": seen,
            "mean_first_token": {d: float(means[0, d]) for d in seen},
            "mean_later_tokens": {d: float(means[1, d]) for d in seen},
            "count": int(self.counts.sum()),
        }


def calibrate_massive_activations(
    model: nn.Module | ModelAdapter,
    calibration: Sequence[Tensor] | Tensor,
    thresholds: OutlierThresholds = DEFAULT_THRESHOLDS,
) -> MassiveCalibration:
    """One pass over ``calibration`` (LongTensor [B, T] batches): the creating block and the
    flagged entries' sums and counts at its output."""
    adapter = adapter_for(model)
    batches = check_batches(calibration, "the massive-activation probes")
    stats: dict[int, tuple[Tensor, Tensor]] = {}
    handles: list[RemovableHandle] = []

    def make_hook(i: int):
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            h = as_sequences(first_tensor(out).detach())
            mask, _ = _mask(h, thresholds)
            if not mask.any():
                return
            first = torch.zeros_like(mask)
            first[:, 0] = True
            groups = torch.stack([mask & first, mask & ~first])  # [2, B, T, C]
            vals = torch.where(groups, h.double().unsqueeze(0), 0.0).sum(dim=(1, 2))
            cnts = groups.sum(dim=(1, 2)).double()
            if i in stats:
                vals, cnts = stats[i][0] + vals, stats[i][1] + cnts
            stats[i] = (vals, cnts)

        return hook

    try:
        for i, blk in enumerate(adapter.blocks()):
            handles.append(blk.register_forward_hook(make_hook(i)))
        run_batches(adapter, batches)
    finally:
        for h in handles:
            h.remove()
    if not stats:
        return MassiveCalibration(layer=None)
    layer = min(stats)
    return MassiveCalibration(layer, stats[layer][0].cpu(), stats[layer][1].cpu())


def find_massive_activation_layer(
    model: nn.Module | ModelAdapter,
    calibration: Sequence[Tensor] | Tensor,
    thresholds: OutlierThresholds = DEFAULT_THRESHOLDS,
) -> int | None:
    """Index of the first block whose output holds a massive activation, else None."""
    return calibrate_massive_activations(model, calibration, thresholds).layer


@dataclass
class MassiveRecord:
    """What :func:`replace_massive_activations` replaced (counts grow with each forward)."""

    layer: int | None
    mode: str
    calibration: MassiveCalibration | None = None
    calls: int = 0
    _replaced: Tensor | int = 0
    _unmatched: Tensor | int = 0

    @property
    def replaced(self) -> int:
        return int(self._replaced)

    @property
    def unmatched(self) -> int:
        """Flagged entries left unchanged by ``set_mean`` (their dim had no calibration mean)."""
        return int(self._unmatched)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.mode,
            "layer": self.layer,
            "replaced": self.replaced,
            "unmatched": self.unmatched,
            "calls": self.calls,
        }
        if self.calibration is not None and self.mode == "set_mean":
            out["calibration"] = self.calibration.summary()
        return out


def _replacement(
    h: Tensor, mask: Tensor, bound: Tensor, mode: str, th: OutlierThresholds, means: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(values to write where ``mask``, mask of entries actually replaced)."""
    if mode == "set_zero":
        return torch.zeros_like(h), mask
    if mode == "clip":
        edge = torch.clamp(bound, min=th.abs_threshold)  # [B, 1, 1]
        return torch.sign(h.float()) * edge.reshape(-1, *[1] * (h.dim() - 1)), mask
    assert means is not None
    per_token = means[1].to(h.device).expand(h.shape).clone()
    per_token[..., 0, :] = means[0].to(h.device)  # the first token of every window
    return per_token, mask & ~torch.isnan(per_token)


@contextmanager
def replace_massive_activations(
    model: nn.Module | ModelAdapter,
    calibration: MassiveCalibration,
    mode: str = "set_zero",
    thresholds: OutlierThresholds = DEFAULT_THRESHOLDS,
) -> Iterator[MassiveRecord]:
    """Replace the massive activations of the creating block's output (``calibration.layer``)
    inside the block (``mode`` ``set_zero`` / ``set_mean`` / ``clip``, see module docstring);
    no creating block installs nothing.  The hook is removed on exit."""
    if mode not in MASSIVE_MODES:
        raise ValueError(f"mode must be one of {MASSIVE_MODES}, got {mode!r}")
    adapter = adapter_for(model)
    means = calibration.means() if mode == "set_mean" else None
    record = MassiveRecord(layer=calibration.layer, mode=mode, calibration=calibration)

    def hook(_m: nn.Module, _args: Any, out: Any) -> Any:
        h = first_tensor(out)
        mask, bound = _mask(h, thresholds)
        values, replace = _replacement(h, mask, bound, mode, thresholds, means)
        new = torch.where(replace, values.to(h.dtype), h)
        record.calls += 1
        record._replaced = record._replaced + replace.sum()
        record._unmatched = record._unmatched + (mask & ~replace).sum()
        if isinstance(out, Tensor):
            return new
        return (new, *out[1:]) if isinstance(out, tuple) else [new, *out[1:]]

    handle = None
    try:
        if calibration.layer is not None:
            handle = adapter.blocks()[calibration.layer].register_forward_hook(hook)
        yield record
    finally:
        if handle is not None:
            handle.remove()

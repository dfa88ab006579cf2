"""LayerNorm gamma mitigation probe (SPEC 2, 5) of Raman et al. 2025, "Rethinking the outlier
distribution": channel-wise outliers are traced to outlier entries of the norm scale gamma.

:func:`reset_gamma_outliers` resets the entries flagged by SPEC 2's rule
(:func:`sysout.outliers.rules.gamma_outlier_mask`: ``|gamma_c| > gamma_tau x median|gamma|``,
none when that median is 0) to 1 (``value="one"``) or to the mean of that gamma's *non-outlier*
entries (``value="mean"``; the plain mean would be dragged towards the outliers being removed).
The norms are the adapter's (:meth:`ModelAdapter.norms`: pre-attention, pre-MLP, final); biases
are not touched.  The massive-activation probes are :mod:`sysout.compress.massive`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sysout.adapters import ModelAdapter, adapter_for
from sysout.outliers.rules import DEFAULT_THRESHOLDS, OutlierThresholds, gamma_outlier_mask

GAMMA_VALUES = ("one", "mean")


def norm_gammas(model: nn.Module | ModelAdapter) -> list[tuple[str, Tensor]]:
    """(qualified name, gamma) of every norm the adapter names that has a 1-D scale, each
    Parameter once, in model order."""
    adapter = adapter_for(model)
    wanted = {id(m) for m in adapter.norms().values()}
    out: list[tuple[str, Tensor]] = []
    seen: set[int] = set()
    for name, mod in adapter.model.named_modules():
        w = getattr(mod, "weight", None)
        if id(mod) not in wanted or not isinstance(w, Tensor) or w.dim() != 1 or id(w) in seen:
            continue
        seen.add(id(w))
        out.append((name, w))
    return out


def find_gamma_outliers(
    model: nn.Module | ModelAdapter, thresholds: OutlierThresholds = DEFAULT_THRESHOLDS
) -> dict[str, list[int]]:
    """``{norm name: [outlier indices]}`` for the norms that have any."""
    out: dict[str, list[int]] = {}
    for name, gamma in norm_gammas(model):
        idx = torch.nonzero(gamma_outlier_mask(gamma, thresholds)).reshape(-1)
        if idx.numel():
            out[name] = idx.tolist()
    return out


@dataclass
class GammaResetRecord:
    """Entries changed by :func:`reset_gamma_outliers` (norm name -> indices)."""

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
def reset_gamma_outliers(
    model: nn.Module | ModelAdapter,
    thresholds: OutlierThresholds = DEFAULT_THRESHOLDS,
    value: str = "one",
) -> Iterator[GammaResetRecord]:
    """Reset the norms' gamma outlier entries inside the block (``value`` "one" or "mean", see
    the module docstring); the original entries are restored bit for bit on exit (also on an
    exception)."""
    if value not in GAMMA_VALUES:
        raise ValueError(f"value must be one of {GAMMA_VALUES}, got {value!r}")
    record = GammaResetRecord(tau=thresholds.gamma_tau, value=value)
    saved: list[tuple[Tensor, Tensor, Tensor]] = []  # (gamma, indices, old entries)
    try:
        with torch.no_grad():
            for name, gamma in norm_gammas(model):
                outlier = gamma_outlier_mask(gamma, thresholds).to(gamma.device)
                if not outlier.any():
                    continue
                idx = torch.nonzero(outlier).reshape(-1)
                old = gamma.detach()[idx].clone()
                if value == "one":
                    new = torch.ones_like(old)
                else:
                    new = torch.full_like(old, float(gamma.detach().float()[~outlier].mean()))
                saved.append((gamma, idx, old))
                gamma[idx] = new
                record.changed[name] = idx.tolist()
        yield record
    finally:
        with torch.no_grad():
            for gamma, idx, old in reversed(saved):
                gamma[idx] = old

"""Activation outliers (massive activations, Sun et al. 2024; SPEC section 2).

For a tensor h of shape [B, T, C] (a block output = residual stream, or the MLP down-projection
input) and a = |h|, every figure is taken **per sequence and then averaged over sequences**, as
the anchors' layer curves are (they probe one sequence at a time):

- top-1/2/3, median and mean of a over each sequence's [T, C] values, averaged over sequences;
  ``ratio`` = top1 / median of those averages;
- ``pooled_top1``: the single largest |h| over all sequences (a separate, separately named figure);
- outlier elements and flagged tokens follow :mod:`sysout.outliers.rules` (per-sequence median and
  mean);
- ``first_token_norm_ratio``: ||h[b, 0]|| / median_t ||h[b, t]||, averaged over sequences: the
  residual-state peak of the first token (Guo et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._common import index_list, position_list, safe_ratio
from .rules import (
    DEFAULT_THRESHOLDS,
    OutlierThresholds,
    as_sequences,
    magnitudes,
    massive_activation_mask,
    sequence_medians,
    token_rule_mask,
)


@dataclass(frozen=True)
class ActivationOutlierStats:
    """Activation-outlier statistics of one tensor (one layer) over a batch of sequences.

    ``positions`` are (b, t, c, value) of outlier elements (row-major order; when more than
    ``max_positions`` exist, the largest |value| are kept, still in row-major order, and
    ``truncated`` is True); ``count`` always counts all of them. ``dims`` (feature dims) and
    ``tokens`` ((b, t) pairs) are computed from all outliers, never truncated.
    """

    top1: float  # per-sequence top-1 |h|, averaged over sequences
    top2: float
    top3: float
    median: float  # per-sequence median |h|, averaged
    mean: float  # per-sequence mean |h|, averaged
    ratio: float  # top1 / median
    pooled_top1: float  # max |h| over every sequence
    count: int
    positions: list[tuple[int, int, int, float]]
    dims: list[int]
    tokens: list[tuple[int, int]]
    token_rule_count: int
    token_rule_tokens: list[tuple[int, int]]
    first_token_norm_ratio: float
    numel: int
    num_sequences: int
    truncated: bool

    @property
    def mean_ratio(self) -> float:
        """top1 / mean (the quantity the token rule compares with token_mean_ratio)."""
        return safe_ratio(self.top1, self.mean)

    def scalars(self) -> dict[str, float]:
        """Flat W&B-ready figures."""
        return {
            "top1": self.top1,
            "top2": self.top2,
            "top3": self.top3,
            "median": self.median,
            "mean": self.mean,
            "ratio": self.ratio,
            "mean_ratio": self.mean_ratio,
            "pooled_top1": self.pooled_top1,
            "count": float(self.count),
            "num_dims": float(len(self.dims)),
            "num_tokens": float(len(self.tokens)),
            "token_rule_count": float(self.token_rule_count),
            "first_token_norm_ratio": self.first_token_norm_ratio,
        }


def _keep_largest(mask: torch.Tensor, a: torch.Tensor, limit: int) -> torch.Tensor:
    """The ``limit`` largest-|h| entries of ``mask`` (row-major order preserved)."""
    flat = a.reshape(-1)
    idx = torch.nonzero(mask.reshape(-1)).reshape(-1)
    keep = torch.sort(idx[torch.topk(flat[idx], k=limit).indices]).values
    sel = torch.zeros_like(flat, dtype=torch.bool)
    sel[keep] = True
    return sel.view_as(mask)


def first_token_norm_ratio(h: torch.Tensor) -> float:
    """||h[b, 0]|| / median_t ||h[b, t]|| averaged over sequences (h [B, T, C] or [T, C])."""
    norms = as_sequences(h.detach()).double().norm(dim=-1)  # [B, T]
    med = norms.median(dim=1).values
    ratio = torch.where(med > 0, norms[:, 0] / med.clamp_min(1e-300), torch.nan)
    return float(ratio.nanmean().item()) if ratio.numel() else math.nan


def activation_outliers(
    h: torch.Tensor, thresholds: OutlierThresholds = DEFAULT_THRESHOLDS
) -> ActivationOutlierStats:
    """Massive-activation statistics of h [B, T, C] (a 2-D [T, C] input is one sequence)."""
    hb = as_sequences(h.detach())
    a = magnitudes(hb)
    if a.numel() == 0:
        raise ValueError("activation_outliers: empty tensor")
    bsz = a.shape[0]
    per_seq = a.reshape(bsz, -1)
    k = min(3, per_seq.shape[1])
    top = torch.topk(per_seq, k=k, dim=1).values.double().mean(dim=0).tolist()
    top += [math.nan] * (3 - len(top))
    med = float(sequence_medians(a).double().mean().item())
    mean = float(per_seq.mean(dim=1, dtype=torch.float64).mean().item())

    mask, _ = massive_activation_mask(a, thresholds)
    count = int(mask.sum().item())
    truncated = count > thresholds.max_positions
    sel = _keep_largest(mask, a, thresholds.max_positions) if truncated else mask
    coords = torch.nonzero(sel)
    values = hb[sel].double().tolist()
    positions = [
        (int(b), int(t), int(c), float(v)) for (b, t, c), v in zip(coords.tolist(), values)
    ]
    token_rule_tokens = position_list(token_rule_mask(a, thresholds))

    return ActivationOutlierStats(
        top1=float(top[0]),
        top2=float(top[1]),
        top3=float(top[2]),
        median=med,
        mean=mean,
        ratio=safe_ratio(float(top[0]), med),
        pooled_top1=float(a.max().item()),
        count=count,
        positions=positions,
        dims=index_list(mask.any(dim=1).any(dim=0)),
        tokens=position_list(mask.any(dim=-1)),  # type: ignore[arg-type]
        token_rule_count=len(token_rule_tokens),
        token_rule_tokens=token_rule_tokens,  # type: ignore[arg-type]
        first_token_norm_ratio=first_token_norm_ratio(hb),
        numel=int(a.numel()),
        num_sequences=int(bsz),
        truncated=truncated,
    )

"""Activation outliers (massive activations, Sun et al. 2024; SPEC section 2).

For a tensor h of shape [B, T, C] (a block output = residual stream, or the MLP down-projection
input of width 4C), with a = |h| and every statistic taken over *all* elements of the tensor:

- element rule: h[b, t, c] is an outlier when a > abs_threshold (100, strict)
  **and** a >= median_ratio (1000) x median(a);
- token rule (official code): token (b, t) is flagged when max_c a[b, t, c] > token_mean_ratio
  (1000) x mean(a).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._common import abs_float, index_list, median, position_list, safe_ratio


@dataclass(frozen=True)
class ActivationOutlierStats:
    """Activation-outlier statistics of one tensor (one layer), aggregated over its batch.

    ``positions`` are (b, t, c, value) of outlier elements (row-major order; when more than
    ``max_positions`` exist, the largest |value| are kept, still in row-major order, and
    ``truncated`` is True); ``count`` always counts all of them. ``dims`` (feature dims) and
    ``tokens`` ((b, t) pairs) are computed from all outliers, never truncated.
    """

    top1: float
    top2: float
    top3: float
    median: float
    mean: float
    ratio: float  # top1 / median
    count: int
    positions: list[tuple[int, int, int, float]]
    dims: list[int]
    tokens: list[tuple[int, int]]
    token_rule_count: int
    token_rule_tokens: list[tuple[int, int]]
    numel: int
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
            "count": float(self.count),
            "num_dims": float(len(self.dims)),
            "num_tokens": float(len(self.tokens)),
            "token_rule_count": float(self.token_rule_count),
        }


def _as_btc(h: torch.Tensor) -> torch.Tensor:
    if h.dim() == 2:
        return h.unsqueeze(0)
    if h.dim() != 3:
        raise ValueError(f"expected h of shape [B, T, C] or [T, C], got {tuple(h.shape)}")
    return h


def activation_outliers(
    h: torch.Tensor,
    *,
    abs_threshold: float = 100.0,
    median_ratio: float = 1000.0,
    token_mean_ratio: float = 1000.0,
    max_positions: int = 1000,
) -> ActivationOutlierStats:
    """Massive-activation statistics of h [B, T, C] (a 2-D [T, C] input is one sample, b = 0).

    a = |h| in float32 (bf16/fp16 inputs are upcast); median = torch.median(a) over all
    elements (lower middle value for an even count); mean = mean(a) (float64 accumulation);
    ratio = top1 / median (inf when median = 0 < top1). Outlier element: a > abs_threshold and
    a >= median_ratio * median. Token rule: max_c a[b, t, :] > token_mean_ratio * mean.
    """
    hb = _as_btc(h.detach())
    a = abs_float(hb)
    n = a.numel()
    if n == 0:
        raise ValueError("activation_outliers: empty tensor")
    flat = a.reshape(-1)
    top = torch.topk(flat, k=min(3, n)).values.tolist()
    top += [math.nan] * (3 - len(top))
    med = median(flat)
    mean = float(flat.sum(dtype=torch.float64).item()) / n

    mask = (a > abs_threshold) & (a >= median_ratio * med)
    count = int(mask.sum().item())
    truncated = count > max_positions
    if truncated:
        idx = torch.nonzero(mask.reshape(-1)).reshape(-1)
        keep = torch.topk(flat[idx], k=max_positions).indices
        idx = torch.sort(idx[keep]).values
        sel = torch.zeros_like(flat, dtype=torch.bool)
        sel[idx] = True
        sel = sel.view_as(mask)
    else:
        sel = mask
    coords = torch.nonzero(sel)
    values = hb[sel].double().tolist()
    positions = [
        (int(b), int(t), int(c), float(v)) for (b, t, c), v in zip(coords.tolist(), values)
    ]

    token_max = a.amax(dim=-1)
    token_flag = token_max > token_mean_ratio * mean
    token_rule_tokens = position_list(token_flag)

    return ActivationOutlierStats(
        top1=float(top[0]),
        top2=float(top[1]),
        top3=float(top[2]),
        median=med,
        mean=mean,
        ratio=safe_ratio(float(top[0]), med),
        count=count,
        positions=positions,
        dims=index_list(mask.any(dim=1).any(dim=0)),
        tokens=position_list(mask.any(dim=-1)),  # type: ignore[arg-type]
        token_rule_count=len(token_rule_tokens),
        token_rule_tokens=token_rule_tokens,  # type: ignore[arg-type]
        numel=n,
        truncated=truncated,
    )

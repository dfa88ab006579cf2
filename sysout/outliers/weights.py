"""Weight outliers (SPEC section 2).

For W of shape (out, in) -- the ``nn.Linear.weight`` layout; transpose HF ``Conv1D`` weights first:

- per input column c: col_ratio_c = max_r |W[r, c]| / mean_r |W[r, c]|
- per output row r:   row_ratio_r = max_c |W[r, c]| / mean_c |W[r, c]|

A ratio lies in [1, n] (n = vector length); an all-zero vector gets ratio 1 (constant).
SPEC gives no threshold for outlier rows/columns; ``rules.weight_outlier_mask`` flags row r when
row_ratio_r >= weight_rel_threshold (3) x median(row_ratios), likewise columns. The continuous
figures (max ratios, argmax, medians, full ratio vectors) are always reported.
For GPT-2's MLP ``c_proj`` (4C -> C, W is C x 4C) the outlier rows are residual feature dims and
the outlier columns are down-projection-input channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ._common import abs_float, index_list, median
from .rules import DEFAULT_THRESHOLDS, OutlierThresholds, weight_outlier_mask


@dataclass(frozen=True, eq=False)
class WeightOutlierStats:
    """Weight-outlier statistics of one (out x in) weight. Ratio vectors are float32 CPU tensors."""

    shape: tuple[int, int]
    row_ratios: torch.Tensor  # [out]
    col_ratios: torch.Tensor  # [in]
    max_row_ratio: float
    argmax_row: int
    max_col_ratio: float
    argmax_col: int
    median_row_ratio: float
    median_col_ratio: float
    outlier_rows: list[int]
    outlier_cols: list[int]
    max_abs: float

    def scalars(self) -> dict[str, float]:
        """Flat W&B-ready figures."""
        return {
            "max_row_ratio": self.max_row_ratio,
            "argmax_row": float(self.argmax_row),
            "max_col_ratio": self.max_col_ratio,
            "argmax_col": float(self.argmax_col),
            "median_row_ratio": self.median_row_ratio,
            "median_col_ratio": self.median_col_ratio,
            "num_outlier_rows": float(len(self.outlier_rows)),
            "num_outlier_cols": float(len(self.outlier_cols)),
            "max_abs": self.max_abs,
        }


def _peak_ratio(a: torch.Tensor, dim: int) -> torch.Tensor:
    """max / mean of |W| along ``dim`` (a = |W|); all-zero vectors -> 1."""
    mx = a.amax(dim=dim)
    mean = a.mean(dim=dim, dtype=torch.float64).to(mx.dtype)
    return torch.where(mean > 0, mx / mean.clamp_min(torch.finfo(mx.dtype).tiny), 1.0)


def weight_outliers(
    w: torch.Tensor, thresholds: OutlierThresholds = DEFAULT_THRESHOLDS
) -> WeightOutlierStats:
    """Row/column peak-to-mean ratios of W (out x in) and outlier rows/columns.

    ratio = max|.| / mean|.| along each row (over in) and each column (over out); outlier
    rows/columns by :func:`~sysout.outliers.rules.weight_outlier_mask`.
    """
    if w.dim() != 2 or w.numel() == 0:
        shape = tuple(w.shape)
        raise ValueError(f"weight_outliers expects a non-empty 2-D (out x in) weight, got {shape}")
    a = abs_float(w)
    row = _peak_ratio(a, dim=1)
    col = _peak_ratio(a, dim=0)
    med_row, med_col = median(row), median(col)
    return WeightOutlierStats(
        shape=(int(w.shape[0]), int(w.shape[1])),
        row_ratios=row.float().cpu(),
        col_ratios=col.float().cpu(),
        max_row_ratio=float(row.max().item()),
        argmax_row=int(row.argmax().item()),
        max_col_ratio=float(col.max().item()),
        argmax_col=int(col.argmax().item()),
        median_row_ratio=med_row,
        median_col_ratio=med_col,
        outlier_rows=index_list(weight_outlier_mask(row, med_row, thresholds)),
        outlier_cols=index_list(weight_outlier_mask(col, med_col, thresholds)),
        max_abs=float(a.max().item()),
    )


def weight_outliers_by_name(
    weights: Mapping[str, torch.Tensor], thresholds: OutlierThresholds = DEFAULT_THRESHOLDS
) -> dict[str, WeightOutlierStats]:
    """``weight_outliers`` for every 2-D tensor of a name -> weight mapping (e.g. the weights of
    every projection as [out, in], see :func:`sysout.adapters.linear_weight`);
    tensors that are not 2-D (biases, LayerNorm scales) are skipped. Order is preserved."""
    return {
        name: weight_outliers(w, thresholds)
        for name, w in weights.items()
        if w.dim() == 2 and w.numel() > 0
    }

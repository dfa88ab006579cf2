"""Channel-wise outliers and LayerNorm-scale outliers (Raman et al. 2025; SPEC section 2).

For x [B, T, C] or [N, C] (a LayerNorm input or output; all leading dims are tokens):

    m_c    = max over tokens |x[..., c]|
    frac_c = fraction of tokens with |x[..., c]| >= magnitude (6.0, LLM.int8's threshold)

The channel and gamma rules are :func:`~sysout.outliers.rules.channel_outlier_mask` and
:func:`~sysout.outliers.rules.gamma_outlier_mask` (thresholds in :class:`OutlierThresholds`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ._common import abs_float, fraction, index_list, median, safe_ratio
from .rules import (
    DEFAULT_THRESHOLDS,
    OutlierThresholds,
    channel_outlier_mask,
    gamma_outlier_mask,
)


@dataclass(frozen=True, eq=False)
class ChannelOutlierStats:
    """Channel-outlier statistics of one tensor. Per-channel vectors are float32 CPU tensors [C]."""

    channel_max: torch.Tensor  # m_c
    channel_fraction: torch.Tensor  # frac_c
    median_max: float  # median_c m_c
    top1: float  # max_c m_c
    argmax: int
    ratio: float  # top1 / median_max
    channels: list[int]  # outlier channels
    num_tokens: int

    @property
    def count(self) -> int:
        return len(self.channels)

    def scalars(self) -> dict[str, float]:
        """Flat W&B-ready figures."""
        return {
            "count": float(self.count),
            "top1": self.top1,
            "argmax": float(self.argmax),
            "median": self.median_max,
            "ratio": self.ratio,
            "max_fraction": float(self.channel_fraction.max().item()),
        }


def channel_outliers(
    x: torch.Tensor, thresholds: OutlierThresholds = DEFAULT_THRESHOLDS
) -> ChannelOutlierStats:
    """Channel-wise outliers of x [..., C] (all leading dims are tokens)."""
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"expected x [B, T, C] or [N, C], got {tuple(x.shape)}")
    a = abs_float(x).reshape(-1, x.shape[-1])
    m = a.amax(dim=0)
    frac = (a >= thresholds.channel_magnitude).sum(dim=0, dtype=torch.float64) / a.shape[0]
    med = median(m)
    mask = channel_outlier_mask(m, frac, med, thresholds)
    top1 = float(m.max().item())
    return ChannelOutlierStats(
        channel_max=m.float().cpu(),
        channel_fraction=frac.float().cpu(),
        median_max=med,
        top1=top1,
        argmax=int(m.argmax().item()),
        ratio=safe_ratio(top1, med),
        channels=index_list(mask),
        num_tokens=int(a.shape[0]),
    )


@dataclass(frozen=True)
class GammaOutlierStats:
    """Outlier entries of a LayerNorm scale gamma [C]."""

    entries: list[int]
    values: list[float]  # signed gamma at ``entries``
    median_abs: float
    max_abs: float
    ratio: float  # max_abs / median_abs

    @property
    def count(self) -> int:
        return len(self.entries)

    def scalars(self) -> dict[str, float]:
        """Flat W&B-ready figures."""
        return {
            "count": float(self.count),
            "max_abs": self.max_abs,
            "median_abs": self.median_abs,
            "ratio": self.ratio,
        }


def gamma_outliers(
    gamma: torch.Tensor, thresholds: OutlierThresholds = DEFAULT_THRESHOLDS
) -> GammaOutlierStats:
    """Entries c with |gamma_c| > gamma_tau x median|gamma| (strict; none when the median is 0)."""
    if gamma.numel() == 0:
        raise ValueError("gamma_outliers: empty gamma")
    g = gamma.detach().reshape(-1)
    g = g if g.dtype == torch.float64 else g.float()
    a = g.abs()
    med = median(a)
    mask = gamma_outlier_mask(g, thresholds)
    mx = float(a.max().item())
    return GammaOutlierStats(
        entries=index_list(mask),
        values=[float(v) for v in g[mask].double().tolist()],
        median_abs=med,
        max_abs=mx,
        ratio=safe_ratio(mx, med),
    )


@dataclass(frozen=True)
class CoincidenceStats:
    """Overlap of gamma-outlier entries and outlier channels of the same LayerNorm.

    fraction_of_gamma = overlap / #gamma entries, fraction_of_channels = overlap / #channels,
    jaccard = overlap / #union; each NaN when its denominator is 0."""

    overlap: list[int]
    num_gamma: int
    num_channels: int
    fraction_of_gamma: float
    fraction_of_channels: float
    jaccard: float

    @property
    def coincide(self) -> bool:
        """True when both sets are non-empty and identical."""
        return self.num_gamma > 0 and len(self.overlap) == self.num_gamma == self.num_channels

    def scalars(self) -> dict[str, float]:
        """Flat W&B-ready figures."""
        return {
            "overlap": float(len(self.overlap)),
            "fraction_of_gamma": self.fraction_of_gamma,
            "fraction_of_channels": self.fraction_of_channels,
            "jaccard": self.jaccard,
        }


def gamma_channel_coincidence(
    gamma_entries: Iterable[int] | GammaOutlierStats,
    channels: Iterable[int] | ChannelOutlierStats,
) -> CoincidenceStats:
    """How far the gamma outlier entries coincide with the outlier channels (sets of indices,
    or the stats objects themselves)."""
    g_iter = (
        gamma_entries.entries if isinstance(gamma_entries, GammaOutlierStats) else gamma_entries
    )
    c_iter = channels.channels if isinstance(channels, ChannelOutlierStats) else channels
    g = {int(i) for i in g_iter}
    c = {int(i) for i in c_iter}
    both = g & c
    return CoincidenceStats(
        overlap=sorted(both),
        num_gamma=len(g),
        num_channels=len(c),
        fraction_of_gamma=fraction(len(both), len(g)),
        fraction_of_channels=fraction(len(both), len(c)),
        jaccard=fraction(len(both), len(g | c)),
    )

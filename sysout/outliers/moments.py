"""Kurtosis and infinity norm of a module's tensor (Bondarenko et al. 2023).

Both are computed per sample over the flattened sample x[b].reshape(-1) (first dim = samples;
a tensor with fewer than 2 dims is one sample) and then averaged over samples:

- kurtosis_b = E[(x - mu)^4] / sigma^4 (Pearson, not excess: a Gaussian gives 3), with the
  population variance sigma^2 = E[(x - mu)^2]; float64 accumulation. A constant sample
  (max == min: sigma = 0) has undefined kurtosis: it is NaN and left out of the average; the
  average is NaN when every sample is constant.
- inf_norm_b = max |x_b|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _samples(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.numel() == 0:
        raise ValueError("empty tensor")
    return x.reshape(1, -1) if x.dim() < 2 else x.reshape(x.shape[0], -1)


def kurtosis_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Pearson kurtosis E[(x-mu)^4]/sigma^4 of each sample, float64 [N] (NaN: constant sample)."""
    s = _samples(x).double()
    mu = s.mean(dim=1, keepdim=True)
    d2 = (s - mu).square_()
    var = d2.mean(dim=1)
    m4 = d2.square_().mean(dim=1)
    constant = s.amax(dim=1) == s.amin(dim=1)
    k = m4 / var.square().masked_fill(constant, 1.0)
    return k.masked_fill(constant, math.nan)


def kurtosis(x: torch.Tensor) -> float:
    """Mean over samples of the per-sample kurtosis, constant samples left out (NaN if all are)."""
    k = kurtosis_per_sample(x)
    return float(torch.nanmean(k).item())


def _abs_max_per_sample(x: torch.Tensor) -> torch.Tensor:
    """max |x_b| per sample, float64 [N] (computed in float32, float64 inputs stay float64)."""
    s = _samples(x)
    s = s if s.dtype == torch.float64 else s.float()
    return s.abs().amax(dim=1).double()


def inf_norm(x: torch.Tensor) -> float:
    """Mean over samples of max |x_b|."""
    return float(_abs_max_per_sample(x).mean().item())


@dataclass(frozen=True)
class MomentStats:
    """Kurtosis / inf-norm figures of one tensor."""

    kurtosis: float  # sample-mean kurtosis (constant samples excluded)
    inf_norm: float  # sample-mean of max|x_b|
    max_abs: float  # max |x| over the whole tensor
    num_samples: int
    num_constant: int  # samples with sigma = 0 (excluded from the kurtosis mean)

    def scalars(self) -> dict[str, float]:
        """Flat W&B-ready figures."""
        return {"kurtosis": self.kurtosis, "inf_norm": self.inf_norm, "max_abs": self.max_abs}


def moment_stats(x: torch.Tensor) -> MomentStats:
    """Kurtosis and inf-norm of x (per sample over the first dim, then averaged)."""
    k = kurtosis_per_sample(x)
    norms = _abs_max_per_sample(x)
    return MomentStats(
        kurtosis=float(torch.nanmean(k).item()),
        inf_norm=float(norms.mean().item()),
        max_abs=float(norms.max().item()),
        num_samples=int(k.numel()),
        num_constant=int(torch.isnan(k).sum().item()),
    )

"""The quantizers and range estimators of Bondarenko et al. 2023's static W8A8 (*Quantizable
Transformers*, ``Qualcomm-AI-research/outlier-free-transformers``), rewritten here:

- **weights**: symmetric uniform, one range per tensor, chosen by MSE grid search
  (``quantization/range_estimators.py`` ``MSE_Estimator`` with ``OptMethod.grid``, what
  ``validate_clm.py`` forces for weights): ``candidates`` (100) thresholds ``k * step``,
  ``step = (max|W| + margin) / candidates`` with ``margin = 0.5``, the one with the least
  sum of squared errors wins; ``[-c, c]`` on the signed grid ``-128..127`` (``delta = c/127``),
  or ``[0, c]`` on ``0..255`` when the tensor has no negative entry;
- **activations**: asymmetric uniform, one static range per tensor: the EMA (momentum 0.9) of
  each calibration batch's 0.001st / 99.999th percentiles (``RunningMinMaxEstimator`` with
  ``percentile``; numpy's linear interpolation over the whole batch tensor), widened to
  contain 0; ``delta = (hi - lo) / 255``, ``zero_point = clamp(round(-lo / delta), 0, 255)``,
  ``x_q = delta * (clamp(round(x / delta) + zero_point, 0, 255) - zero_point)``.

As in their ``QuantizationManager``, a quantizer that is estimating updates its range with the
batch and then quantizes with it, so later ops calibrate on already quantized inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .quantize import check_bits

DEFAULT_PERCENTILE = 99.999
DEFAULT_MOMENTUM = 0.9
GRID_CANDIDATES = 100
GRID_MARGIN = 0.5
_EPS = 1e-8  # their quantizers' floor on the range and on the scale


def percentiles(x: Tensor, percentile: float, valid: Tensor | None = None) -> tuple[float, float]:
    """``np.percentile(x[valid], (100 - p, p))`` (linear interpolation) over all of ``x``."""
    p = float(percentile)
    if not 50.0 < p <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
    flat = x.detach().reshape(-1) if valid is None else x.detach()[valid]
    flat = flat.float()
    n = flat.numel()
    if n == 0:
        raise ValueError("percentiles of an empty tensor")
    return _interpolated(flat, (100.0 - p) / 100.0), _interpolated(flat, p / 100.0)


def _interpolated(flat: Tensor, q: float) -> float:
    # numpy's "linear" method: position q * (n - 1) between the two order statistics around it.
    n = flat.numel()
    pos = q * (n - 1)
    below = int(pos)
    above = min(below + 1, n - 1)
    lo, hi = _order_statistics(flat, below, above)
    return lo if pos == below else lo + (pos - below) * (hi - lo)


def _order_statistics(flat: Tensor, r: int, s: int) -> tuple[float, float]:
    """The r-th and s-th smallest values (0-based, r <= s): a tail's few values by ``topk``
    (the 99.999th percentile of a 25M-entry activation is its 251st largest), else kthvalue."""
    n = flat.numel()
    if n - r <= 4096:  # near the top
        top = flat.topk(n - r).values  # descending: index n-1-r holds the r-th smallest
        return float(top[n - 1 - r]), float(top[n - 1 - s])
    if s < 4096:  # near the bottom
        bottom = flat.topk(s + 1, largest=False).values  # ascending
        return float(bottom[r]), float(bottom[s])
    return float(flat.kthvalue(r + 1).values), float(flat.kthvalue(s + 1).values)


def fake_quant_symmetric(x: Tensor, neg: float, pos: float, bits: int) -> Tensor:
    """Their ``SymmetricUniformQuantizer`` after ``set_quant_range(neg, pos)``: signed grid
    ``-2^(b-1)..2^(b-1)-1`` when ``neg < 0``, else ``0..2^b-1``; ``delta = max(|neg|, pos) /
    int_max``. Computed in float32, returned in ``x.dtype``."""
    bits = check_bits(bits)
    neg, pos = min(float(neg), 0.0), max(float(pos), _EPS)
    signed = neg < 0
    int_min, int_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    delta = max(max(-neg, pos) / int_max, _EPS)
    q = torch.clamp(torch.round(x.float() / delta), int_min, int_max)
    return (q * delta).to(x.dtype)


def asymmetric_grid(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """(delta, zero_point) of their ``AsymmetricUniformQuantizer`` for the range [lo, hi]."""
    levels = 2 ** check_bits(bits) - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), _EPS)
    delta = (hi - lo) / levels
    zero_point = min(max(round(-lo / delta), 0), levels)  # round half to even, as torch.round
    return max(delta, _EPS), float(zero_point)


def fake_quant_asymmetric(x: Tensor, lo: float, hi: float, bits: int) -> Tensor:
    """``delta * (clamp(round(x / delta) + zero_point, 0, 2^b - 1) - zero_point)`` for the
    range [lo, hi] (see :func:`asymmetric_grid`); float32 inside, ``x.dtype`` out."""
    delta, zero_point = asymmetric_grid(lo, hi, bits)
    q = torch.clamp(torch.round(x.float() / delta) + zero_point, 0, 2**bits - 1)
    return ((q - zero_point) * delta).to(x.dtype)


@torch.no_grad()
def mse_weight_range(
    w: Tensor, bits: int = 8, candidates: int = GRID_CANDIDATES, margin: float = GRID_MARGIN
) -> tuple[float, float]:
    """(neg, pos) of the symmetric grid with the least squared error on ``w`` among
    ``candidates`` thresholds ``k (max|w| + margin) / candidates``, k = 1..candidates (their
    1-D grid search; ``neg = 0`` for a tensor without negative entries)."""
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    x = w.detach().float().reshape(-1)
    if x.numel() == 0:
        raise ValueError("mse_weight_range of an empty tensor")
    one_sided = bool(x.min() >= 0)
    step = (float(x.abs().max()) + margin) / candidates
    bits = check_bits(bits)
    int_min, int_max = (0, 2**bits - 1) if one_sided else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    best, best_loss = 1, float("inf")
    q = torch.empty_like(x)
    for k in range(1, candidates + 1):
        # fake_quant_symmetric(x, 0 or -c, c, bits) - x, in place (100 passes over every weight)
        delta = max(k * step / int_max, _EPS)
        torch.div(x, delta, out=q)
        q.round_().clamp_(int_min, int_max).mul_(delta).sub_(x)
        loss = float(torch.dot(q, q))
        if loss < best_loss:  # the first minimum, as numpy's argmin
            best, best_loss = k, loss
    c = best * step
    return (0.0 if one_sided else -c), c


@dataclass
class ActQuantizer:
    """One activation tensor's static asymmetric quantizer (module docstring). While
    ``estimating``, each call folds the batch's percentiles into the EMA and quantizes with the
    updated range; afterwards the range is fixed. ``valid`` (a bool mask) limits both the range
    and the quantization to some entries (a masked attention score is left as it is)."""

    name: str
    kind: str
    bits: int = 8
    percentile: float = DEFAULT_PERCENTILE
    momentum: float = DEFAULT_MOMENTUM
    lo: float | None = None
    hi: float | None = None
    batches: int = 0
    estimating: bool = True
    bypass: bool = False  # never reached in calibration: leaves its input as it is

    def __call__(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        if self.bypass:
            return x
        if self.estimating:
            lo, hi = percentiles(x, self.percentile, valid)
            if self.lo is None or self.hi is None:
                self.lo, self.hi = lo, hi
            else:
                m = self.momentum
                self.lo = (1 - m) * lo + m * self.lo
                self.hi = (1 - m) * hi + m * self.hi
            self.batches += 1
        if self.lo is None or self.hi is None:
            raise RuntimeError(f"activation quantizer {self.name} was never calibrated")
        out = fake_quant_asymmetric(x, self.lo, self.hi, self.bits)
        return out if valid is None else torch.where(valid, out, x)

"""Static asymmetric per-tensor quantization of the projections' inputs, calibrated once
(``w8a8_static_linear_inputs``).

A narrower relative of Bondarenko et al. 2023's static W8A8 (*Quantizable Transformers*), kept
under a name that says what it is: they quantize every op's output (the residual sums
included) with MSE weight ranges and an EMA of percentiles over training batches, which is
``w8a8_static`` (:mod:`sysout.compress.static_int8`). Here:

* activations = the input of every projection (Linear / Conv1D; the LM head left out), as the
  other quantizers of :mod:`sysout.compress` do;
* range of one input tensor: for each calibration sequence ``s`` with ``n`` values,
  ``hi_s`` = the ``k``-th smallest value and ``lo_s`` = the ``k``-th largest, with
  ``k = ceil(p/100 * n)`` (nearest rank; ``p = 100`` gives max and min); ``lo, hi`` are the
  means of ``lo_s, hi_s`` over all calibration sequences (independent of how they are batched);
* grid (Nagel et al. 2021's asymmetric uniform quantizer): the range is widened to contain 0,
  ``scale = (hi - lo) / (2^bits - 1)``, ``zero_point = round(-lo / scale)`` in ``[0, 2^bits-1]``,
  ``x_q = (clamp(round(x / scale) + zero_point, 0, 2^bits - 1) - zero_point) * scale``; an
  all-zero range gets scale 1;
* weights: symmetric per-tensor absmax (:func:`sysout.compress.quantize.fake_quantize`).

The calibration pass runs on the unmodified (full-precision) model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sysout.adapters import ModelAdapter, adapter_for

from .layers import (
    WeightSnapshot,
    check_batches,
    projection_input,
    run_batches,
    select_targets,
    transform_weights,
)
from .quantize import check_bits, fake_quantize, input_quantizer_hook

DEFAULT_PERCENTILE = 99.999


def check_percentile(percentile: float) -> float:
    """``percentile`` as a float in (50, 100]: the clip keeps the central values, so the upper
    bound must lie above the median."""
    p = float(percentile)
    if not 50.0 < p <= 100.0:
        raise ValueError(
            f"percentile must be in (50, 100] (100 = no clipping: min/max), got {percentile!r}"
        )
    return p


def percentile_range(x: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    """(lo, hi) per sequence, float32 [B]: ``hi`` the k-th smallest and ``lo`` the k-th largest
    of each sequence's values, ``k = ceil(percentile/100 * n)``.  ``x`` is [B, ...] (a 2-D
    [T, C] tensor is one sequence)."""
    p = check_percentile(percentile)
    flat = x.detach().float().reshape(1 if x.dim() <= 2 else x.shape[0], -1)
    n = flat.shape[1]
    if n == 0:
        raise ValueError("percentile_range of an empty tensor")
    k = min(n, max(1, math.ceil(p / 100.0 * n - 1e-9)))  # guard: 99.5/100*200 is not 199.0001
    hi = flat.kthvalue(k, dim=1).values
    lo = flat.kthvalue(n + 1 - k, dim=1).values
    return lo, hi


def asymmetric_params(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """(scale, zero_point) of the asymmetric ``bits``-bit grid covering [min(lo, 0), max(hi, 0)]."""
    levels = 2 ** check_bits(bits) - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        return 1.0, 0
    scale = (hi - lo) / levels
    zero_point = int(min(levels, max(0, round(-lo / scale))))
    return scale, zero_point


def fake_quantize_asymmetric(x: Tensor, scale: float, zero_point: int, bits: int) -> Tensor:
    """``(clamp(round(x/scale) + zero_point, 0, 2^bits-1) - zero_point) * scale`` in float32,
    returned in ``x.dtype``."""
    levels = 2 ** check_bits(bits) - 1
    q = torch.clamp(torch.round(x.float() / scale) + zero_point, 0, levels)
    return ((q - zero_point) * scale).to(x.dtype)


@dataclass(frozen=True)
class StaticQuantConfig:
    """``a_bits`` asymmetric static activations clipped at ``percentile``; ``w_bits`` symmetric
    per-tensor weights (None: weights untouched).  Head and ``skip`` as in ``QuantConfig``."""

    a_bits: int = 8
    w_bits: int | None = 8
    percentile: float = DEFAULT_PERCENTILE
    skip: tuple[str, ...] = ()
    include_head: bool = False

    def __post_init__(self) -> None:
        check_bits(self.a_bits)
        if self.w_bits is not None:
            check_bits(self.w_bits)
        object.__setattr__(self, "percentile", check_percentile(self.percentile))
        skip = (self.skip,) if isinstance(self.skip, str) else tuple(self.skip)
        object.__setattr__(self, "skip", skip)


@dataclass
class ActivationRange:
    """One input tensor's calibrated range and grid."""

    lo: float
    hi: float
    scale: float
    zero_point: int


def calibrate_ranges(
    model: nn.Module | ModelAdapter,
    modules: Sequence[tuple[str, nn.Module]],
    batches: Sequence[Tensor],
    percentile: float,
) -> dict[str, tuple[float, float]]:
    """``{name: (lo, hi)}``: each module input's percentile range averaged over all calibration
    sequences (see the module docstring)."""
    adapter = adapter_for(model)
    p = check_percentile(percentile)
    sums: dict[str, list[float]] = {name: [0.0, 0.0, 0] for name, _ in modules}
    handles: list[RemovableHandle] = []

    def make_hook(name: str):
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            x = projection_input(args, kwargs)
            lo, hi = percentile_range(x, p)
            acc = sums[name]
            acc[0] += float(lo.double().sum())
            acc[1] += float(hi.double().sum())
            acc[2] += lo.numel()

        return hook

    try:
        for name, mod in modules:
            handles.append(mod.register_forward_pre_hook(make_hook(name), with_kwargs=True))
        run_batches(adapter, batches)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, acc in sums.items() if acc[2] == 0]
    if missing:
        raise RuntimeError(f"these projections received no input during calibration: {missing}")
    return {n: (acc[0] / acc[2], acc[1] / acc[2]) for n, acc in sums.items()}


@dataclass
class StaticQuantRecord:
    """What :func:`static_quantized` calibrated and changed."""

    config: StaticQuantConfig
    ranges: dict[str, ActivationRange] = field(default_factory=dict)
    weights: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        widest = max(self.ranges.items(), key=lambda kv: kv[1].hi - kv[1].lo, default=None)
        return {
            "name": f"W{self.config.w_bits or 16}A{self.config.a_bits}_static",
            "percentile": self.config.percentile,
            "n_weights": len(self.weights),
            "n_activations": len(self.ranges),
            "widest_range": None if widest is None else [widest[0], widest[1].lo, widest[1].hi],
            "skipped": list(self.skipped),
        }


@contextmanager
def static_quantized(
    model: nn.Module | ModelAdapter,
    calibration: Sequence[Tensor] | Tensor | None,
    config: StaticQuantConfig | None = None,
) -> Iterator[StaticQuantRecord]:
    """Calibrate every projection input's range once on ``calibration`` (LongTensor [B, T]
    batches), then quantize inputs with those fixed grids and weights symmetric per tensor
    inside the block; weights restored bit for bit and hooks removed on exit."""
    config = config or StaticQuantConfig()
    batches = check_batches(calibration, "static activation quantization")
    record = StaticQuantRecord(config=config)
    with WeightSnapshot() as edits:
        targets = select_targets(model, config.skip, config.include_head)
        record.skipped = targets.skipped
        ranges = calibrate_ranges(model, targets.inputs, batches, config.percentile)
        for name, mod in targets.inputs:
            lo, hi = ranges[name]
            scale, zp = asymmetric_params(lo, hi, config.a_bits)
            record.ranges[name] = ActivationRange(lo, hi, scale, zp)
            hook = input_quantizer_hook(
                lambda x, s=scale, z=zp: fake_quantize_asymmetric(x, s, z, config.a_bits)
            )
            edits.handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
        if config.w_bits is not None:
            w_bits = config.w_bits
            record.weights = transform_weights(
                targets.weights, lambda w: fake_quantize(w, w_bits, "per_tensor"), edits
            )
        yield record

"""Registry of named compression methods and mitigation probes (SPEC section 5).

Every entry is a callable ``method(model, calibration) -> context manager``; inside the ``with``
block the model is compressed (or probed), on exit it is restored exactly.  ``calibration`` is a
list of LongTensor [B, T] token-id batches (needed by Wanda and the residual probes; others
ignore it).  Entries stack: ``with apply_methods(model, ["gamma_reset_one", "w8a8"], cal): ...``.

    with get_method("wanda_50")(model, calibration) as record:
        ppl = evaluate(model)
    log(record.summary())
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .mitigate import (
    clip_residual_activations,
    find_massive_activation_layer,
    reset_layernorm_gamma_outliers,
)
from .prune import pruned
from .quantize import QuantConfig, quantized


@dataclass
class BaselineRecord:
    """Record yielded by the no-op ``baseline`` method."""

    def summary(self) -> dict[str, Any]:
        return {"method": "baseline"}


@dataclass(frozen=True)
class MitigationThresholds:
    """The SPEC section 2 thresholds the mitigation probes detect outliers with."""

    gamma_tau: float = 10.0  # LayerNorm gamma outlier: |gamma_c| > tau x median |gamma|
    abs_threshold: float = 100.0  # massive activation: |x| > abs_threshold ...
    median_ratio: float = 1000.0  # ... and |x| >= median_ratio x median |x|


Factory = Callable[
    [nn.Module, Sequence[Any] | None, MitigationThresholds], AbstractContextManager[Any]
]


@dataclass(frozen=True)
class Method:
    """A named method: ``kind`` is "baseline", "quantize", "prune" or "mitigate"."""

    name: str
    kind: str
    description: str
    factory: Factory
    needs_calibration: bool = False

    def __call__(
        self,
        model: nn.Module,
        calibration: Sequence[Any] | None = None,
        thresholds: MitigationThresholds | None = None,
    ) -> AbstractContextManager[Any]:
        if isinstance(calibration, torch.Tensor):  # one batch
            calibration = [calibration]
        if self.needs_calibration and (calibration is None or len(calibration) == 0):
            raise ValueError(f"method {self.name!r} needs calibration batches")
        return self.factory(model, calibration, thresholds or MitigationThresholds())


def _quant(name: str) -> Factory:
    return lambda model, cal, th: quantized(model, QuantConfig.from_name(name))


def _prune(method: str, pattern: str) -> Factory:
    return lambda model, cal, th: pruned(
        model, method=method, pattern=pattern, sparsity=0.5, calibration=cal
    )


def _residual(mode: str) -> Factory:
    @contextmanager
    def factory(
        model: nn.Module, cal: Sequence[Any] | None, th: MitigationThresholds
    ) -> Iterator[Any]:
        limits = dict(abs_threshold=th.abs_threshold, median_ratio=th.median_ratio)
        start = find_massive_activation_layer(model, list(cal or []), **limits)
        with clip_residual_activations(model, start, mode=mode, **limits) as record:
            yield record

    return factory


_ENTRIES = [
    Method(
        "baseline",
        "baseline",
        "unmodified model",
        lambda model, cal, th: nullcontext(BaselineRecord()),
    ),
    Method("w8a8", "quantize", "RTN W8 per-channel, A8 per-token", _quant("W8A8")),
    Method("w6a6", "quantize", "RTN W6 per-channel, A6 per-token", _quant("W6A6")),
    Method("w4a8", "quantize", "RTN W4 per-channel, A8 per-token", _quant("W4A8")),
    Method("w4a16", "quantize", "RTN W4 per-channel, activations 16-bit", _quant("W4A16")),
    Method("w4a4", "quantize", "RTN W4 per-channel, A4 per-token", _quant("W4A4")),
    Method(
        "w8a8_per_tensor", "quantize", "RTN W8 per-tensor, A8 per-tensor", _quant("W8A8_per_tensor")
    ),
    Method(
        "magnitude_50",
        "prune",
        "magnitude, 50% unstructured per row",
        _prune("magnitude", "unstructured"),
    ),
    Method("magnitude_2of4", "prune", "magnitude, 2:4 semi-structured", _prune("magnitude", "2:4")),
    Method(
        "wanda_50",
        "prune",
        "Wanda, 50% unstructured per row",
        _prune("wanda", "unstructured"),
        needs_calibration=True,
    ),
    Method(
        "wanda_2of4",
        "prune",
        "Wanda, 2:4 semi-structured",
        _prune("wanda", "2:4"),
        needs_calibration=True,
    ),
    Method(
        "gamma_reset_one",
        "mitigate",
        "LayerNorm gamma outliers (> tau x median, tau 10) set to 1",
        lambda model, cal, th: reset_layernorm_gamma_outliers(model, tau=th.gamma_tau, value="one"),
    ),
    Method(
        "gamma_reset_mean",
        "mitigate",
        "LayerNorm gamma outliers (> tau x median) set to the mean of the other entries",
        lambda model, cal, th: reset_layernorm_gamma_outliers(model, th.gamma_tau, value="mean"),
    ),
    Method(
        "residual_median",
        "mitigate",
        "massive activations in block inputs after the creating block -> token median",
        _residual("median"),
        needs_calibration=True,
    ),
    Method(
        "residual_clip",
        "mitigate",
        "massive activations in block inputs after the creating block -> clipped to threshold",
        _residual("clip"),
        needs_calibration=True,
    ),
]

#: name -> :class:`Method` (callable ``(model, calibration) -> context manager``).
METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}


def list_methods(kind: str | None = None) -> list[str]:
    """Registered names (in table order), optionally only those of one ``kind``."""
    return [n for n, m in METHODS.items() if kind is None or m.kind == kind]


def get_method(name: str) -> Method:
    """The registered method ``name`` (case-insensitive); ValueError listing valid names."""
    key = name.strip().lower()
    if key not in METHODS:
        raise ValueError(f"unknown compression method {name!r}; valid names: {', '.join(METHODS)}")
    return METHODS[key]


def register_method(method: Method, overwrite: bool = False) -> None:
    """Add a method to :data:`METHODS` (ValueError on a duplicate name unless ``overwrite``)."""
    if method.name in METHODS and not overwrite:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method


@contextmanager
def apply_methods(
    model: nn.Module,
    names: Sequence[str],
    calibration: Sequence[Any] | None = None,
    thresholds: MitigationThresholds | None = None,
) -> Iterator[list[Any]]:
    """Enter several methods in order (e.g. a mitigation probe, then a quantizer); yields their
    records; all are undone in reverse order on exit."""
    with ExitStack() as stack:
        yield [stack.enter_context(get_method(n)(model, calibration, thresholds)) for n in names]

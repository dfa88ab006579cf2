"""Registry of named compression methods and mitigation probes (SPEC section 5).

Every entry is a callable ``method(model, calibration, thresholds) -> context manager``; inside
the ``with`` block the model is compressed (or probed), on exit it is restored exactly.
``calibration`` is a list of LongTensor [B, T] token-id batches (needed by the static quantizers,
Wanda and the massive-activation probes; others ignore it), or a mapping from calibration-set
name to such a list: each method then takes its own ``calibration_set`` (``"calibration"``: the
validation windows; ``"train"``: training batches, what ``w8a8_static`` estimates ranges on, as
Bondarenko et al. do); ``thresholds`` an
:class:`~sysout.outliers.rules.OutlierThresholds` (or a mapping of overrides; the probes detect
outliers with it).  Entries stack:
``with apply_methods(model, ["gamma_reset_one", "w8a8"], cal): ...``.

    with get_method("wanda_50")(model, calibration) as record:
        ppl = evaluate(model)
    log(record.summary())
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sysout.outliers.rules import OutlierThresholds

from .massive import calibrate_massive_activations, replace_massive_activations
from .mitigate import reset_gamma_outliers
from .prune import pruned
from .quantize import QuantConfig, quantized
from .static_int8 import StaticInt8Config, static_int8
from .static_ops import DEFAULT_MOMENTUM
from .static_quant import DEFAULT_PERCENTILE, StaticQuantConfig, static_quantized


@dataclass
class BaselineRecord:
    """Record yielded by the no-op ``baseline`` method."""

    def summary(self) -> dict[str, Any]:
        return {"method": "baseline"}


Factory = Callable[
    [nn.Module, Sequence[Any] | None, OutlierThresholds], AbstractContextManager[Any]
]

KINDS = ("baseline", "quantize", "prune", "mitigate")


@dataclass(frozen=True)
class Method:
    """A named method: ``kind`` is one of :data:`KINDS`; ``description`` is the convention (the
    legend of every table), ``anchor`` the paper / official code whose convention it follows."""

    name: str
    kind: str
    description: str
    factory: Factory
    needs_calibration: bool = False
    anchor: str = ""
    calibration_set: str = "calibration"  # which set of a calibration mapping it takes

    def __call__(
        self,
        model: nn.Module,
        calibration: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
        thresholds: OutlierThresholds | Mapping[str, Any] | None = None,
    ) -> AbstractContextManager[Any]:
        if isinstance(calibration, Mapping):  # one list per calibration set
            calibration = calibration.get(self.calibration_set)
        if isinstance(calibration, torch.Tensor):  # one batch
            calibration = [calibration]
        if self.needs_calibration and (calibration is None or len(calibration) == 0):
            raise ValueError(
                f"method {self.name!r} needs calibration batches (set {self.calibration_set!r})"
            )
        return self.factory(model, calibration, OutlierThresholds.from_any(thresholds))


def _quant(name: str) -> Factory:
    return lambda model, cal, th: quantized(model, QuantConfig.from_name(name))


def _prune(method: str, pattern: str) -> Factory:
    return lambda model, cal, th: pruned(
        model, method=method, pattern=pattern, sparsity=0.5, calibration=cal
    )


def _massive(mode: str) -> Factory:
    @contextmanager
    def factory(
        model: nn.Module, cal: Sequence[Any] | None, th: OutlierThresholds
    ) -> Iterator[Any]:
        found = calibrate_massive_activations(model, list(cal or []), th)
        with replace_massive_activations(model, found, mode=mode, thresholds=th) as record:
            yield record

    return factory


_SQ = "SmoothQuant fake_quant.py (mit-han-lab/smoothquant)"
_RTN = "RTN symmetric, restricted range: W{w} per output channel, A{a} dynamic per token"
_WANDA = "Wanda lib/prune.py (locuslab/wanda)"
_SUN = "Sun et al. 2024, lib/hook.py (locuslab/massive-activations)"
_RAMAN = "Raman et al. 2025 (Rethinking the outlier distribution in LLMs)"
_BONDARENKO = (
    "Bondarenko et al. 2023 (Quantizable Transformers), Qualcomm outlier-free-transformers"
)
_MASSIVE = "massive activations (SPEC 2) in the output of the block that creates them"

_ENTRIES = [
    Method(
        "baseline", "baseline", "unmodified model", lambda m, c, t: nullcontext(BaselineRecord())
    ),
    Method("w8a8", "quantize", _RTN.format(w=8, a=8), _quant("W8A8"), anchor=_SQ),
    Method("w6a6", "quantize", _RTN.format(w=6, a=6), _quant("W6A6"), anchor=_SQ),
    Method("w4a8", "quantize", _RTN.format(w=4, a=8), _quant("W4A8"), anchor=_SQ),
    Method(
        "w4a16",
        "quantize",
        "RTN symmetric: W4 per output channel, activations not quantized",
        _quant("W4A16"),
        anchor=_SQ,
    ),
    Method("w4a4", "quantize", _RTN.format(w=4, a=4), _quant("W4A4"), anchor=_SQ),
    Method(
        "w8a8_per_sequence",
        "quantize",
        "RTN symmetric: W8 per tensor, A8 dynamic with one scale per sequence",
        _quant("W8A8_per_sequence"),
        anchor=_SQ + ", per-tensor quantizers, one sequence per forward",
    ),
    Method(
        "w8a8_static",
        "quantize",
        "static INT8 of every op: W8 symmetric per tensor, MSE-optimal range (grid search); A8 "
        "static asymmetric per tensor on every op's output (embeddings, norms, every Linear, "
        "MLP activation, attention head outputs, softmax in/out where reachable, residual sums), "
        "range = EMA "
        f"(momentum {DEFAULT_MOMENTUM:g}) of per-batch {100 - DEFAULT_PERCENTILE:.3f}/"
        f"{DEFAULT_PERCENTILE:g} percentiles over 4 training batches; LM head in full precision",
        lambda model, cal, th: static_int8(model, cal, StaticInt8Config()),
        needs_calibration=True,
        anchor=_BONDARENKO + " validate_clm.py --quant_setup fp32_head --ranges_acts "
        "running_minmax --percentile 99.999 --est_num_batches 4, weights MSE grid",
        calibration_set="train",
    ),
    Method(
        "w8a8_static_linear_inputs",
        "quantize",
        "W8 symmetric per tensor (absmax); A8 static asymmetric per tensor on the input of every "
        f"projection only, range clipped at the {DEFAULT_PERCENTILE:g}th percentile per "
        "sequence, averaged over the validation calibration windows",
        lambda model, cal, th: static_quantized(model, cal, StaticQuantConfig()),
        needs_calibration=True,
        anchor="sysout's narrower variant of " + _BONDARENKO + " (Linear inputs only, absmax "
        "weights: not their scope or estimators)",
    ),
    Method(
        "w8_absmax",
        "quantize",
        "weight-only W8 symmetric per-tensor absmax, activations not quantized",
        lambda model, cal, th: quantized(model, QuantConfig(8, None, "per_tensor")),
        anchor="the paper's W8 absmax rows; " + _SQ + " quantize_weight_per_tensor_absmax",
    ),
    Method(
        "magnitude_50",
        "prune",
        "magnitude |W|, 50% of every output row",
        _prune("magnitude", "unstructured"),
        anchor=_WANDA + ", per-output comparison group",
    ),
    Method(
        "magnitude_50_matrix",
        "prune",
        "magnitude |W|, 50% of every matrix (one threshold per matrix)",
        _prune("magnitude", "matrix"),
        anchor=_WANDA + " prune_magnitude",
    ),
    Method(
        "magnitude_2of4",
        "prune",
        "magnitude |W|, 2 of every 4 consecutive inputs of a row",
        _prune("magnitude", "2:4"),
        anchor=_WANDA + " prune_magnitude (n:m)",
    ),
    Method(
        "wanda_50",
        "prune",
        "Wanda |W| x ||X||, 50% of every output row, sequential calibration",
        _prune("wanda", "unstructured"),
        needs_calibration=True,
        anchor=_WANDA + " prune_wanda",
    ),
    Method(
        "wanda_2of4",
        "prune",
        "Wanda |W| x ||X||, 2 of every 4 consecutive inputs of a row",
        _prune("wanda", "2:4"),
        needs_calibration=True,
        anchor=_WANDA + " prune_wanda (n:m)",
    ),
    Method(
        "gamma_reset_one",
        "mitigate",
        "norm gamma outliers (> gamma_tau x median|gamma|) set to 1",
        lambda model, cal, th: reset_gamma_outliers(model, th, value="one"),
        anchor=_RAMAN,
    ),
    Method(
        "gamma_reset_mean",
        "mitigate",
        "norm gamma outliers (> gamma_tau x median|gamma|) set to the mean of the other entries",
        lambda model, cal, th: reset_gamma_outliers(model, th, value="mean"),
        anchor=_RAMAN,
    ),
    Method(
        "set_zero",
        "mitigate",
        _MASSIVE + " set to 0",
        _massive("set_zero"),
        needs_calibration=True,
        anchor=_SUN + " set_zero",
    ),
    Method(
        "set_mean",
        "mitigate",
        _MASSIVE + " set to their mean over the calibration sequences",
        _massive("set_mean"),
        needs_calibration=True,
        anchor=_SUN + " set_mean",
    ),
    Method(
        "residual_clip",
        "mitigate",
        _MASSIVE + " clipped to the edge of the rule (max(abs_threshold, median_ratio x median))",
        _massive("clip"),
        needs_calibration=True,
        anchor="no anchor code (SPEC 5's 'clip'); motivated by " + _RAMAN,
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
    calibration: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
    thresholds: OutlierThresholds | Mapping[str, Any] | None = None,
) -> Iterator[list[Any]]:
    """Enter several methods in order (e.g. a mitigation probe, then a quantizer); yields their
    records; all are undone in reverse order on exit."""
    with ExitStack() as stack:
        yield [stack.enter_context(get_method(n)(model, calibration, thresholds)) for n in names]

"""Run compression methods over one model: enter each method's context, measure, restore.

A method spec is a registered name of :mod:`sysout.compress` or several joined by ``+``
(``gamma_reset_one+w8a8``: a mitigation probe, then a quantizer, entered in that order). A failing
method gives NaN and its error, and the next method runs: one bad method never loses a table.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sysout.compress import METHODS, apply_methods, get_method
from sysout.evaluation.perplexity import nll_to_ppl
from sysout.outliers.rules import OutlierThresholds

log = logging.getLogger(__name__)

BASELINE = "baseline"


@dataclass
class MethodResult:
    method: str
    nll: float = math.nan
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the methods' record summaries

    @property
    def ppl(self) -> float:
        return nll_to_ppl(self.nll)


@dataclass
class CheckpointResult:
    """One table row: a checkpoint, its validation loss, and every method's result."""

    label: str
    checkpoint: str
    run: str
    variant: str | None = None
    step: int | None = None
    val_loss: float = math.nan
    methods: list[MethodResult] = field(default_factory=list)
    error: str | None = None  # the checkpoint failed as a whole (load, data, ...)
    problems: list[str] = field(default_factory=list)  # non-fatal: no val loss, no report, ...
    outliers: dict[str, float] = field(default_factory=dict)  # outlier-probe summary
    files: dict[str, str] = field(default_factory=dict)  # outlier report files by name
    info: dict[str, Any] = field(default_factory=dict)  # texts used, block size, stride, ...

    def result(self, spec: str) -> MethodResult | None:
        return next((m for m in self.methods if m.method == spec), None)

    def ppl(self, spec: str) -> float:
        r = self.result(spec)
        return r.ppl if r is not None else math.nan

    @property
    def tokens(self) -> int:
        return max((m.tokens for m in self.methods), default=0)

    def errors(self) -> list[str]:
        out = [f"checkpoint: {self.error}"] if self.error else []
        out += [f"{m.method}: {m.error}" for m in self.methods if m.error]
        out += self.problems
        return out


def parse_method_spec(spec: str) -> list[str]:
    """``"gamma_reset_one+w8a8"`` -> ``["gamma_reset_one", "w8a8"]`` (registered, lower-case).
    ValueError naming the unknown part and listing the valid names."""
    parts = [p.strip().lower() for p in str(spec).split("+")]
    if not all(parts):
        raise ValueError(f"empty method name in {spec!r}; combine methods as 'a+b'")
    for part in parts:
        if part not in METHODS:
            raise ValueError(
                f"unknown compression method {part!r}"
                + (f" in {spec!r}" if len(parts) > 1 else "")
                + f"; valid names: {', '.join(METHODS)} (combine them with '+')"
            )
    return parts


def normalize_methods(specs: str | Iterable[str] | None) -> list[str]:
    """Validated, de-duplicated specs with ``baseline`` first (every table is read against the
    unmodified model). Raises before any evaluation work on an unknown name."""
    if specs is None:
        specs = []
    elif isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    out: list[str] = [BASELINE]
    for spec in specs:
        canonical = "+".join(parse_method_spec(spec))
        if canonical not in out:
            out.append(canonical)
    return out


def needs_calibration(spec: str) -> bool:
    return bool(calibration_sets(spec))


def calibration_sets(spec: str) -> set[str]:
    """The calibration sets (``calibration``, ``train``) the methods of ``spec`` need."""
    methods = [get_method(name) for name in parse_method_spec(spec)]
    return {m.calibration_set for m in methods if m.needs_calibration}


def model_fingerprint(model: nn.Module) -> tuple[torch.Tensor, int]:
    """Per-parameter |sum| (cheap) and the number of hooks: what a method must give back."""
    with torch.no_grad():
        sums = torch.stack([p.detach().float().abs().sum() for p in model.parameters()]).cpu()
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return sums, hooks


def _details(names: Sequence[str], records: Sequence[Any]) -> dict[str, Any]:
    """``{method name: its record's summary}`` for each part of a spec."""
    return {n: rec.summary() if hasattr(rec, "summary") else {} for n, rec in zip(names, records)}


def evaluate_methods(
    model: nn.Module,
    specs: Sequence[str],
    measure: Callable[[nn.Module], Any],
    calibration: Sequence[torch.Tensor] | Mapping[str, Sequence[torch.Tensor]] | None = None,
    calibration_error: str | Mapping[str, str] | None = None,
    on_done: Callable[[MethodResult], None] | None = None,
    thresholds: OutlierThresholds | None = None,
) -> list[MethodResult]:
    """For each spec: apply it, ``measure(model)`` (an object with ``nll`` and ``tokens``), undo.

    ``calibration`` are token batches for the methods that need them, or one list per
    calibration set (``{"calibration": ..., "train": ...}``, each method takes its own); when
    they could not be built, ``calibration_error`` (one string, or one per set) says why and
    those methods fail with it (the others still run).
    ``thresholds`` (SPEC 2's, default the SPEC's) are what the mitigation probes detect with.
    After each method the model is checked to be restored; if it is not, RuntimeError (every
    later number would be wrong).
    """
    thresholds = OutlierThresholds.from_any(thresholds)
    reference = model_fingerprint(model)
    results = []
    for spec in specs:
        result = MethodResult(spec)
        start = time.perf_counter()
        try:
            for missing in sorted(calibration_sets(spec)):
                why = (
                    calibration_error.get(missing)
                    if isinstance(calibration_error, Mapping)
                    else calibration_error
                )
                if why:
                    raise RuntimeError(f"no calibration data: {why} (calibration set {missing!r})")
            names = parse_method_spec(spec)
            with apply_methods(model, names, calibration, thresholds) as records:
                measured = measure(model)
                result.details = _details(names, records)
            result.nll, result.tokens = float(measured.nll), int(measured.tokens)
        except Exception as err:  # noqa: BLE001  (record it, go on with the next method)
            result.error = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            log.warning("method %s failed: %s", spec, result.error)
        result.seconds = time.perf_counter() - start
        sums, hooks = model_fingerprint(model)
        if hooks != reference[1] or not torch.equal(sums, reference[0]):
            result.error = "did not restore the model; later methods not run"
            results.append(result)
            if on_done is not None:
                on_done(result)
            raise RuntimeError(f"method {spec!r} did not restore the model; stopping here")
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results

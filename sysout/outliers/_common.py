"""Small shared helpers of the outlier-statistics package (not public API)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import torch

_Settings = TypeVar("_Settings")


def settings_from(cls: type[_Settings], value: Any, what: str) -> _Settings:
    """A frozen settings dataclass from an instance (as it is), None (the defaults) or a
    (Hydra) mapping of overrides, where a None value keeps that field's default and an unknown
    key is an error naming the valid ones (``what`` names the settings in it)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping of its keys, got {value!r}")
    known = {f.name for f in fields(cls)}
    given = {k: v for k, v in dict(value).items() if v is not None}
    unknown = set(given) - known
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; valid: {sorted(known)}")
    return cls(**given)


def abs_float(x: torch.Tensor) -> torch.Tensor:
    """|x| in float32 (float64 inputs stay float64), detached, on x's device."""
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.float()
    return x.abs()


def median(x: torch.Tensor) -> float:
    """Median of all elements, torch.median convention (the lower of the two middle values
    for an even count), which is what the official massive-activations code uses."""
    return float(torch.median(x.reshape(-1)).item()) if x.numel() else math.nan


def safe_ratio(num: float, den: float) -> float:
    """num / den with 0/0 -> nan and x/0 -> inf (x > 0)."""
    if den == 0.0:
        return math.nan if num == 0.0 else math.copysign(math.inf, num)
    return num / den


def fraction(numerator: int, denominator: int) -> float:
    """numerator / denominator, NaN when the denominator is 0."""
    return numerator / denominator if denominator else math.nan


def index_list(mask: torch.Tensor) -> list[int]:
    """Sorted Python ints of the True entries of a 1-D bool mask."""
    return [int(i) for i in torch.nonzero(mask.reshape(-1)).reshape(-1).tolist()]


def position_list(mask: torch.Tensor) -> list[tuple[int, ...]]:
    """Row-major list of index tuples (Python ints) of the True entries of a bool mask."""
    return [tuple(int(v) for v in row) for row in torch.nonzero(mask).tolist()]

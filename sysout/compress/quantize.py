"""Round-to-nearest symmetric fake quantization of weights and activations (SPEC section 5).

Fake quantization keeps tensors in floating point but snaps every value onto the integer grid
of a ``bits``-bit symmetric quantizer, so that perplexity measured afterwards shows what an
integer kernel would lose.  Formulas (absmax / round-to-nearest, "RTN", as SmoothQuant's
``fake_quant.py``):

    qmax  = 2^(bits-1) - 1                      (symmetric *restricted* range: -qmax..qmax,
                                                 the code -2^(bits-1) is never used)
    scale = absmax(x over the group) / qmax
    x_q   = clamp(round(x / scale), -qmax, qmax) * scale

``round`` is ``torch.round`` (ties to even).  A group whose absmax is 0 gets scale 1, so an
all-zero row stays zero and nothing is NaN (SmoothQuant clamps the scale at 1e-5 instead: the
same result on a zero group).  Arithmetic is float32 whatever the input dtype; the result is cast
back to the input dtype.

Granularity (which values share one scale):
  * ``per_tensor``   - one scale for the whole tensor (weights);
  * ``per_channel``  - one scale per slice along dim 0: for a weight ``[out, in]`` one per output
    channel (the usual weight granularity);
  * ``per_token``    - one scale per vector along the last dim: for an activation [B, T, C] one
    per token (dynamic, the usual activation granularity);
  * ``per_sequence`` - for an activation [B, T, C] one scale per sequence, i.e. SmoothQuant's
    dynamic "per-tensor" activation quantizer as if each window ran alone (its evaluation runs
    one sequence at a time), so results do not depend on how windows are batched.

The static, calibrated, asymmetric convention is :mod:`sysout.compress.static_quant`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sysout.adapters import ModelAdapter

from .layers import (
    WeightSnapshot,
    projection_input,
    select_targets,
    transform_weights,
    with_projection_input,
)

GRANULARITIES = ("per_tensor", "per_channel", "per_token", "per_sequence")
WEIGHT_GRANULARITIES = ("per_tensor", "per_channel")
ACT_GRANULARITIES = ("per_token", "per_sequence")

#: Bit widths at or above this are treated as "not quantized" when parsing names (A16, W16).
FULL_PRECISION_BITS = 16


def check_bits(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 2:
        raise ValueError(f"bits must be an int >= 2 (symmetric restricted range), got {bits!r}")
    return bits


def qmax_for(bits: int) -> int:
    """Largest code of the symmetric restricted range: 2^(bits-1) - 1 (127 for 8 bits)."""
    return 2 ** (check_bits(bits) - 1) - 1


def absmax_scale(x: Tensor, bits: int, granularity: str = "per_tensor") -> Tensor:
    """float32 scale absmax / qmax, shaped to broadcast against ``x``; 1 where absmax is 0."""
    qmax = qmax_for(bits)
    xf = x.detach().float().abs()
    if granularity == "per_sequence" and x.dim() < 3:  # [T, C]: one sequence
        granularity = "per_tensor"
    if granularity == "per_tensor":
        amax = xf.amax() if xf.numel() else torch.zeros((), device=x.device)
        amax = amax.reshape([1] * x.dim())
    elif granularity in ("per_channel", "per_sequence"):
        if x.dim() < 1:
            raise ValueError(f"{granularity} quantization needs a tensor with at least 1 dim")
        amax = xf.amax(dim=tuple(range(1, x.dim())), keepdim=True) if x.dim() > 1 else xf
    elif granularity == "per_token":
        if x.dim() < 1:
            raise ValueError("per_token quantization needs a tensor with at least 1 dim")
        amax = xf.amax(dim=-1, keepdim=True)
    else:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
    scale = amax / qmax
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def fake_quantize(x: Tensor, bits: int, granularity: str = "per_tensor") -> Tensor:
    """Symmetric round-to-nearest fake quantization (restricted range [-qmax, qmax]).

    ``clamp(round(x / s), -qmax, qmax) * s`` with ``s = absmax / (2^(bits-1) - 1)`` per group
    (see module docstring).  Computed in float32, returned in ``x.dtype``; an already quantized
    tensor is a fixed point.  Does not modify ``x``.
    """
    qmax = qmax_for(bits)
    scale = absmax_scale(x, bits, granularity)
    q = torch.clamp(torch.round(x.float() / scale), -qmax, qmax)
    return (q * scale).to(x.dtype)


# ----------------------------------------------------------------------------- configuration

_NAME_RE = re.compile(r"^w(\d+)a(\d+)(?:_(per_sequence))?$")


@dataclass(frozen=True)
class QuantConfig:
    """What :func:`quantized` does.  ``None`` bits = leave that side in full precision.

    The LM head (``adapter.output_head()``) is left out unless ``include_head``; ``skip`` holds
    further qualified-name patterns (see :func:`sysout.compress.layers.name_matches`).
    """

    w_bits: int | None
    a_bits: int | None
    w_granularity: str = "per_channel"
    a_granularity: str = "per_token"
    skip: tuple[str, ...] = ()
    include_head: bool = False

    def __post_init__(self) -> None:
        for b in (self.w_bits, self.a_bits):
            if b is not None:
                check_bits(b)
        if self.w_granularity not in WEIGHT_GRANULARITIES:
            raise ValueError(
                f"w_granularity must be one of {WEIGHT_GRANULARITIES}, got {self.w_granularity!r}"
            )
        if self.a_granularity not in ACT_GRANULARITIES:
            raise ValueError(
                f"a_granularity must be one of {ACT_GRANULARITIES}, got {self.a_granularity!r}"
            )
        skip = (self.skip,) if isinstance(self.skip, str) else tuple(self.skip)
        object.__setattr__(self, "skip", skip)

    @property
    def name(self) -> str:
        """Canonical short name, e.g. ``W8A8`` or ``W4A16`` (granularity not included)."""
        w = self.w_bits if self.w_bits is not None else FULL_PRECISION_BITS
        a = self.a_bits if self.a_bits is not None else FULL_PRECISION_BITS
        return f"W{w}A{a}"

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> QuantConfig:
        """Parse ``W<b>A<b>`` (``W8A8``, ``W4A16``, ...), case-insensitive; a width >= 16 means
        "not quantized".  Suffix ``_per_sequence``: weights per tensor, activations one scale per
        sequence.  ``overrides`` go to the constructor."""
        m = _NAME_RE.match(name.strip().lower())
        if m is None:
            raise ValueError(
                f"cannot parse quantization name {name!r}; expected W<bits>A<bits> such as "
                "W8A8, W6A6, W4A8, W4A16, W4A4 (optionally with suffix _per_sequence)"
            )
        w, a = int(m.group(1)), int(m.group(2))
        kwargs: dict[str, Any] = {
            "w_bits": None if w >= FULL_PRECISION_BITS else w,
            "a_bits": None if a >= FULL_PRECISION_BITS else a,
        }
        if m.group(3):
            kwargs.update(w_granularity="per_tensor", a_granularity="per_sequence")
        kwargs.update(overrides)
        return cls(**kwargs)


def parse_quant_name(name: str, **overrides: Any) -> QuantConfig:
    """Alias of :meth:`QuantConfig.from_name`."""
    return QuantConfig.from_name(name, **overrides)


# ----------------------------------------------------------------------------- context manager


@dataclass
class QuantRecord:
    """What :func:`quantized` changed: module names, and the config used."""

    config: QuantConfig
    weights: list[str] = field(default_factory=list)
    activations: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "w_bits": self.config.w_bits,
            "a_bits": self.config.a_bits,
            "w_granularity": self.config.w_granularity,
            "a_granularity": self.config.a_granularity,
            "n_weights": len(self.weights),
            "n_activations": len(self.activations),
            "skipped": list(self.skipped),
        }


def input_quantizer_hook(quantize: Any) -> Any:
    """A forward pre-hook (``with_kwargs=True``) that hands ``quantize(x)`` to the projection."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = projection_input(args, kwargs)
        if x is None:
            return None
        return with_projection_input(args, kwargs, quantize(x))

    return hook


@contextmanager
def quantized(model: nn.Module | ModelAdapter, config: QuantConfig | str) -> Iterator[QuantRecord]:
    """Fake-quantize every projection (Linear or Conv1D) of ``model`` inside the block.

    Weights are quantized in place on their ``[out, in]`` view (``w_granularity``; each tied
    Parameter once) and forward pre-hooks quantize each projection's input (``a_granularity``,
    dynamic: scales from the tensor seen).  The LM head is left out unless
    ``config.include_head``.  On exit - also on an exception - the weights are copied back bit
    for bit and the hooks removed.  ``config`` may be a name such as ``"W8A8"``.
    """
    if isinstance(config, str):
        config = QuantConfig.from_name(config)
    record = QuantRecord(config=config)
    with WeightSnapshot() as edits:
        targets = select_targets(model, config.skip, config.include_head)
        record.skipped = targets.skipped
        if config.w_bits is not None:
            w_bits, w_gran = config.w_bits, config.w_granularity
            record.weights = transform_weights(
                targets.weights, lambda w: fake_quantize(w, w_bits, w_gran), edits
            )
        if config.a_bits is not None:
            bits, gran = config.a_bits, config.a_granularity
            hook = input_quantizer_hook(lambda x: fake_quantize(x, bits, gran))
            for name, mod in targets.inputs:
                edits.handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
                record.activations.append(name)
        yield record

"""Round-to-nearest symmetric fake quantization of weights and activations (SPEC section 5).

Fake quantization keeps tensors in floating point but snaps every value onto the integer grid
of a ``bits``-bit symmetric quantizer, so that perplexity measured afterwards shows what an
integer kernel would lose.  Formulas (absmax / round-to-nearest, "RTN"):

    qmax  = 2^(bits-1) - 1                      (symmetric *restricted* range: -qmax..qmax,
                                                 the code -2^(bits-1) is never used)
    scale = absmax(x over the group) / qmax
    x_q   = clamp(round(x / scale), -qmax, qmax) * scale

``round`` is ``torch.round`` (ties to even).  A group whose absmax is 0 gets scale 1, so an
all-zero row stays zero and nothing is NaN.  Arithmetic is float32 whatever the input dtype; the
result is cast back to the input dtype (for bf16/fp16 inputs the grid points are then themselves
rounded to that dtype).

Granularity (which values share one scale):
  * ``per_tensor``  - one scale for the whole tensor (for activations [B, T, C]: one per
    sequence, i.e. dynamic per-tensor quantization as if each window ran alone, so results do
    not depend on how many windows an evaluation batches together);
  * ``per_channel`` - one scale per slice along dim 0: for a Linear weight [out, in] that is one
    scale per output row (output channel), the usual weight granularity;
  * ``per_token``   - one scale per vector along the last dim: for an activation [B, T, C] one
    scale per token, the usual dynamic activation granularity.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

GRANULARITIES = ("per_tensor", "per_channel", "per_token")
WEIGHT_GRANULARITIES = ("per_tensor", "per_channel")
ACT_GRANULARITIES = ("per_tensor", "per_token")

#: Bit widths at or above this are treated as "not quantized" when parsing names (A16, W16).
FULL_PRECISION_BITS = 16


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 2:
        raise ValueError(f"bits must be an int >= 2 (symmetric restricted range), got {bits!r}")
    return bits


def qmax_for(bits: int) -> int:
    """Largest code of the symmetric restricted range: 2^(bits-1) - 1 (127 for 8 bits)."""
    return 2 ** (_check_bits(bits) - 1) - 1


def absmax_scale(x: torch.Tensor, bits: int, granularity: str = "per_tensor") -> torch.Tensor:
    """float32 scale absmax / qmax, shaped to broadcast against ``x``; 1 where absmax is 0."""
    qmax = qmax_for(bits)
    xf = x.detach().float().abs()
    if granularity == "per_tensor":
        amax = xf.amax() if xf.numel() else torch.zeros((), device=x.device)
        amax = amax.reshape([1] * x.dim())
    elif granularity == "per_channel":
        if x.dim() < 1:
            raise ValueError("per_channel quantization needs a tensor with at least 1 dim")
        amax = xf.amax(dim=tuple(range(1, x.dim())), keepdim=True) if x.dim() > 1 else xf
    elif granularity == "per_token":
        if x.dim() < 1:
            raise ValueError("per_token quantization needs a tensor with at least 1 dim")
        amax = xf.amax(dim=-1, keepdim=True)
    else:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
    scale = amax / qmax
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def fake_quantize(x: torch.Tensor, bits: int, granularity: str = "per_tensor") -> torch.Tensor:
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


_NAME_RE = re.compile(r"^w(\d+)a(\d+)(?:[_-](per[_-]?tensor|per[_-]?channel|per[_-]?token))?$")


@dataclass(frozen=True)
class QuantConfig:
    """What ``quantized`` does.  ``None`` bits = leave that side in full precision.

    ``skip`` holds qualified-module-name patterns (see :func:`name_matches`) of Linears left
    untouched (neither weights nor inputs quantized); the LM head by default.
    """

    w_bits: int | None
    a_bits: int | None
    w_granularity: str = "per_channel"
    a_granularity: str = "per_token"
    skip: tuple[str, ...] = ("lm_head",)

    def __post_init__(self) -> None:
        for b in (self.w_bits, self.a_bits):
            if b is not None:
                _check_bits(b)
        if self.w_granularity not in WEIGHT_GRANULARITIES:
            raise ValueError(
                f"w_granularity must be one of {WEIGHT_GRANULARITIES}, got {self.w_granularity!r}"
            )
        if self.a_granularity not in ACT_GRANULARITIES:
            raise ValueError(
                f"a_granularity must be one of {ACT_GRANULARITIES}, got {self.a_granularity!r}"
            )
        if isinstance(self.skip, str):  # a lone string is a common slip: make it one pattern
            object.__setattr__(self, "skip", (self.skip,))
        else:
            object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def name(self) -> str:
        """Canonical short name, e.g. ``W8A8`` or ``W4A16`` (granularity not included)."""
        w = self.w_bits if self.w_bits is not None else FULL_PRECISION_BITS
        a = self.a_bits if self.a_bits is not None else FULL_PRECISION_BITS
        return f"W{w}A{a}"

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> QuantConfig:
        """Parse ``W8A8``, ``W6A6``, ``W4A8``, ``W4A16``, ``W4A4`` (any ``W<b>A<b>``).

        Case-insensitive.  A bit width >= 16 means "not quantized" (A16: activations stay in
        16-bit).  An optional suffix ``_per_tensor`` sets both granularities to per-tensor
        (``_per_channel``/``_per_token`` = the defaults).  ``overrides`` are passed to the
        constructor (e.g. ``skip=()``).
        """
        m = _NAME_RE.match(name.strip().lower())
        if m is None:
            raise ValueError(
                f"cannot parse quantization name {name!r}; expected W<bits>A<bits> such as "
                "W8A8, W6A6, W4A8, W4A16, W4A4 (optionally with suffix _per_tensor)"
            )
        w, a, gran = int(m.group(1)), int(m.group(2)), m.group(3)
        kwargs: dict[str, Any] = {
            "w_bits": None if w >= FULL_PRECISION_BITS else w,
            "a_bits": None if a >= FULL_PRECISION_BITS else a,
        }
        if gran is not None and gran.replace("-", "").replace("_", "") == "pertensor":
            kwargs.update(w_granularity="per_tensor", a_granularity="per_tensor")
        kwargs.update(overrides)
        return cls(**kwargs)


def parse_quant_name(name: str, **overrides: Any) -> QuantConfig:
    """Alias of :meth:`QuantConfig.from_name`."""
    return QuantConfig.from_name(name, **overrides)


# ----------------------------------------------------------------------------- module helpers


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """True when qualified module ``name`` matches one of ``patterns``.

    A pattern matches when it equals the name, equals a dotted suffix of it (``lm_head`` matches
    ``model.lm_head``), or matches it as an ``fnmatch`` glob (``transformer.h.*.mlp.c_proj``).
    """
    for p in patterns:
        if name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p):
            return True
    return False


def select_linears(
    model: nn.Module, skip: Iterable[str] = ()
) -> tuple[list[tuple[str, nn.Linear]], list[str]]:
    """(kept [(name, Linear)], skipped names) over ``model.named_modules()`` in order."""
    skip = tuple(skip)
    kept: list[tuple[str, nn.Linear]] = []
    skipped: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            if name_matches(name, skip):
                skipped.append(name)
            else:
                kept.append((name, mod))
    return kept, skipped


def editable_weights(
    model: nn.Module, skip: Iterable[str] = ()
) -> tuple[list[tuple[str, nn.Linear]], list[str]]:
    """Linears whose weight may be edited in place, each shared (tied) Parameter listed once.

    A Parameter is editable only when no *skipped* Linear also uses it: a tied weight belongs to
    every module that holds it, so skipping one of them protects it.  (A tied embedding that is
    not a Linear does not protect it: un-skipping ``lm_head`` edits the tied ``wte`` too.)
    """
    kept, skipped = select_linears(model, skip)
    skipped_set = set(skipped)
    protected = {
        id(m.weight)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n in skipped_set
    }
    seen: set[int] = set()
    out: list[tuple[str, nn.Linear]] = []
    for name, mod in kept:
        pid = id(mod.weight)
        if pid in protected or pid in seen:
            continue
        seen.add(pid)
        out.append((name, mod))
    return out, skipped


class WeightSnapshot:
    """Exact copies of Parameters (each stored once by identity) for bit-for-bit restoring."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def save(self, param: torch.Tensor) -> None:
        if id(param) not in self._saved:
            self._saved[id(param)] = (param, param.detach().clone())

    def __len__(self) -> int:
        return len(self._saved)

    @torch.no_grad()
    def restore(self) -> None:
        for param, copy in self._saved.values():
            param.copy_(copy)
        self._saved.clear()


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


def _make_act_hook(bits: int, granularity: str):
    def quantize(x: torch.Tensor) -> torch.Tensor:
        if granularity == "per_tensor" and x.dim() >= 3:
            return fake_quantize(x, bits, "per_channel")  # one scale per sequence (dim 0)
        return fake_quantize(x, bits, granularity)

    def hook(module: nn.Module, args: tuple, kwargs: dict):
        if args:
            return (quantize(args[0]), *args[1:]), kwargs
        if "input" in kwargs:
            kwargs = dict(kwargs)
            kwargs["input"] = quantize(kwargs["input"])
            return args, kwargs
        return None

    return hook


@contextmanager
def quantized(model: nn.Module, config: QuantConfig | str) -> Iterator[QuantRecord]:
    """Fake-quantize every ``nn.Linear`` of ``model`` (except ``config.skip``) inside the block.

    Weights are quantized in place (``w_granularity``; each tied Parameter once) and forward
    pre-hooks quantize each Linear's input (``a_granularity``, dynamic: scales computed from the
    tensor seen).  On exit - also on an exception - the original weights are copied back bit for
    bit and the hooks removed.  Yields a :class:`QuantRecord`.  ``config`` may be a name such as
    ``"W8A8"``.
    """
    if isinstance(config, str):
        config = QuantConfig.from_name(config)
    record = QuantRecord(config=config)
    snapshot = WeightSnapshot()
    handles: list[RemovableHandle] = []
    try:
        kept, skipped = select_linears(model, config.skip)
        record.skipped = skipped
        if config.w_bits is not None:
            editable, _ = editable_weights(model, config.skip)
            with torch.no_grad():
                for name, mod in editable:
                    snapshot.save(mod.weight)
                    mod.weight.copy_(fake_quantize(mod.weight, config.w_bits, config.w_granularity))
                    record.weights.append(name)
        if config.a_bits is not None:
            hook = _make_act_hook(config.a_bits, config.a_granularity)
            for name, mod in kept:
                handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
                record.activations.append(name)
        yield record
    finally:
        for h in handles:
            h.remove()
        snapshot.restore()

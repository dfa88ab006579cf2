"""The contract every attention variant fulfils, and the registry that finds them by name.

A variant receives per-head queries, keys and values ``[B, H, T, d]`` plus the attention block's
input ``x [B, T, C]`` (some variants compute a scaling factor or gate from it) and returns the
per-head output ``o [B, H, T, d]`` that goes into the output projection ``c_proj``.

Each variant provides two things:
- ``reference``: an exact PyTorch implementation (SDPA where exact, explicit scores otherwise);
- ``attention_weights``: the weights ``P [B, H, T, T]`` its formula applies to the real values,
  which is what the outlier probe measures (sigmoid and sink variants do not sum to one).
A variant that the fused Triton kernel can run also returns its kernel switches from
``kernel_arguments``; ``impl="triton"`` then routes through :func:`sysout.kernels.fused_attention`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

IMPLEMENTATIONS = ("auto", "reference", "triton")

_REGISTRY: dict[str, type[AttentionVariant]] = {}


def register_variant(cls: type[AttentionVariant]) -> type[AttentionVariant]:
    """Class decorator: make a variant constructible by its ``name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    if cls.name in _REGISTRY:
        raise ValueError(f"attention variant {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def variant_names() -> list[str]:
    return sorted(_REGISTRY)


def get_variant_class(name: str) -> type[AttentionVariant]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown attention variant {name!r}; valid variants: {', '.join(variant_names())}"
        ) from None


def causal_mask(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """Boolean [t_q, t_k] mask, True where query i may see key j (j <= i, aligned at the end)."""
    offset = t_k - t_q
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=offset)


def upcast(t: Tensor) -> Tensor:
    """float32 for half types; float64 stays float64 (tests compare in double precision)."""
    return t if t.dtype == torch.float64 else t.float()


def causal_scores(q: Tensor, k: Tensor) -> Tensor:
    """Scaled scores s = q k^T / sqrt(d) in at least float32, masked entries at -inf."""
    s = torch.matmul(upcast(q), upcast(k).transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
    return s.masked_fill(~mask, float("-inf"))


class AttentionVariant(nn.Module):
    """Base class: subclasses set ``name`` and implement ``reference`` and ``attention_weights``."""

    name: ClassVar[str] = ""
    #: True when :meth:`kernel_arguments` describes the variant exactly to the fused kernel.
    fused: ClassVar[bool] = True

    def __init__(self, n_head: int, n_embd: int, impl: str = "auto") -> None:
        super().__init__()
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"attention.impl={impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.n_embd = n_embd
        self.head_dim = n_embd // n_head
        self.impl = impl

    # --- what subclasses provide -------------------------------------------------------------
    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        """P [B, H, T, T] in at least float32: the weight of value j in the output of query i."""
        raise NotImplementedError

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        """Keyword arguments of :func:`sysout.kernels.fused_attention` for this variant."""
        return {}

    def finish_output(self, o: Tensor, x: Tensor) -> Tensor:
        """A cheap term the kernel leaves to PyTorch (default: none)."""
        return o

    # --- dispatch ----------------------------------------------------------------------------
    def resolved_impl(self, q: Tensor) -> str:
        if self.impl != "auto":
            return self.impl
        # sysout.kernels imports triton only when a kernel runs: this works without triton.
        from sysout.kernels import SUPPORTED_HEAD_DIMS, triton_available

        fusable = q.is_cuda and self.fused and self.head_dim in SUPPORTED_HEAD_DIMS
        return "triton" if fusable and triton_available() else "reference"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        if self.resolved_impl(q) == "reference":
            return self.reference(q, k, v, x)
        return self.fused_forward(q, k, v, x)

    def fused_forward(
        self, q: Tensor, k: Tensor, v: Tensor, x: Tensor, return_key_mass: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run through the Triton kernel; optionally also return per-key mass [B, H, T]."""
        from sysout.kernels import fused_attention, kernel_supported, triton_available

        if not self.fused:
            raise ValueError(f"attention variant {self.name!r} has no fused kernel path")
        if not triton_available():
            raise RuntimeError(
                "attention.impl=triton needs the `triton` package, which is not installed here "
                "(it ships for Linux only); use attention.impl=auto or attention.impl=reference"
            )
        if not kernel_supported(q):
            raise RuntimeError(
                "attention.impl=triton needs a CUDA tensor (or TRITON_INTERPRET=1 on CPU); "
                "use attention.impl=reference or auto on this machine"
            )
        out = fused_attention(q, k, v, return_key_mass=return_key_mass, **self.kernel_arguments(x))
        if return_key_mass:
            o, mass = out
            return self.finish_output(o, x), mass
        return self.finish_output(out, x)

    def key_mass(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """Attention mass per key [B, H, T] = sum over queries of P; linear memory when fused."""
        if self.fused and self.resolved_impl(q) == "triton":
            return self.fused_forward(q, k, v, x, return_key_mass=True)[1]
        return self.attention_weights(q, k, x).sum(dim=-2)

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, head_dim={self.head_dim}, impl={self.impl}"

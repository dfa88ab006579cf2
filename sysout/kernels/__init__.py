"""Triton kernels: the fused causal attention family behind every sysout attention variant.

Importing this package does not import triton (a Linux-only dependency): only calling a kernel
does, so ``impl=auto`` works on machines without it and falls back to the PyTorch reference.
"""

from __future__ import annotations

from typing import Any

from ._env import SUPPORTED_HEAD_DIMS, interpreting, kernel_supported, triton_available

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "fused_attention",
    "interpreting",
    "kernel_supported",
    "triton_available",
]


def fused_attention(*args: Any, **kwargs: Any) -> Any:
    """Causal fused attention; see :func:`sysout.kernels.flash_attention.fused_attention`."""
    from ._env import require_triton

    require_triton()
    from .flash_attention import fused_attention as _fused

    return _fused(*args, **kwargs)

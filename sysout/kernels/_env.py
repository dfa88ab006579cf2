"""What can be known about the kernels without importing triton.

triton is a Linux-only dependency: everything here must work where it is not installed, so that
``attention.impl=auto`` can choose the PyTorch reference instead of failing at import time.
"""

from __future__ import annotations

import functools
import os

import torch

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_available() -> bool:
    """True when ``import triton`` works in this process (checked once)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def kernel_supported(q: torch.Tensor) -> bool:
    """True when the fused kernels can run on tensors on q's device: triton is installed and q is
    a CUDA tensor, or a CPU tensor with ``TRITON_INTERPRET=1`` (which must be set before triton
    is first imported in the process). Shapes and dtypes are checked by ``fused_attention``
    itself (head dims ``SUPPORTED_HEAD_DIMS``; fp16, bf16, fp32)."""
    on_device = q.is_cuda or (q.device.type == "cpu" and interpreting())
    return on_device and triton_available()


def require_triton() -> None:
    """Raise a clear error where a kernel is asked for and triton is missing."""
    if not triton_available():
        raise RuntimeError(
            "the fused attention kernels need the `triton` package, which is not installed "
            "(it ships for Linux only); use attention.impl=reference or attention.impl=auto"
        )

"""Triton kernels: the fused causal attention family behind every sysout attention variant."""

from .flash_attention import SUPPORTED_HEAD_DIMS, fused_attention, kernel_supported

__all__ = ["SUPPORTED_HEAD_DIMS", "fused_attention", "kernel_supported"]

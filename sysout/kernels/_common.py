"""Constants and autotune configurations shared by the attention kernels.

The switch values below are ``tl.constexpr`` so that the kernels can compare against them at
compile time: every combination of switches is its own specialisation, and the code for the
switches that are off is not emitted at all.
"""

from __future__ import annotations

import inspect

import triton
import triton.language as tl

from ._env import interpreting

# How the weight of query i on key j is formed.
MODE_SOFTMAX = tl.constexpr(0)  # online softmax (optionally with a sink / an extra slot)
MODE_SIGMOID = tl.constexpr(1)  # p = sigmoid(s - log T): no max, no sum, no LSE
MODE_CLIP = tl.constexpr(2)  # p = clamp(a * exp(s - LSE) + g, 0, 1) from a stored LSE

# The extra key/value slot (k', v').
EXTRA_NONE = tl.constexpr(0)
EXTRA_KV = tl.constexpr(1)  # one more column of the softmax, weight applied to v'
EXTRA_CONTEXT = tl.constexpr(2)  # softmax over real keys, plus sigmoid(e - LSE) v'

# Output scale Y = S * O.
SCALE_NONE = tl.constexpr(0)
SCALE_HEAD = tl.constexpr(1)  # S is [B, H, T]: one factor per token and head
SCALE_CHANNEL = tl.constexpr(2)  # S is [B, H, T, d]: one factor per channel

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = 0.6931471805599453


# The interpreter cannot benchmark, so it gets exactly one config per kernel. Those blocks are
# small and deliberately unequal (BLOCK_M != BLOCK_N) so that CPU tests exercise the multi-block
# loops and the diagonal sub-block logic with short sequences.


def _cfg(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


def fwd_configs() -> list[triton.Config]:
    """Forward / clip second pass: BLOCK_M query rows per program, BLOCK_N keys per step.

    BLOCK_M must be a multiple of BLOCK_N (the diagonal block is walked in BLOCK_N steps).
    """
    if interpreting():
        return [_cfg(32, 16, 4, 1)]
    return [
        _cfg(128, 64, 4, 3),
        _cfg(128, 64, 8, 3),
        _cfg(128, 64, 4, 4),
        _cfg(128, 128, 8, 3),
        _cfg(128, 128, 8, 2),
        _cfg(128, 32, 4, 4),
        _cfg(64, 64, 4, 3),
        _cfg(64, 32, 4, 4),
    ]


def bwd_kv_configs() -> list[triton.Config]:
    """dK/dV (and key mass): BLOCK_N keys per program, BLOCK_M queries per step.

    BLOCK_N must be a multiple of BLOCK_M.
    """
    if interpreting():
        return [_cfg(16, 32, 4, 1)]
    return [
        _cfg(32, 128, 4, 3),
        _cfg(32, 128, 4, 4),
        _cfg(32, 128, 8, 3),
        _cfg(64, 128, 8, 3),
        _cfg(64, 128, 4, 2),
        _cfg(32, 64, 4, 3),
        _cfg(64, 64, 4, 3),
    ]


def bwd_q_configs() -> list[triton.Config]:
    """dQ (and the clip Delta pass): BLOCK_M queries per program, BLOCK_N keys per step.

    BLOCK_M must be a multiple of BLOCK_N.
    """
    if interpreting():
        return [_cfg(32, 16, 4, 1)]
    return [
        _cfg(128, 32, 4, 3),
        _cfg(128, 32, 4, 4),
        _cfg(128, 32, 8, 3),
        _cfg(128, 64, 8, 3),
        _cfg(128, 64, 4, 2),
        _cfg(64, 64, 4, 3),
        _cfg(64, 32, 4, 3),
    ]


PRE_BLOCK_M = 32  # rows per program of the row-wise preprocess (memory bound; keeps registers low)


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Skip configs that cannot win, to keep the first (autotuning) call short.

    fp32 inputs run their dots on CUDA cores (``input_precision="ieee"``): large tiles only spill.
    Head dim 128 doubles the accumulators: large tiles need 8 warps to stay in registers.
    """
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 64))
    q = named_args.get("Q")
    fp32 = q is not None and "float32" in str(q.dtype)

    def keep(c: triton.Config) -> bool:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if fp32:
            return max(bm, bn) <= 64
        if head_dim >= 128:
            return c.num_warps == 8 or max(bm, bn) <= 64
        return True

    return [c for c in configs if keep(c)] or configs


def autotune(configs: list[triton.Config], key: list[str]):
    """``triton.autotune`` with the pruning above, caching its timings on disk where this Triton
    can, so that a new training process does not re-benchmark every config."""
    kwargs = {}
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs["cache_results"] = True
    return triton.autotune(
        configs=configs, key=key, prune_configs_by={"early_config_prune": _prune}, **kwargs
    )

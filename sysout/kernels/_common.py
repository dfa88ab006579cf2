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
from ._modes import MODE_CLIP, MODE_RELU

# How the weight of query i on key j is formed (MODE): see _modes.py, the one place per mode.

# The extra key/value slot (k', v').
EXTRA_NONE = tl.constexpr(0)
EXTRA_KV = tl.constexpr(1)  # one more column of the softmax, weight applied to v'
EXTRA_CONTEXT = tl.constexpr(2)  # softmax over real keys, plus sigmoid(e - LSE) v'

# Which mask a loop of the backward needs.
MASK_NONE = tl.constexpr(0)  # whole blocks strictly inside the causal triangle
MASK_CAUSAL = tl.constexpr(1)  # the diagonal block: causal mask, rows stop at T
MASK_ROWS = tl.constexpr(2)  # the last partial block: rows stop at T

# Output scale Y = S * O.
SCALE_NONE = tl.constexpr(0)
SCALE_HEAD = tl.constexpr(1)  # S is [B, H, T]: one factor per token and head
SCALE_CHANNEL = tl.constexpr(2)  # S is [B, H, T, d]: one factor per channel

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = 0.6931471805599453


# The interpreter's one config per kernel (see `_configs`) has small and deliberately unequal
# blocks (BLOCK_M != BLOCK_N) so that CPU tests exercise the multi-block loops and the diagonal
# sub-block logic with short sequences.


# Every GPU config below compiles for sm_90 in bf16 without spilling registers, at the head dims
# it is kept for and in every MODE it is not skipped for: `python bench/kernel_compile.py`
# checks (benchmarks/results/kernel_compile-sm90.json). `dims` are the head dims a config is
# autotuned at (smaller ones use the d = 64 list); `skip` the MODEs where it spills.
_D64 = (16, 32, 64)
_ALL = (16, 32, 64, 128)


def _cfg(
    bm: int, bn: int, warps: int, stages: int, dims: tuple = _ALL, skip: tuple = ()
) -> triton.Config:
    c = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)
    c.sysout_dims, c.sysout_skip = dims, skip
    return c


def _configs(interpreter: triton.Config, gpu: list[triton.Config]) -> list[triton.Config]:
    # The interpreter cannot benchmark: it gets exactly one config per kernel.
    return [interpreter] if interpreting() else gpu


def fwd_configs() -> list[triton.Config]:
    """Forward / clip second pass: BLOCK_M query rows per program, BLOCK_N keys per step.

    BLOCK_M must be a multiple of BLOCK_N (the diagonal block is walked in BLOCK_N steps).
    """
    return _configs(
        _cfg(32, 16, 4, 1),
        [
            _cfg(128, 64, 4, 3, _D64),
            _cfg(128, 64, 8, 3),
            _cfg(128, 128, 8, 3, _D64),
            _cfg(128, 128, 8, 2, _D64),
            _cfg(128, 32, 4, 4, _D64),
            _cfg(64, 64, 4, 3),
            _cfg(64, 32, 4, 4),
        ],
    )


def bwd_configs() -> list[triton.Config]:
    """Backward (dK, dV, atomic dQ): BLOCK_N keys per program, BLOCK_M queries per step.

    BLOCK_N must be a multiple of BLOCK_M. dK and dV stay in registers ([BLOCK_N, d] fp32 each)
    beside two [BLOCK_N, BLOCK_M] fp32 tiles and a dQ tile. BLOCK_M >= 64 keeps the dQ matmul
    on wgmma (32 falls back to mma.sync); at d = 128 only thinner tiles fit.
    """
    clip = (MODE_CLIP.value,)
    clip_relu = (MODE_CLIP.value, MODE_RELU.value)  # (relu: 8 bytes of spill at d = 128)
    return _configs(
        _cfg(16, 32, 4, 1),
        [
            _cfg(64, 128, 8, 3, _D64, skip=clip),
            _cfg(32, 128, 8, 3, _D64),
            _cfg(64, 64, 4, 3, _D64),
            _cfg(32, 64, 4, 3, _D64),
            _cfg(64, 64, 8, 3, (128,), skip=clip_relu),
            _cfg(32, 128, 8, 3, (128,), skip=clip),
            _cfg(32, 64, 8, 3, (128,)),
            _cfg(16, 64, 4, 3, (128,)),
        ],
    )


def mass_configs() -> list[triton.Config]:
    """Key mass: BLOCK_N keys per program, BLOCK_M queries per step (one matmul per tile)."""
    return _configs(
        _cfg(16, 32, 4, 1), [_cfg(64, 128, 8, 3), _cfg(32, 128, 4, 3), _cfg(64, 64, 4, 3)]
    )


def delta_configs() -> list[triton.Config]:
    """Clipped-softmax Delta: BLOCK_M queries per program, BLOCK_N keys per step (two matmuls).

    BLOCK_M must be a multiple of BLOCK_N.
    """
    return _configs(
        _cfg(32, 16, 4, 1), [_cfg(128, 64, 8, 3), _cfg(128, 32, 4, 3), _cfg(64, 64, 4, 3)]
    )


PRE_BLOCK_M = 32  # rows per program of the row-wise preprocess (memory bound; keeps registers low)


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The configs kept for this head dim and MODE (see ``_cfg``).

    fp32 inputs run their dots on CUDA cores (``input_precision="ieee"``): large tiles only
    spill, so they keep tiles of at most 64.
    """
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 64))
    mode = kwargs.get("MODE", named_args.get("MODE", 0))
    mode = getattr(mode, "value", mode)
    q = named_args.get("Q")
    fp32 = q is not None and "float32" in str(q.dtype)

    def keep(c: triton.Config) -> bool:
        dims = getattr(c, "sysout_dims", _ALL)
        if head_dim not in dims and not (head_dim < 64 and 64 in dims):
            return False
        if mode in getattr(c, "sysout_skip", ()):
            return False
        return not fp32 or max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= 64

    return [c for c in configs if keep(c)] or configs


def autotune(configs: list[triton.Config], key: list[str], restore_value: list[str] | None = None):
    """``triton.autotune`` with the pruning above, caching its timings on disk where this Triton
    can, so that a new training process does not re-benchmark every config. ``restore_value``
    names outputs the kernel accumulates into (benchmark runs must not add up)."""
    kwargs = {"restore_value": restore_value} if restore_value else {}
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs["cache_results"] = True
    return triton.autotune(
        configs=configs, key=key, prune_configs_by={"early_config_prune": _prune}, **kwargs
    )


# --------------------------------------------------------------------------------------------
# Helpers shared by the kernels. Triton inlines them (no cost on the GPU). Tuples group runtime
# values only: a tuple built in a kernel turns its constexprs into tensors (a switch would become
# a runtime branch), so switches are passed one by one.
# --------------------------------------------------------------------------------------------
@triton.jit
def tile_offsets(start, stride, offs_r, offs_c):
    """Offsets of a [rows, cols] tile whose first row is `start`: the block start in 64 bits
    (T x stride can pass 2^31: a token-major [B, T, 3C] projection at T ~ 930K, C = 768), the
    offsets inside the tile in 32 bits (BLOCK x stride stays small)."""
    return tl.cast(start, tl.int64) * stride + (offs_r[:, None] * stride + offs_c[None, :])


@triton.jit
def tile_offsets_t(start, stride, offs_r, offs_c):
    """The same tile read transposed: [cols, rows] (K^T straight from memory)."""
    return tl.cast(start, tl.int64) * stride + (offs_c[:, None] + offs_r[None, :] * stride)


@triton.jit
def program_block(num_blocks, BH, HEAVY_FIRST: tl.constexpr):
    """(block, batch*head) of this program in a 1-D grid of num_blocks * BH programs.

    One dimension holds any B*H (the second grid dimension stops at 65535). Consecutive
    programs take the same block of every head; HEAVY_FIRST walks the blocks from the last
    (the forward's longest causal rows) so that the short ones fill the tail of the launch.
    """
    pid = tl.program_id(0)
    block = pid // BH
    if HEAVY_FIRST:
        block = num_blocks - 1 - block
    return block, pid % BH


@triton.jit
def block_rows(block, off_hz, H, T, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The rows [lo, lo + BLOCK) of block `block` of (batch, head) off_hz.

    Returns (off_b, off_h, row0, lo, offs_b, offs, offs_d, ok): the batch and head (64-bit),
    where this (b, h) starts in a [B*H, T] array (64-bit), the first row, arange(BLOCK), the rows
    (lo + arange(BLOCK)), arange(HEAD_DIM) and which rows are real (< T).
    """
    # (The order of the steps is the kernels' former inline order: same IR, same schedule.)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    row0 = off_hz.to(tl.int64) * T
    lo = block * BLOCK
    offs_b = tl.arange(0, BLOCK)
    offs = lo + offs_b
    offs_d = tl.arange(0, HEAD_DIM)
    return off_b, off_h, row0, lo, offs_b, offs, offs_d, offs < T


@triton.jit
def program_rows(B, H, T, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, HEAVY_FIRST: tl.constexpr):
    """``block_rows`` of this program's block (see ``program_block``)."""
    block, off_hz = program_block(tl.cdiv(T, BLOCK), B * H, HEAVY_FIRST)
    return block_rows(block, off_hz, H, T, BLOCK, HEAD_DIM)


@triton.jit
def head_tile(off_b, off_h, strides, lo, offs_r, offs_d):
    """Offsets of the [rows, d] tile at row lo of (batch off_b, head off_h) in a [B, H, T, d]
    tensor of strides (stride_b, stride_h, stride_t)."""
    stride_b, stride_h, stride_t = strides
    return off_b * stride_b + off_h * stride_h + tile_offsets(lo, stride_t, offs_r, offs_d)


@triton.jit
def load_rows(X, off_b, off_h, strides, lo, offs_r, offs_d, ok):
    """The ``head_tile`` of X; rows where ``ok`` is false (past T) read as 0."""
    # (Offsets first, in their own statement: Triton emits keyword arguments before positional
    # ones, and this keeps the kernels' former op order.)
    offs = head_tile(off_b, off_h, strides, lo, offs_r, offs_d)
    return tl.load(X + offs, mask=ok[:, None], other=0.0)


@triton.jit
def load_tile(X_head, lo, stride_t, offs_r, offs_d, ok):
    """The [rows, d] tile at row lo of one (batch, head) slice X_head; rows where ``ok`` is false
    read as 0. (``load_rows`` adds the (b, h) offset to the tile's; the forward and the output
    scale take a (b, h) base pointer first: each keeps its former address arithmetic.)"""
    offs = tile_offsets(lo, stride_t, offs_r, offs_d)
    return tl.load(X_head + offs, mask=ok[:, None], other=0.0)


@triton.jit
def store_rows(X, value, off_b, off_h, strides, lo, offs_r, offs_d, ok):
    """Store value (cast to X's type) in the ``head_tile`` of X, rows where ``ok`` only."""
    offs = head_tile(off_b, off_h, strides, lo, offs_r, offs_d)
    tl.store(X + offs, value.to(X.dtype.element_ty), mask=ok[:, None])


@triton.jit
def load_scale(Scale, off_b, off_h, strides, lo, offs_r, offs_d, ok, SCALE: tl.constexpr):
    """The output scale of these rows in fp32, broadcastable to their [rows, d] tile: one factor
    per row (SCALE_HEAD, Scale [B, H, T]) or per channel (SCALE_CHANNEL, [B, H, T, d])."""
    stride_b, stride_h, stride_t = strides
    S_head = Scale + off_b * stride_b + off_h * stride_h
    if SCALE == SCALE_HEAD:
        S_rows = S_head + lo.to(tl.int64) * stride_t
        s = tl.load(S_rows + offs_r * stride_t, mask=ok, other=0.0).to(tl.float32)[:, None]
    else:
        s = load_tile(S_head, lo, stride_t, offs_r, offs_d, ok).to(tl.float32)
    return s


@triton.jit
def load_if(ptrs, mask, MASKED: tl.constexpr):
    """A tile that is masked (masked-off elements read as 0) only when MASKED."""
    return tl.load(ptrs, mask=mask, other=0.0) if MASKED else tl.load(ptrs)

"""The two extra passes some variants take, beside the forward and the backward.

* ``attn_key_mass_kernel``: the per-key sum over queries of the weights applied to v. It needs
  the final LSE of every query, so it runs after the forward with the backward's loop structure
  (one program per key block walking the queries that see it): one matmul per tile, linear
  memory, nothing T x T stored.
* ``attn_clip_delta_kernel``: for the clipped softmax, Delta_i = sum_j P_ij dP_ij with dP taken
  through the clamp is no longer rowsum(dO * O) (O = clamp(...) V is not P V), so a row-wise
  pass over the keys computes it before the backward: two matmuls per tile.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common, _modes
from ._common import autotune, delta_configs, mass_configs
from ._modes import MODE_CLIP


@triton.jit
def _mass_inner(
    mass,
    keys,
    qs,
    LSE_row,
    start,
    end,
    T,
    coefs,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
    MODE: tl.constexpr,
    FAST_SIGMOID: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Add to mass the weights of queries [start, end) on this program's keys = (k, offs_n). qs = (Q
    of this (b, h), stride_qt); coefs = (qk_scale, log2_tk, clip_a, clip_g)."""
    k, offs_n = keys
    Q_head, stride_qt = qs
    qk_scale, log2_tk, clip_a, clip_g = coefs
    offs_mb = tl.arange(0, BLOCK_M)
    qT_ptrs = Q_head + _common.tile_offsets_t(start, stride_qt, offs_mb, tl.arange(0, k.shape[1]))
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + offs_mb
        row_ok = offs_m < T
        qT = tl.load(qT_ptrs, mask=row_ok[None, :], other=0.0)
        qkT = tl.dot(k, qT, input_precision=DOT_PREC)
        row = _modes.row_stat(LSE_row, offs_m, row_ok, MODE)[None, :]
        pT = _modes.probs(qkT, row, qk_scale, log2_tk, MODE, FAST_SIGMOID)
        wT = _modes.weights(pT, clip_a, clip_g, MODE)
        valid = row_ok[None, :]  # padded queries have q = 0, not weight 0
        if CAUSAL:
            valid = valid & (offs_m[None, :] >= offs_n[:, None])
        mass += tl.sum(tl.where(valid, wT, 0.0), 1)
        qT_ptrs += BLOCK_M * stride_qt
    return mass


@autotune(mass_configs(), ["T", "HEAD_DIM", "MODE", "FAST_SIGMOID"])
@triton.jit
def attn_key_mass_kernel(
    Q,
    K,
    LSE,
    Mass,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    B,
    H,
    T,
    qk_scale,
    log2_tk,
    clip_a,
    clip_g,
    HEAD_DIM: tl.constexpr,
    MODE: tl.constexpr,
    FAST_SIGMOID: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Mass ([B*H, T], fp32) of BLOCK_N keys of one (batch, head): sum over queries of W."""
    tl.static_assert(BLOCK_N % BLOCK_M == 0)
    cols = _common.program_rows(B, H, T, BLOCK_N, HEAD_DIM, False)
    off_b, off_h, row0, lo, offs_nb, offs_n, offs_d, col_ok = cols
    k_strides = (stride_kb, stride_kh, stride_kt)
    k = _common.load_rows(K, off_b, off_h, k_strides, lo, offs_nb, offs_d, col_ok)
    qs = (Q + off_b * stride_qb + off_h * stride_qh, stride_qt)
    coefs = (qk_scale, log2_tk, clip_a, clip_g)
    keys = (k, offs_n)
    mass = tl.zeros([BLOCK_N], dtype=tl.float32)
    # The diagonal block (causal mask), then every query below it.
    hi = tl.minimum(lo + BLOCK_N, T)
    mass = _mass_inner(
        mass, keys, qs, LSE + row0, lo, hi, T, coefs, BLOCK_M, True, MODE, FAST_SIGMOID, DOT_PREC
    )
    mass = _mass_inner(
        mass, keys, qs, LSE + row0, hi, T, T, coefs, BLOCK_M, False, MODE, FAST_SIGMOID, DOT_PREC
    )
    tl.store(Mass + row0 + offs_n, mass, mask=col_ok)


@triton.jit
def _delta_inner(
    dsum,
    q,
    do,
    lse,
    kv,
    offs_m,
    start,
    end,
    T,
    coefs,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Add to dsum the terms of keys [start, end). kv = (K, V of this (b, h), stride_kt,
    stride_vt); coefs = (qk_scale, clip_a, clip_g)."""
    K_head, V_head, stride_kt, stride_vt = kv
    qk_scale, clip_a, clip_g = coefs
    offs_nb = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, q.shape[1])
    kT_ptrs = K_head + _common.tile_offsets_t(start, stride_kt, offs_nb, offs_d)
    vT_ptrs = V_head + _common.tile_offsets_t(start, stride_vt, offs_nb, offs_d)
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_nb
        kT = _common.load_if(kT_ptrs, cols[None, :] < T, MASKED)
        vT = _common.load_if(vT_ptrs, cols[None, :] < T, MASKED)
        p = tl.math.exp2(tl.dot(q, kT, input_precision=DOT_PREC) * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(cols[None, :] <= offs_m[:, None], p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PREC)
        dsum += tl.sum(p * _modes.probs_grad(dp, p, clip_a, clip_g, MODE_CLIP), 1)
        kT_ptrs += BLOCK_N * stride_kt
        vT_ptrs += BLOCK_N * stride_vt
    return dsum


@autotune(delta_configs(), ["T", "HEAD_DIM"])
@triton.jit
def attn_clip_delta_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    Delta,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_dob,
    stride_doh,
    stride_dot,
    B,
    H,
    T,
    qk_scale,
    clip_a,
    clip_g,
    HEAD_DIM: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Delta_i = sum_j P_ij dP_ij (dP through the clamp) for BLOCK_M queries."""
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    rows = _common.program_rows(B, H, T, BLOCK_M, HEAD_DIM, True)
    off_b, off_h, row0, lo, offs_mb, offs_m, offs_d, row_ok = rows
    q_strides, do_strides = (stride_qb, stride_qh, stride_qt), (stride_dob, stride_doh, stride_dot)
    q = _common.load_rows(Q, off_b, off_h, q_strides, lo, offs_mb, offs_d, row_ok)
    do = _common.load_rows(DO, off_b, off_h, do_strides, lo, offs_mb, offs_d, row_ok)
    lse = tl.load(LSE + row0 + offs_m, mask=row_ok, other=0.0)
    K_head = K + off_b * stride_kb + off_h * stride_kh
    kv = (K_head, V + off_b * stride_vb + off_h * stride_vh, stride_kt, stride_vt)
    coefs = (qk_scale, clip_a, clip_g)
    dsum = tl.zeros([BLOCK_M], dtype=tl.float32)
    # Keys left of the diagonal block (no mask), then the diagonal block.
    dsum = _delta_inner(dsum, q, do, lse, kv, offs_m, 0, lo, T, coefs, BLOCK_N, False, DOT_PREC)
    hi = tl.minimum(lo + BLOCK_M, T)
    dsum = _delta_inner(dsum, q, do, lse, kv, offs_m, lo, hi, T, coefs, BLOCK_N, True, DOT_PREC)
    tl.store(Delta + row0 + offs_m, dsum, mask=row_ok)

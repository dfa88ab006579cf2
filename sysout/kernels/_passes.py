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

from ._common import (
    MODE_CLIP,
    MODE_SIGMOID,
    autotune,
    delta_configs,
    mass_configs,
    program_block,
    sigmoid_weights,
    tile_offsets,
    tile_offsets_t,
)


@triton.jit
def _mass_inner(
    mass,
    k,
    Q_base,
    LSE_row,
    stride_qt,
    offs_n,
    offs_d,
    lo,
    hi,
    T,
    qk_scale,
    log2_tk,
    clip_a,
    clip_g,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
    MODE: tl.constexpr,
    FAST_SIGMOID: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    offs_mb = tl.arange(0, BLOCK_M)
    qT_ptrs = Q_base + tile_offsets_t(lo, stride_qt, offs_mb, offs_d)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_mb
        row_ok = offs_m < T
        qT = tl.load(qT_ptrs, mask=row_ok[None, :], other=0.0)
        qkT = tl.dot(k, qT, input_precision=DOT_PREC)
        if MODE == MODE_SIGMOID:
            wT = sigmoid_weights(qkT, qk_scale, log2_tk, FAST_SIGMOID)
        else:
            lse = tl.load(LSE_row + offs_m, mask=row_ok, other=0.0)
            wT = tl.math.exp2(qkT * qk_scale - lse[None, :])
            if MODE == MODE_CLIP:
                wT = tl.minimum(tl.maximum(clip_a * wT + clip_g, 0.0), 1.0)
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
    start_n, off_hz = program_block(tl.cdiv(T, BLOCK_N), B * H, False)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    row0 = off_hz.to(tl.int64) * T
    lo = start_n * BLOCK_N
    offs_nb = tl.arange(0, BLOCK_N)
    offs_n = lo + offs_nb
    offs_d = tl.arange(0, HEAD_DIM)
    k_offs = off_b * stride_kb + off_h * stride_kh + tile_offsets(lo, stride_kt, offs_nb, offs_d)
    k = tl.load(K + k_offs, mask=(offs_n < T)[:, None], other=0.0)
    Q_base = Q + off_b * stride_qb + off_h * stride_qh
    mass = tl.zeros([BLOCK_N], dtype=tl.float32)
    hi = tl.minimum(lo + BLOCK_N, T)
    mass = _mass_inner(
        mass,
        k,
        Q_base,
        LSE + row0,
        stride_qt,
        offs_n,
        offs_d,
        lo,
        hi,
        T,
        qk_scale,
        log2_tk,
        clip_a,
        clip_g,
        BLOCK_M,
        True,
        MODE,
        FAST_SIGMOID,
        DOT_PREC,
    )
    mass = _mass_inner(
        mass,
        k,
        Q_base,
        LSE + row0,
        stride_qt,
        offs_n,
        offs_d,
        hi,
        T,
        T,
        qk_scale,
        log2_tk,
        clip_a,
        clip_g,
        BLOCK_M,
        False,
        MODE,
        FAST_SIGMOID,
        DOT_PREC,
    )
    tl.store(Mass + row0 + offs_n, mass, mask=offs_n < T)


@triton.jit
def _delta_inner(
    dsum,
    q,
    do,
    lse,
    K_base,
    V_base,
    stride_kt,
    stride_vt,
    offs_m,
    offs_d,
    lo,
    hi,
    T,
    qk_scale,
    clip_a,
    clip_g,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    offs_nb = tl.arange(0, BLOCK_N)
    kT_ptrs = K_base + tile_offsets_t(lo, stride_kt, offs_nb, offs_d)
    vT_ptrs = V_base + tile_offsets_t(lo, stride_vt, offs_nb, offs_d)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_nb
        if MASKED:
            kT = tl.load(kT_ptrs, mask=cols[None, :] < T, other=0.0)
            vT = tl.load(vT_ptrs, mask=cols[None, :] < T, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            vT = tl.load(vT_ptrs)
        p = tl.math.exp2(tl.dot(q, kT, input_precision=DOT_PREC) * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(cols[None, :] <= offs_m[:, None], p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PREC)
        x = clip_a * p + clip_g
        dsum += tl.sum(p * tl.where((x >= 0.0) & (x <= 1.0), dp * clip_a, 0.0), 1)
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
    start_m, off_hz = program_block(tl.cdiv(T, BLOCK_M), B * H, True)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    row0 = off_hz.to(tl.int64) * T
    lo = start_m * BLOCK_M
    offs_mb = tl.arange(0, BLOCK_M)
    offs_m = lo + offs_mb
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q_offs = off_b * stride_qb + off_h * stride_qh + tile_offsets(lo, stride_qt, offs_mb, offs_d)
    q = tl.load(Q + q_offs, mask=row_ok[:, None], other=0.0)
    do_offs = (
        off_b * stride_dob + off_h * stride_doh + tile_offsets(lo, stride_dot, offs_mb, offs_d)
    )
    do = tl.load(DO + do_offs, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + row0 + offs_m, mask=row_ok, other=0.0)
    K_base = K + off_b * stride_kb + off_h * stride_kh
    V_base = V + off_b * stride_vb + off_h * stride_vh
    dsum = tl.zeros([BLOCK_M], dtype=tl.float32)
    dsum = _delta_inner(
        dsum,
        q,
        do,
        lse,
        K_base,
        V_base,
        stride_kt,
        stride_vt,
        offs_m,
        offs_d,
        0,
        lo,
        T,
        qk_scale,
        clip_a,
        clip_g,
        BLOCK_N,
        False,
        DOT_PREC,
    )
    hi = tl.minimum(lo + BLOCK_M, T)
    dsum = _delta_inner(
        dsum,
        q,
        do,
        lse,
        K_base,
        V_base,
        stride_kt,
        stride_vt,
        offs_m,
        offs_d,
        lo,
        hi,
        T,
        qk_scale,
        clip_a,
        clip_g,
        BLOCK_N,
        True,
        DOT_PREC,
    )
    tl.store(Delta + row0 + offs_m, dsum, mask=row_ok)

"""Backward kernels, FlashAttention-2 structure: a row-wise preprocess, then one kernel.

Both recompute the weights P from the stored base-2 LSE instead of storing them:

* ``attn_bwd_preprocess_kernel`` (row-wise, one pass over the outputs): dO = S * dY for a scaled
  output, Delta = rowsum(dO * O), dS of the output scale, the per-query gradient of the extra
  slot's logit (de), per-block partial sums of dk' and dv', and the dQ accumulator's seed de k'.
* ``attn_bwd_kernel``: one program per BLOCK_N keys walks the queries that see them, five
  matmuls per tile (S^T = K Q^T, dV += W^T dO, dP^T = V dO^T, dK += dS^T Q, dQ_tile = dS K),
  keeps dK and dV in registers and adds each dQ tile atomically into an fp32 accumulator.

The clipped softmax's Delta and the key mass take their own passes (``_passes.py``).

Gradient wrt the natural-log score s_ij (dS below; the kernels call it ds), the per-mode parts
in ``_modes.probs_grad`` (normalised) and ``_modes.score_grad`` (pointwise):
  normalised:  dS = P * (dL/dP - Delta),  dL/dP = dP = dO . v_j (through the clamp for clip)
  pointwise:   dS = dP * f'(s)            (sigmoid: dP * P * (1 - P); no normalisation, no Delta)
and dQ = sm_scale * dS K, dK = sm_scale * dS^T Q, dV = W^T dO with W the weights applied to V.

The switches (e_i = sm_scale q_i.k' the extra slot's logit, p0_i its weight, dp0_i = dO_i . v'):
  sink z:        dz = -sum_{b,i} exp(z - LSE_i) Delta_i                      (host, from Delta)
  kv slot:       de_i = p0_i (dp0_i - Delta_i),  p0_i = exp(e_i - LSE_i)
  context slot:  o_i = (P V)_i + p0_i v' with p0_i = sigmoid(e_i - LSE_real_i). Through p0, e_i
                 gets g_i = dp0_i p0_i (1 - p0_i) and each real score -g_i P_ij (dLSE/ds = P),
                 so de_i = g_i and the softmax term keeps its form with
                 Delta'_i = rowsum(dO * P V)_i + g_i = rowsum(dO * O)_i - p0_i dp0_i + g_i.
  both slots:    dq_i += sm_scale de_i k',  dk' = sm_scale sum de_i q_i,  dv' = sum p0_i dO_i
  out scale:     dO = S dY,  dS = rowsum(dY * O) (headwise) or dY * O (per channel)
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common, _modes
from ._common import (
    EXTRA_KV,
    EXTRA_NONE,
    MASK_CAUSAL,
    MASK_NONE,
    MASK_ROWS,
    SCALE_HEAD,
    SCALE_NONE,
    autotune,
    bwd_configs,
)
from ._modes import MODE_SOFTMAX


@triton.jit
def attn_bwd_preprocess_kernel(
    DY,
    OSaved,
    Scale,
    DO,
    Delta,
    LSE,
    E,
    Q,
    EK,
    EV,
    DE,
    DQ,
    PartEK,
    PartEV,
    DScale,
    stride_yb,
    stride_yh,
    stride_yt,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_sb,
    stride_sh,
    stride_st,
    stride_db,
    stride_dh,
    stride_dt,
    stride_qb,
    stride_qh,
    stride_qt,
    B,
    H,
    T,
    HEAD_DIM: tl.constexpr,
    MODE: tl.constexpr,
    EXTRA: tl.constexpr,
    SCALE: tl.constexpr,
    SAVED_RAW: tl.constexpr,
    SCALE_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Row-wise quantities of the backward pass for BLOCK_M queries of one (batch, head).

    OSaved is the unscaled output O when SAVED_RAW, else the kernel output Y = S * O; both give
    Delta = rowsum(dO * O) = rowsum(dY * Y). The scale's gradient needs O itself (Y / S would
    divide by zero where S = 0), so SCALE_GRAD requires SAVED_RAW.
    """
    n_blocks = tl.cdiv(T, BLOCK_M)
    start_m, off_hz = _common.program_block(n_blocks, B * H, False)  # (both kept for PartEK/EV)
    rows = _common.block_rows(start_m, off_hz, H, T, BLOCK_M, HEAD_DIM)
    off_b, off_h, row0, lo, offs_mb, offs_m, offs_d, row_ok = rows
    mask2 = row_ok[:, None]
    y_strides, o_strides = (stride_yb, stride_yh, stride_yt), (stride_ob, stride_oh, stride_ot)
    dy = _common.load_rows(DY, off_b, off_h, y_strides, lo, offs_mb, offs_d, row_ok).to(tl.float32)
    x = _common.load_rows(OSaved, off_b, off_h, o_strides, lo, offs_mb, offs_d, row_ok)
    x = x.to(tl.float32)

    do = dy
    if SCALE != SCALE_NONE:
        s_strides = (stride_sb, stride_sh, stride_st)
        do = dy * _common.load_scale(
            Scale, off_b, off_h, s_strides, lo, offs_mb, offs_d, row_ok, SCALE
        )
        if SCALE_GRAD:
            if SCALE == SCALE_HEAD:
                tl.store(DScale + row0 + offs_m, tl.sum(dy * x, 1), mask=row_ok)
            else:
                ds_rows = DScale + (row0 + offs_m[:, None]) * HEAD_DIM
                tl.store(ds_rows + offs_d[None, :], dy * x, mask=mask2)
        do_strides = (stride_db, stride_dh, stride_dt)
        _common.store_rows(DO, do, off_b, off_h, do_strides, lo, offs_mb, offs_d, row_ok)

    if _modes.normalised(MODE):
        delta = tl.sum(do * x, 1) if SAVED_RAW else tl.sum(dy * x, 1)
        if EXTRA != EXTRA_NONE:
            ev = tl.load(EV + off_h * HEAD_DIM + offs_d).to(tl.float32)
            e2 = tl.load(E + row0 + offs_m, mask=row_ok, other=0.0)
            lse = tl.load(LSE + row0 + offs_m, mask=row_ok, other=0.0)
            dp0 = tl.sum(do * ev[None, :], 1)  # dL/dp0 = dO . v'
            if EXTRA == EXTRA_KV:
                # The slot is one more softmax column: de = p0 * (dp0 - Delta).
                p0 = tl.math.exp2(e2 - lse)
                de = p0 * (dp0 - delta)
            else:
                # Context slot: o = P V + p0 v', p0 = sigmoid(e - LSE_real). Through p0 the logit
                # gets g = dp0 p0 (1 - p0) and every real score gets -g P_ij, which folds into
                # the softmax term as Delta' = rowsum(dO * P V) + g = Delta - p0 dp0 + g.
                p0 = 1.0 / (1.0 + tl.math.exp2(lse - e2))
                de = dp0 * p0 * (1.0 - p0)
                delta = delta - p0 * dp0 + de
            tl.store(DE + row0 + offs_m, de, mask=row_ok)
            # k' and v' are shared by all queries: write this block's share of
            # dk' = sm_scale * sum_i de_i q_i and dv' = sum_i p0_i dO_i (summed on the host:
            # deterministic, unlike atomics). Padded rows have q = dO = 0.
            q_strides = (stride_qb, stride_qh, stride_qt)
            q = _common.load_rows(Q, off_b, off_h, q_strides, lo, offs_mb, offs_d, row_ok)
            q = q.to(tl.float32)
            part = (off_hz.to(tl.int64) * n_blocks + start_m) * HEAD_DIM + offs_d
            tl.store(PartEK + part, tl.sum(de[:, None] * q, 0))
            tl.store(PartEV + part, tl.sum(p0[:, None] * do, 0))
            # The logit e = sm_scale q.k' sends de k' back to q: seed the dQ accumulator with it
            # (the main kernel adds dS K atomically; the launcher scales the sum by sm_scale).
            ek = tl.load(EK + off_h * HEAD_DIM + offs_d).to(tl.float32)
            dq_offs = _common.tile_offsets(row0 + lo, HEAD_DIM, offs_mb, offs_d)
            tl.store(DQ + dq_offs, de[:, None] * ek[None, :], mask=mask2)
        if MODE == MODE_SOFTMAX:  # (W = P; the clipped softmax gets Delta from its own pass)
            tl.store(Delta + row0 + offs_m, delta, mask=row_ok)


@triton.jit
def _bwd_inner(
    dk,
    dv,
    keys,
    qs,
    rows,
    start,
    end,
    T,
    coefs,
    BLOCK_M: tl.constexpr,
    MASK: tl.constexpr,
    MODE: tl.constexpr,
    FAST_SIGMOID: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Walk queries [start, end) for one key block: five matmuls per tile. Scores are kept
    transposed ([keys, queries]) so that dV = W^T dO and dK = dS^T Q are plain dots.

    MASK: MASK_NONE (whole query blocks below the diagonal), MASK_CAUSAL (the diagonal block:
    causal mask, rows stop at T) or MASK_ROWS (the last, partial query block). keys = (k, v,
    offs_n) of this program; qs = (Q, DO, DQ of this (b, h), stride_qt, stride_dot); rows =
    (LSE, Delta of this (b, h)); coefs = (qk_scale, log2_tk, clip_a, clip_g).
    """
    Q_base, DO_base, DQ_base, stride_qt, stride_dot = qs
    LSE_row, Delta_row = rows
    qk_scale, log2_tk, clip_a, clip_g = coefs
    k, v, offs_n = keys
    HEAD_DIM: tl.constexpr = k.shape[1]
    offs_d = tl.arange(0, HEAD_DIM)
    offs_mb = tl.arange(0, BLOCK_M)
    qT_ptrs = Q_base + _common.tile_offsets_t(start, stride_qt, offs_mb, offs_d)
    do_ptrs = DO_base + _common.tile_offsets(start, stride_dot, offs_mb, offs_d)
    dq_ptrs = DQ_base + _common.tile_offsets(start, HEAD_DIM, offs_mb, offs_d)
    for start_m in range(start, end, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs_mb
        row_ok = offs_m < T
        # Padded queries (>= T) load q = dO = 0 and so add nothing to dK / dV; their dQ is
        # masked out of the atomic add.
        qT = _common.load_if(qT_ptrs, row_ok[None, :], MASK != MASK_NONE)
        do = _common.load_if(do_ptrs, row_ok[:, None], MASK != MASK_NONE)
        qkT = tl.dot(k, qT, input_precision=DOT_PREC)
        row = _modes.row_stat(LSE_row, offs_m, row_ok, MODE)[None, :]
        pT = _modes.probs(qkT, row, qk_scale, log2_tk, MODE, FAST_SIGMOID)
        if MASK == MASK_CAUSAL:
            valid = offs_m[None, :] >= offs_n[:, None]
            pT = tl.where(valid, pT, 0.0)
        wT = _modes.weights(pT, clip_a, clip_g, MODE)  # the weights applied to v
        if MASK == MASK_CAUSAL:
            wT = tl.where(valid, wT, 0.0)  # (a no-op unless W is not P: the clamp's + gamma)

        dv = tl.dot(wT.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        if _modes.normalised(MODE):
            dpT = _modes.probs_grad(dpT, pT, clip_a, clip_g, MODE)
            # (loaded after the clamp's mask, as before: other orders cost a few instructions)
            delta = tl.load(Delta_row + offs_m, mask=row_ok, other=0.0)
            dsT = pT * (dpT - delta[None, :])
        else:
            dsT = _modes.score_grad(dpT, pT, qkT, row, qk_scale, MODE)
        dsT = dsT.to(qT.dtype)
        dk = tl.dot(dsT, tl.trans(qT), dk, input_precision=DOT_PREC)
        # dQ rows are shared by every key block: accumulate them atomically (FlashAttention-2),
        # relaxed (no ordering needed between adds), unscaled (the launcher applies sm_scale).
        dq = tl.dot(tl.trans(dsT), k, input_precision=DOT_PREC)
        if MASK == MASK_NONE:
            tl.atomic_add(dq_ptrs, dq, sem="relaxed")
        else:
            tl.atomic_add(dq_ptrs, dq, mask=row_ok[:, None], sem="relaxed")
        qT_ptrs += BLOCK_M * stride_qt
        do_ptrs += BLOCK_M * stride_dot
        dq_ptrs += BLOCK_M * HEAD_DIM
    return dk, dv


@autotune(bwd_configs(), ["T", "HEAD_DIM", "MODE", "FAST_SIGMOID"], restore_value=["DQ"])
@triton.jit
def attn_bwd_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    Delta,
    DQ,
    DK,
    DV,
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
    stride_dkb,
    stride_dkh,
    stride_dkt,
    stride_dvb,
    stride_dvh,
    stride_dvt,
    B,
    H,
    T,
    qk_scale,
    sm_scale,
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
    """dK, dV for BLOCK_N keys of one (batch, head), and their share of dQ (added atomically
    into DQ: fp32 [B, H, T, d], contiguous, zeroed or seeded by the preprocess)."""
    tl.static_assert(BLOCK_N % BLOCK_M == 0)  # the diagonal block is walked in BLOCK_M steps
    # Key blocks from the first: the first sees every query, so the longest run first.
    cols = _common.program_rows(B, H, T, BLOCK_N, HEAD_DIM, False)
    off_b, off_h, row0, lo, offs_nb, offs_n, offs_d, col_ok = cols
    k_strides, v_strides = (stride_kb, stride_kh, stride_kt), (stride_vb, stride_vh, stride_vt)
    k = _common.load_rows(K, off_b, off_h, k_strides, lo, offs_nb, offs_d, col_ok)
    v = _common.load_rows(V, off_b, off_h, v_strides, lo, offs_nb, offs_d, col_ok)
    Q_base = Q + off_b * stride_qb + off_h * stride_qh
    DO_base = DO + off_b * stride_dob + off_h * stride_doh
    qs = (Q_base, DO_base, DQ + row0 * HEAD_DIM, stride_qt, stride_dot)
    keys = (k, v, offs_n)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # Queries of the diagonal block see part of these keys; below it, whole query blocks see
    # all of them; a last partial block needs its rows masked.
    hi_diag = tl.minimum(lo + BLOCK_N, T)
    hi_full = hi_diag + (T - hi_diag) // BLOCK_M * BLOCK_M
    rows = (LSE + row0, Delta + row0)
    coefs = (qk_scale, log2_tk, clip_a, clip_g)
    dk, dv = _bwd_inner(
        dk,
        dv,
        keys,
        qs,
        rows,
        lo,
        hi_diag,
        T,
        coefs,
        BLOCK_M,
        MASK_CAUSAL,
        MODE,
        FAST_SIGMOID,
        DOT_PREC,
    )
    dk, dv = _bwd_inner(
        dk,
        dv,
        keys,
        qs,
        rows,
        hi_diag,
        hi_full,
        T,
        coefs,
        BLOCK_M,
        MASK_NONE,
        MODE,
        FAST_SIGMOID,
        DOT_PREC,
    )
    dk, dv = _bwd_inner(
        dk,
        dv,
        keys,
        qs,
        rows,
        hi_full,
        T,
        T,
        coefs,
        BLOCK_M,
        MASK_ROWS,
        MODE,
        FAST_SIGMOID,
        DOT_PREC,
    )

    dk_strides = (stride_dkb, stride_dkh, stride_dkt)
    _common.store_rows(DK, dk * sm_scale, off_b, off_h, dk_strides, lo, offs_nb, offs_d, col_ok)
    _common.store_rows(
        DV, dv, off_b, off_h, (stride_dvb, stride_dvh, stride_dvt), lo, offs_nb, offs_d, col_ok
    )

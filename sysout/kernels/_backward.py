"""Backward kernels (FlashAttention-2 structure) and the key-mass pass.

Three kernels, all recomputing the weights P from the stored base-2 LSE instead of storing them:

* ``attn_bwd_preprocess_kernel`` (row-wise, one pass over the outputs): dO = S * dY for a scaled
  output, Delta = rowsum(dO * O), dS of the output scale, the per-query gradient of the extra
  slot's logit (de) and per-block partial sums of dk' and dv'.
* ``attn_bwd_kv_kernel``: one program per BLOCK_N keys walks the queries that see them and
  accumulates dK and dV. With ``MASS_ONLY`` it instead sums the weights over queries: the per-key
  attention mass, at the cost of one QK^T per tile and no T x T buffer.
* ``attn_bwd_q_kernel``: one program per BLOCK_M queries walks their keys and accumulates dQ.
  With ``DELTA_ONLY`` it computes Delta_i = sum_j P_ij dP_ij for the clipped softmax instead,
  where Delta is no longer rowsum(dO * O) because O = clamp(...) V is not P V.

Gradient wrt the natural-log score s_ij (dS below; the kernels call it ds):
  softmax-like:  dS = P * (dP - Delta),   dP = dO . v_j  (times the clip mask and slope for clip)
  sigmoid:       dS = dP * P * (1 - P)    (no normalisation, so no Delta)
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

from ._common import (
    EXTRA_KV,
    EXTRA_NONE,
    MODE_CLIP,
    MODE_SIGMOID,
    MODE_SOFTMAX,
    SCALE_HEAD,
    SCALE_NONE,
    autotune,
    bwd_kv_configs,
    bwd_q_configs,
)


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
    EV,
    DE,
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
    start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    row0 = off_hz.to(tl.int64) * T

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    mask2 = row_ok[:, None]

    dy = tl.load(
        DY + off_b * stride_yb + off_h * stride_yh + offs_m[:, None] * stride_yt + offs_d[None, :],
        mask=mask2,
        other=0.0,
    ).to(tl.float32)
    x = tl.load(
        OSaved
        + off_b * stride_ob
        + off_h * stride_oh
        + offs_m[:, None] * stride_ot
        + offs_d[None, :],
        mask=mask2,
        other=0.0,
    ).to(tl.float32)

    do = dy
    if SCALE != SCALE_NONE:
        S_base = Scale + off_b * stride_sb + off_h * stride_sh
        if SCALE == SCALE_HEAD:
            s = tl.load(S_base + offs_m * stride_st, mask=row_ok, other=0.0).to(tl.float32)
            do = dy * s[:, None]
            if SCALE_GRAD:
                tl.store(DScale + row0 + offs_m, tl.sum(dy * x, 1), mask=row_ok)
        else:
            s = tl.load(
                S_base + offs_m[:, None] * stride_st + offs_d[None, :], mask=mask2, other=0.0
            ).to(tl.float32)
            do = dy * s
            if SCALE_GRAD:
                tl.store(
                    DScale + (row0 + offs_m[:, None]) * HEAD_DIM + offs_d[None, :],
                    dy * x,
                    mask=mask2,
                )
        tl.store(
            DO
            + off_b * stride_db
            + off_h * stride_dh
            + offs_m[:, None] * stride_dt
            + offs_d[None, :],
            do.to(DO.dtype.element_ty),
            mask=mask2,
        )

    if MODE != MODE_SIGMOID:
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
            q = tl.load(
                Q
                + off_b * stride_qb
                + off_h * stride_qh
                + offs_m[:, None] * stride_qt
                + offs_d[None, :],
                mask=mask2,
                other=0.0,
            ).to(tl.float32)
            part = (off_hz.to(tl.int64) * tl.num_programs(0) + start_m) * HEAD_DIM + offs_d
            tl.store(PartEK + part, tl.sum(de[:, None] * q, 0))
            tl.store(PartEV + part, tl.sum(p0[:, None] * do, 0))
        if MODE == MODE_SOFTMAX:  # the clipped softmax gets its Delta from its own pass
            tl.store(Delta + row0 + offs_m, delta, mask=row_ok)


@triton.jit
def _bwd_kv_inner(
    dk,
    dv,
    mass,
    k,
    v,
    Q_base,
    DO_base,
    LSE_row,
    Delta_row,
    stride_qt,
    stride_dot,
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
    MASKED: tl.constexpr,
    MODE: tl.constexpr,
    MASS_ONLY: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Walk queries [lo, hi) for one key block; everything is kept transposed ([keys, queries])
    so that dV = W^T dO and dK = dS^T Q are plain dots."""
    offs_mb = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs_mb
        row_ok = offs_m < T
        # Padded queries (>= T) load q = dO = Delta = 0 and so contribute nothing to dK / dV;
        # only the key mass has to mask them explicitly.
        qT = tl.load(
            Q_base + offs_m[None, :] * stride_qt + offs_d[:, None], mask=row_ok[None, :], other=0.0
        )
        s2T = tl.dot(k, qT, input_precision=DOT_PREC) * qk_scale
        if MODE == MODE_SIGMOID:
            pT = 1.0 / (1.0 + tl.math.exp2(log2_tk - s2T))
        else:
            lse = tl.load(LSE_row + offs_m, mask=row_ok, other=0.0)
            pT = tl.math.exp2(s2T - lse[None, :])
        if MASKED:
            valid = (offs_m[None, :] >= offs_n[:, None]) & row_ok[None, :]
            pT = tl.where(valid, pT, 0.0)
        elif MASS_ONLY:
            valid = (offs_n[:, None] >= 0) & row_ok[None, :]
            pT = tl.where(valid, pT, 0.0)
        wT = pT  # the weights applied to v
        if MODE == MODE_CLIP:
            xT = clip_a * pT + clip_g
            wT = tl.minimum(tl.maximum(xT, 0.0), 1.0)
            if MASKED or MASS_ONLY:
                wT = tl.where(valid, wT, 0.0)

        if MASS_ONLY:
            mass += tl.sum(wT, 1)
        else:
            do = tl.load(
                DO_base + offs_m[:, None] * stride_dot + offs_d[None, :],
                mask=row_ok[:, None],
                other=0.0,
            )
            dv = tl.dot(wT.to(do.dtype), do, dv, input_precision=DOT_PREC)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            if MODE == MODE_SIGMOID:
                dsT = dpT * pT * (1.0 - pT)
            else:
                if MODE == MODE_CLIP:
                    # d clamp / dx is 1 inside [0, 1] (torch.clamp's convention at the edges)
                    dpT = tl.where((xT >= 0.0) & (xT <= 1.0), dpT * clip_a, 0.0)
                delta = tl.load(Delta_row + offs_m, mask=row_ok, other=0.0)
                dsT = pT * (dpT - delta[None, :])
            dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PREC)
    return dk, dv, mass


@autotune(bwd_kv_configs(), ["T", "HEAD_DIM", "MODE", "MASS_ONLY"])
@triton.jit
def attn_bwd_kv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    Delta,
    DK,
    DV,
    Mass,
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
    H,
    T,
    qk_scale,
    sm_scale,
    log2_tk,
    clip_a,
    clip_g,
    HEAD_DIM: tl.constexpr,
    MODE: tl.constexpr,
    MASS_ONLY: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dK, dV (or the key mass) for BLOCK_N keys of one (batch, head)."""
    tl.static_assert(BLOCK_N % BLOCK_M == 0)  # the diagonal block is walked in BLOCK_M steps
    start_n = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    row0 = off_hz.to(tl.int64) * T

    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < T

    k = tl.load(
        K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
        mask=col_ok[:, None],
        other=0.0,
    )
    if MASS_ONLY:
        v = k  # unused
    else:
        v = tl.load(
            V
            + off_b * stride_vb
            + off_h * stride_vh
            + offs_n[:, None] * stride_vt
            + offs_d[None, :],
            mask=col_ok[:, None],
            other=0.0,
        )
    Q_base = Q + off_b * stride_qb + off_h * stride_qh
    DO_base = DO + off_b * stride_dob + off_h * stride_doh

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    mass = tl.zeros([BLOCK_N], dtype=tl.float32)

    # Queries of the diagonal block see only part of these keys: mask.
    lo = start_n * BLOCK_N
    hi = tl.minimum(lo + BLOCK_N, T)
    dk, dv, mass = _bwd_kv_inner(
        dk,
        dv,
        mass,
        k,
        v,
        Q_base,
        DO_base,
        LSE + row0,
        Delta + row0,
        stride_qt,
        stride_dot,
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
        MASS_ONLY,
        DOT_PREC,
    )
    # Queries below the diagonal block see all of them.
    dk, dv, mass = _bwd_kv_inner(
        dk,
        dv,
        mass,
        k,
        v,
        Q_base,
        DO_base,
        LSE + row0,
        Delta + row0,
        stride_qt,
        stride_dot,
        offs_n,
        offs_d,
        lo + BLOCK_N,
        T,
        T,
        qk_scale,
        log2_tk,
        clip_a,
        clip_g,
        BLOCK_M,
        False,
        MODE,
        MASS_ONLY,
        DOT_PREC,
    )

    if MASS_ONLY:
        tl.store(Mass + row0 + offs_n, mass, mask=col_ok)
    else:
        dk = dk * sm_scale
        tl.store(
            DK
            + off_b * stride_dkb
            + off_h * stride_dkh
            + offs_n[:, None] * stride_dkt
            + offs_d[None, :],
            dk.to(DK.dtype.element_ty),
            mask=col_ok[:, None],
        )
        tl.store(
            DV
            + off_b * stride_dvb
            + off_h * stride_dvh
            + offs_n[:, None] * stride_dvt
            + offs_d[None, :],
            dv.to(DV.dtype.element_ty),
            mask=col_ok[:, None],
        )


@triton.jit
def _bwd_q_inner(
    dq,
    dsum,
    q,
    do,
    lse,
    delta,
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
    log2_tk,
    clip_a,
    clip_g,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    MODE: tl.constexpr,
    DELTA_ONLY: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Walk keys [lo, hi) for one query block, accumulating dQ (or rowsum(P * dP))."""
    offs_nb = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_nb
        kT_ptrs = K_base + cols[None, :] * stride_kt + offs_d[:, None]
        vT_ptrs = V_base + cols[None, :] * stride_vt + offs_d[:, None]
        if MASKED:
            kT = tl.load(kT_ptrs, mask=cols[None, :] < T, other=0.0)
            vT = tl.load(vT_ptrs, mask=cols[None, :] < T, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            vT = tl.load(vT_ptrs)
        s2 = tl.dot(q, kT, input_precision=DOT_PREC) * qk_scale
        if MODE == MODE_SIGMOID:
            p = 1.0 / (1.0 + tl.math.exp2(log2_tk - s2))
        else:
            p = tl.math.exp2(s2 - lse[:, None])
        if MASKED:
            valid = (cols[None, :] <= offs_m[:, None]) & (cols[None, :] < T)
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PREC)
        if MODE == MODE_SIGMOID:
            ds = dp * p * (1.0 - p)
        else:
            if MODE == MODE_CLIP:
                x = clip_a * p + clip_g
                dp = tl.where((x >= 0.0) & (x <= 1.0), dp * clip_a, 0.0)
            if DELTA_ONLY:
                dsum += tl.sum(p * dp, 1)
            ds = p * (dp - delta[:, None])
        if not DELTA_ONLY:
            dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PREC)
    return dq, dsum


@autotune(bwd_q_configs(), ["T", "HEAD_DIM", "MODE", "EXTRA", "DELTA_ONLY"])
@triton.jit
def attn_bwd_q_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    Delta,
    DE,
    EK,
    DQ,
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
    stride_dqb,
    stride_dqh,
    stride_dqt,
    H,
    T,
    qk_scale,
    sm_scale,
    log2_tk,
    clip_a,
    clip_g,
    HEAD_DIM: tl.constexpr,
    MODE: tl.constexpr,
    EXTRA: tl.constexpr,
    DELTA_ONLY: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dQ for BLOCK_M queries of one (batch, head); with DELTA_ONLY, the clip Delta instead."""
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    row0 = off_hz.to(tl.int64) * T

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T

    q = tl.load(
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    do = tl.load(
        DO
        + off_b * stride_dob
        + off_h * stride_doh
        + offs_m[:, None] * stride_dot
        + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    lse = tl.zeros([BLOCK_M], dtype=tl.float32)
    delta = tl.zeros([BLOCK_M], dtype=tl.float32)
    if MODE != MODE_SIGMOID:
        lse = tl.load(LSE + row0 + offs_m, mask=row_ok, other=0.0)
        if not DELTA_ONLY:
            delta = tl.load(Delta + row0 + offs_m, mask=row_ok, other=0.0)
    K_base = K + off_b * stride_kb + off_h * stride_kh
    V_base = V + off_b * stride_vb + off_h * stride_vh

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = start_m * BLOCK_M
    dq, dsum = _bwd_q_inner(
        dq,
        dsum,
        q,
        do,
        lse,
        delta,
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
        log2_tk,
        clip_a,
        clip_g,
        BLOCK_N,
        False,
        MODE,
        DELTA_ONLY,
        DOT_PREC,
    )
    dq, dsum = _bwd_q_inner(
        dq,
        dsum,
        q,
        do,
        lse,
        delta,
        K_base,
        V_base,
        stride_kt,
        stride_vt,
        offs_m,
        offs_d,
        lo,
        tl.minimum(lo + BLOCK_M, T),
        T,
        qk_scale,
        log2_tk,
        clip_a,
        clip_g,
        BLOCK_N,
        True,
        MODE,
        DELTA_ONLY,
        DOT_PREC,
    )

    if DELTA_ONLY:
        tl.store(Delta + row0 + offs_m, dsum, mask=row_ok)
    else:
        if EXTRA != EXTRA_NONE:
            # The extra slot's logit e = sm_scale * q.k' sends de * k' back to q.
            de = tl.load(DE + row0 + offs_m, mask=row_ok, other=0.0)
            ek = tl.load(EK + off_h * HEAD_DIM + offs_d).to(tl.float32)
            dq += de[:, None] * ek[None, :]
        dq = dq * sm_scale
        tl.store(
            DQ
            + off_b * stride_dqb
            + off_h * stride_dqh
            + offs_m[:, None] * stride_dqt
            + offs_d[None, :],
            dq.to(DQ.dtype.element_ty),
            mask=row_ok[:, None],
        )

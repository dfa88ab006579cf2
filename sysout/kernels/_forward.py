"""Forward kernel: FlashAttention-2 style causal attention with the sysout switches.

One program owns BLOCK_M query rows of one (batch, head) and walks the keys in BLOCK_N steps,
first the blocks strictly left of the diagonal (no mask; the scale folded into one FMA per
score), then the diagonal block (causal mask only: rows past T are never stored). Scores live
in base 2: ``s2 = q.k * sm_scale * log2(e)``, so every exponential is an ``exp2`` and the stored
LSE is ``log2(sum 2^s2)``. Programs take the query blocks from the last (longest rows) first.

The same kernel runs the clipped softmax in two passes (``STATS_ONLY`` for the LSE, then
``MODE_CLIP`` reading that LSE back); see ``flash_attention.py`` for why.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common, _modes
from ._common import (
    EXTRA_CONTEXT,
    EXTRA_KV,
    EXTRA_NONE,
    LOG2E,
    SCALE_NONE,
    autotune,
    fwd_configs,
)
from ._modes import MODE_SOFTMAX


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    rows,
    kv,
    start,
    end,
    T,
    coefs,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    MODE: tl.constexpr,
    STATS_ONLY: tl.constexpr,
    SCALE_POS: tl.constexpr,
    FAST_SIGMOID: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Accumulate keys [start, end) into (acc, l_i, m_i). MASKED: the diagonal block (causal mask;
    loads stop at T). rows = (q, row, offs_m) of this program, row the mode's ``row_stat``;
    kv = (K, V of this (b, h), stride_kt, stride_vt); coefs = (qk_scale, log2_tk, clip_a,
    clip_g)."""
    q, row, offs_m = rows
    K_head, V_head, stride_kt, stride_vt = kv
    qk_scale, log2_tk, clip_a, clip_g = coefs
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, q.shape[1])
    # K is read transposed ([d, BLOCK_N]) straight from memory: no in-register transpose.
    kT_ptrs = K_head + _common.tile_offsets_t(start, stride_kt, offs_n, offs_d)
    v_ptrs = V_head + _common.tile_offsets(start, stride_vt, offs_n, offs_d)
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        kT = _common.load_if(kT_ptrs, cols[None, :] < T, MASKED)
        qk = tl.dot(q, kT, input_precision=DOT_PREC)
        if MASKED:
            # Rows past T are never stored, so only the causal half of the mask is needed:
            # a real row i sees cols <= i < T.
            valid = cols[None, :] <= offs_m[:, None]

        if MODE == MODE_SOFTMAX:
            # Online softmax in base 2: rescale what we have by 2^(m_old - m_new).
            if MASKED:
                s2 = tl.where(valid, qk * qk_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s2, 1))
                p = tl.math.exp2(s2 - m_new[:, None])
            else:
                # The scale is folded into one FMA per score: max(qk * c) = c max(qk), c > 0.
                if SCALE_POS:
                    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                else:
                    m_new = tl.maximum(m_i, tl.min(qk, 1) * qk_scale)
                p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            if not STATS_ONLY:
                acc = acc * alpha[:, None]
            m_i = m_new
        else:
            # A pointwise mode, or the clipped softmax's second pass (P from the stored LSE).
            p = _modes.probs(qk, row[:, None], qk_scale, log2_tk, MODE, FAST_SIGMOID)
            p = _modes.weights(p, clip_a, clip_g, MODE)
            if MASKED:
                p = tl.where(valid, p, 0.0)

        if not STATS_ONLY:
            v = _common.load_if(v_ptrs, cols[:, None] < T, MASKED)
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        kT_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt
    return acc, l_i, m_i


@autotune(
    fwd_configs(),
    ["T", "HEAD_DIM", "MODE", "HAS_SINK", "EXTRA", "SCALE", "STATS_ONLY", "FAST_SIGMOID"],
)
@triton.jit
def attn_fwd_kernel(
    Q,
    K,
    V,
    Out,
    OutRaw,
    LSE,
    E,
    Sink,
    EK,
    EV,
    Scale,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_sb,
    stride_sh,
    stride_st,
    B,
    H,
    T,
    qk_scale,
    log2_tk,
    clip_a,
    clip_g,
    HEAD_DIM: tl.constexpr,
    MODE: tl.constexpr,
    HAS_SINK: tl.constexpr,
    EXTRA: tl.constexpr,
    SCALE: tl.constexpr,
    STORE_RAW: tl.constexpr,
    STATS_ONLY: tl.constexpr,
    SCALE_POS: tl.constexpr,
    FAST_SIGMOID: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Out = Scale * attention(Q, K, V) for BLOCK_M queries of one (batch, head).

    LSE / E ([B*H, T], fp32, base 2) receive the log-sum-exp over everything in the
    denominator (sink and kv slot included; real keys only for the context slot) and the extra
    slot's logit. OutRaw receives the unscaled output when STORE_RAW (needed for dScale).
    STATS_ONLY computes the LSE alone (first pass of the clipped softmax).
    """
    tl.static_assert(BLOCK_M % BLOCK_N == 0)  # the diagonal block is walked in BLOCK_N steps
    prog = _common.program_rows(B, H, T, BLOCK_M, HEAD_DIM, True)
    off_b, off_h, row0, lo, offs_mb, offs_m, offs_d, row_ok = prog  # row0: (b, h) in LSE / E
    Q_base = Q + off_b * stride_qb + off_h * stride_qh
    K_base = K + off_b * stride_kb + off_h * stride_kh
    V_base = V + off_b * stride_vb + off_h * stride_vh
    q = _common.load_tile(Q_base, lo, stride_qt, offs_mb, offs_d, row_ok)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    row = tl.zeros([BLOCK_M], dtype=tl.float32)

    if MODE != MODE_SOFTMAX:  # (the online softmax makes its own LSE)
        row = _modes.row_stat(LSE + row0, offs_m, row_ok, MODE)
    if EXTRA != EXTRA_NONE:
        ek = tl.load(EK + off_h * HEAD_DIM + offs_d).to(tl.float32)
        ev = tl.load(EV + off_h * HEAD_DIM + offs_d).to(tl.float32)
        e2 = tl.sum(q.to(tl.float32) * ek[None, :], 1) * qk_scale  # extra-slot logit, base 2
        tl.store(E + row0 + offs_m, e2, mask=row_ok)
    if MODE == MODE_SOFTMAX:
        # A sink / kv slot is one more column of the softmax that every query sees: start the
        # running max at its logit and the running sum at its weight (1 relative to itself).
        if HAS_SINK:
            z2 = tl.load(Sink + off_h).to(tl.float32) * LOG2E
            m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + z2
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
        if EXTRA == EXTRA_KV:
            m_new = tl.maximum(m_i, e2)
            w_e = tl.math.exp2(e2 - m_new)
            l_i = l_i * tl.math.exp2(m_i - m_new) + w_e
            m_i = m_new
            if not STATS_ONLY:
                acc = w_e[:, None] * ev[None, :]

    kv = (K_base, V_base, stride_kt, stride_vt)
    coefs = (qk_scale, log2_tk, clip_a, clip_g)
    rows = (q, row, offs_m)
    # Keys strictly left of the diagonal block: all valid for every row, no mask.
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        rows,
        kv,
        0,
        lo,
        T,
        coefs,
        BLOCK_N,
        False,
        MODE,
        STATS_ONLY,
        SCALE_POS,
        FAST_SIGMOID,
        DOT_PREC,
    )
    # The diagonal block, stopping at the sequence end.
    hi = tl.minimum(lo + BLOCK_M, T)
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        rows,
        kv,
        lo,
        hi,
        T,
        coefs,
        BLOCK_N,
        True,
        MODE,
        STATS_ONLY,
        SCALE_POS,
        FAST_SIGMOID,
        DOT_PREC,
    )

    if MODE == MODE_SOFTMAX:
        lse = m_i + tl.math.log2(l_i)
        tl.store(LSE + row0 + offs_m, lse, mask=row_ok)
    if not STATS_ONLY:
        o = acc
        if MODE == MODE_SOFTMAX:
            o = acc / l_i[:, None]
            if EXTRA == EXTRA_CONTEXT:
                # p0 = exp(e) / (exp(e) + sum_j exp(s_j)) = sigmoid(e - LSE_real)
                p0 = 1.0 / (1.0 + tl.math.exp2(lse - e2))
                o = o + p0[:, None] * ev[None, :]
        o_strides = (stride_ob, stride_oh, stride_ot)
        if STORE_RAW:
            _common.store_rows(OutRaw, o, off_b, off_h, o_strides, lo, offs_mb, offs_d, row_ok)
        if SCALE != SCALE_NONE:
            s_strides = (stride_sb, stride_sh, stride_st)
            o = o * _common.load_scale(
                Scale, off_b, off_h, s_strides, lo, offs_mb, offs_d, row_ok, SCALE
            )
        _common.store_rows(Out, o, off_b, off_h, o_strides, lo, offs_mb, offs_d, row_ok)

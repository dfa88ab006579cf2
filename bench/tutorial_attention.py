"""A baseline: the Triton tutorial's fused attention (06-fused-attention), causal, pointer loads.

Transcribed for comparison only (``bench/kernel_compile.py`` compiles it beside the sysout kernels
for the same target): the forward is the tutorial's two-stage loop (blocks left of the diagonal
unmasked, scale folded into one FMA; then the diagonal block with an additive mask), the backward
its preprocess plus one kernel that walks the queries of a key block for dK/dV and then the keys
of a query block for dQ (BLOCK_M1 = 32, BLOCK_N1 = 128, BLOCK_M2 = 128, BLOCK_N2 = 32, 4 warps,
5 stages). Pointers replace the tutorial's block pointers / descriptors so that both families
use the same loads (``cp.async``). Sequence lengths must be multiples of 128.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_stage(
    acc,
    l_i,
    m_i,
    q,
    K,
    V,
    stride_t,
    start_m,
    qk_scale,
    offs_m,
    offs_n,
    offs_d,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DIAGONAL: tl.constexpr,
):
    if DIAGONAL:
        lo = start_m * BLOCK_M
        hi = lo + BLOCK_M
    else:
        lo = 0
        hi = start_m * BLOCK_M
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        kT = tl.load(K + (start_n + offs_n)[None, :] * stride_t + offs_d[:, None])
        qk = tl.dot(q, kT)
        if DIAGONAL:
            keep = offs_m[:, None] >= (start_n + offs_n[None, :])
            qk = qk * qk_scale + tl.where(keep, 0.0, -1.0e6)
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            qk -= m_new[:, None]
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_new[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = tl.load(V + (start_n + offs_n)[:, None] * stride_t + offs_d[None, :])
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def tutorial_fwd_kernel(
    Q,
    K,
    V,
    sm_scale,
    M,
    Out,
    stride_b,
    stride_h,
    stride_t,
    H,
    T,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    base = (off_hz // H).to(tl.int64) * stride_b + (off_hz % H).to(tl.int64) * stride_h
    Q += base
    K += base
    V += base
    Out += base
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.44269504
    q = tl.load(Q + offs_m[:, None] * stride_t + offs_d[None, :])
    acc, l_i, m_i = _fwd_stage(
        acc,
        l_i,
        m_i,
        q,
        K,
        V,
        stride_t,
        start_m,
        qk_scale,
        offs_m,
        offs_n,
        offs_d,
        BLOCK_M,
        BLOCK_N,
        False,
    )
    acc, l_i, m_i = _fwd_stage(
        acc,
        l_i,
        m_i,
        q,
        K,
        V,
        stride_t,
        start_m,
        qk_scale,
        offs_m,
        offs_n,
        offs_d,
        BLOCK_M,
        BLOCK_N,
        True,
    )
    m_i += tl.math.log2(l_i)
    tl.store(M + off_hz * T + offs_m, m_i)
    tl.store(
        Out + offs_m[:, None] * stride_t + offs_d[None, :],
        (acc / l_i[:, None]).to(Out.dtype.element_ty),
    )


@triton.jit
def tutorial_bwd_preprocess(Out, DO, Delta, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    off_hz = tl.program_id(1)
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = off_hz * HEAD_DIM * T + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(Out + ptrs)
    do = tl.load(DO + ptrs).to(tl.float32)
    tl.store(Delta + off_hz * T + offs_m, tl.sum(o * do, axis=1))


@triton.jit
def _bwd_dkdv(
    dk,
    dv,
    Q,
    k,
    v,
    DO,
    M,
    D,
    stride_t,
    start_n,
    start_m,
    num_steps,
    BLOCK_M1: tl.constexpr,
    BLOCK_N1: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASK: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M1)
    offs_n = start_n + tl.arange(0, BLOCK_N1)
    offs_d = tl.arange(0, HEAD_DIM)
    qT_ptrs = Q + offs_m[None, :] * stride_t + offs_d[:, None]
    do_ptrs = DO + offs_m[:, None] * stride_t + offs_d[None, :]
    curr_m = start_m
    for _ in range(num_steps):
        qT = tl.load(qT_ptrs)
        offs_m = curr_m + tl.arange(0, BLOCK_M1)
        m = tl.load(M + offs_m)
        pT = tl.math.exp2(tl.dot(k, qT) - m[None, :])
        if MASK:
            pT = tl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
        do = tl.load(do_ptrs)
        dv += tl.dot(pT.to(do.dtype), do)
        delta = tl.load(D + offs_m)
        dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT))
        curr_m += BLOCK_M1
        qT_ptrs += BLOCK_M1 * stride_t
        do_ptrs += BLOCK_M1 * stride_t
    return dk, dv


@triton.jit
def _bwd_dq(
    dq,
    q,
    K,
    V,
    do,
    m,
    D,
    stride_t,
    start_m,
    start_n,
    num_steps,
    BLOCK_M2: tl.constexpr,
    BLOCK_N2: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASK: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M2)
    offs_d = tl.arange(0, HEAD_DIM)
    kT_ptrs = K + (start_n + tl.arange(0, BLOCK_N2))[None, :] * stride_t + offs_d[:, None]
    vT_ptrs = V + (start_n + tl.arange(0, BLOCK_N2))[None, :] * stride_t + offs_d[:, None]
    delta = tl.load(D + offs_m)
    curr_n = start_n
    for _ in range(num_steps):
        kT = tl.load(kT_ptrs)
        vT = tl.load(vT_ptrs)
        p = tl.math.exp2(tl.dot(q, kT) - m)
        if MASK:
            offs_n = curr_n + tl.arange(0, BLOCK_N2)
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        dp = tl.dot(do, vT)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT))
        curr_n += BLOCK_N2
        kT_ptrs += BLOCK_N2 * stride_t
        vT_ptrs += BLOCK_N2 * stride_t
    return dq


@triton.jit
def tutorial_bwd_kernel(
    Q,
    K,
    V,
    sm_scale,
    DO,
    DQ,
    DK,
    DV,
    M,
    D,
    stride_b,
    stride_h,
    stride_t,
    H,
    T,
    BLOCK_M1: tl.constexpr,
    BLOCK_N1: tl.constexpr,
    BLOCK_M2: tl.constexpr,
    BLOCK_N2: tl.constexpr,
    BLK_SLICE_FACTOR: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """K arrives pre-scaled by sm_scale * log2(e), so scores are already in base 2."""
    bhid = tl.program_id(2)
    row0 = (bhid * T).to(tl.int64)
    base = (stride_h * (bhid % H) + stride_b * (bhid // H)).to(tl.int64)
    Q += base
    K += base
    V += base
    DO += base
    DQ += base
    DK += base
    DV += base
    M += row0
    D += row0
    pid = tl.program_id(0)
    offs_d = tl.arange(0, HEAD_DIM)

    # dK, dV for BLOCK_N1 keys: the diagonal in thin masked steps, then the rest unmasked.
    start_n = pid * BLOCK_N1
    offs_n = start_n + tl.arange(0, BLOCK_N1)
    dk = tl.zeros([BLOCK_N1, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N1, HEAD_DIM], dtype=tl.float32)
    k = tl.load(K + offs_n[:, None] * stride_t + offs_d[None, :])
    v = tl.load(V + offs_n[:, None] * stride_t + offs_d[None, :])
    MASK_M1: tl.constexpr = BLOCK_M1 // BLK_SLICE_FACTOR
    steps = BLOCK_N1 // MASK_M1
    dk, dv = _bwd_dkdv(
        dk,
        dv,
        Q,
        k,
        v,
        DO,
        M,
        D,
        stride_t,
        start_n,
        start_n,
        steps,
        MASK_M1,
        BLOCK_N1,
        HEAD_DIM,
        True,
    )
    start_m = start_n + steps * MASK_M1
    dk, dv = _bwd_dkdv(
        dk,
        dv,
        Q,
        k,
        v,
        DO,
        M,
        D,
        stride_t,
        start_n,
        start_m,
        (T - start_m) // BLOCK_M1,
        BLOCK_M1,
        BLOCK_N1,
        HEAD_DIM,
        False,
    )
    tl.store(DV + offs_n[:, None] * stride_t + offs_d[None, :], dv)
    tl.store(DK + offs_n[:, None] * stride_t + offs_d[None, :], dk * sm_scale)

    # dQ for BLOCK_M2 queries: the diagonal in thin masked steps, then the keys to its left.
    start_m = pid * BLOCK_M2
    end_n = start_m + BLOCK_M2
    offs_m = start_m + tl.arange(0, BLOCK_M2)
    q = tl.load(Q + offs_m[:, None] * stride_t + offs_d[None, :])
    do = tl.load(DO + offs_m[:, None] * stride_t + offs_d[None, :])
    m = tl.load(M + offs_m)[:, None]
    dq = tl.zeros([BLOCK_M2, HEAD_DIM], dtype=tl.float32)
    MASK_N2: tl.constexpr = BLOCK_N2 // BLK_SLICE_FACTOR
    steps = BLOCK_M2 // MASK_N2
    dq = _bwd_dq(
        dq,
        q,
        K,
        V,
        do,
        m,
        D,
        stride_t,
        start_m,
        end_n - steps * MASK_N2,
        steps,
        BLOCK_M2,
        MASK_N2,
        HEAD_DIM,
        True,
    )
    end_n -= steps * MASK_N2
    steps = end_n // BLOCK_N2
    dq = _bwd_dq(
        dq,
        q,
        K,
        V,
        do,
        m,
        D,
        stride_t,
        start_m,
        end_n - steps * BLOCK_N2,
        steps,
        BLOCK_M2,
        BLOCK_N2,
        HEAD_DIM,
        False,
    )
    tl.store(DQ + offs_m[:, None] * stride_t + offs_d[None, :], dq * 0.6931471824645996)


# The tutorial's fixed backward launch, and its forward autotune space after its own filter.
BWD_META = {"BLOCK_M1": 32, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 32, "BLK_SLICE_FACTOR": 2}
BWD_LAUNCH = {"num_warps": 4, "num_stages": 5}
FWD_CONFIGS = [
    (bm, bn, w, s)
    for bm in (64, 128)
    for bn in (32, 64)
    for s in (3, 4, 7)
    for w in (4, 8)
    if not (bm * bn < 128 * 128 and w == 8)
]


def tutorial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    fwd_config: tuple[int, int, int, int] = (128, 64, 4, 3),
):
    """Run the transcription once: (o, dq, dk, dv) for contiguous [B, H, T, d] inputs."""
    B, H, T, D = q.shape
    assert T % 128 == 0 and q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    sm_scale = 1.0 / math.sqrt(D)
    bm, bn, warps, stages = fwd_config
    o = torch.empty_like(q)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    tutorial_fwd_kernel[(T // bm, B * H)](
        q,
        k,
        v,
        sm_scale,
        lse,
        o,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        H,
        T,
        HEAD_DIM=D,
        BLOCK_M=bm,
        BLOCK_N=bn,
        num_warps=warps,
        num_stages=stages,
    )
    do = do.contiguous()
    delta = torch.empty_like(lse)
    tutorial_bwd_preprocess[(T // 128, B * H)](o, do, delta, T, HEAD_DIM=D, BLOCK_M=128)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    tutorial_bwd_kernel[(T // BWD_META["BLOCK_N1"], 1, B * H)](
        q,
        k * (sm_scale * LOG2E),
        v,
        sm_scale,
        do,
        dq,
        dk,
        dv,
        lse,
        delta,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        H,
        T,
        HEAD_DIM=D,
        **BWD_META,
        **BWD_LAUNCH,
    )
    return o, dq, dk, dv

"""How each kernel mode forms its weights: every mode's formula is written here and only here.

A mode says how the weight W_ij that query i puts on value j comes from the raw score
qk_ij = q_i . k_j, with s_ij = qk_ij * sm_scale (natural log) and ``qk_scale = sm_scale log2 e``
(the kernels' exponentials are base 2). Two kinds:

* **normalised** (softmax; clip, the clipped softmax): W = g(P) with P = softmax(s) over the row.
  The forward stores each row's base-2 LSE; the backward needs Delta_i = sum_j P_ij dL/dP_ij
  (rowsum(dO * O) when W = P). Softmax runs online in the forward; ``lse_first`` modes (clip)
  need the row's final LSE before their first key: an LSE-only forward pass first, and Delta
  from its own pass.
* **pointwise** (sigmoid, relu): W = f(s_ij, i, T) alone: no running max or sum, no LSE, no Delta;
  dL/ds = dL/dW f'(s).

The kernels call ``row_stat`` (a per-query number the formula needs), ``probs`` (P of a tile),
``weights`` (W from P) and the derivatives: ``probs_grad`` (dL/dP from dL/dW, normalised modes;
the backward forms dL/ds = P (dL/dP - Delta)) and ``score_grad`` (dL/ds, pointwise modes), all
with ``MODE`` a ``tl.constexpr``; an unknown MODE is a compile-time error. The host reads
``MODES``.

Adding a pointwise mode touches this file only: an entry in ``MODES``, its constant, a branch
in ``probs`` and in ``score_grad``, and one in ``row_stat`` if it needs a per-query number.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl


@dataclass(frozen=True)
class ModeTraits:
    """What the host and the kernels' control flow need to know about a mode."""

    id: int  # the kernels' MODE constexpr
    normalised: bool  # W from P = softmax(s): LSE stored, Delta in the backward
    lse_first: bool = False  # W needs the final LSE: an LSE-only pass, Delta from its own pass


MODES: dict[str, ModeTraits] = {
    "softmax": ModeTraits(0, normalised=True),
    "sigmoid": ModeTraits(1, normalised=False),
    "clip": ModeTraits(2, normalised=True, lse_first=True),
    "relu": ModeTraits(3, normalised=False),
}
BY_ID: dict[int, str] = {m.id: name for name, m in MODES.items()}
POINTWISE: tuple[str, ...] = tuple(n for n, m in MODES.items() if not m.normalised)
# The modes fused_attention(mode=...) takes; clip comes with its clip=(zeta, gamma) argument.
CALLER_MODES: tuple[str, ...] = ("softmax", *POINTWISE)

MODE_SOFTMAX = tl.constexpr(MODES["softmax"].id)  # online softmax (+ sink / extra slot)
MODE_SIGMOID = tl.constexpr(MODES["sigmoid"].id)  # sigmoid(s - ln T)
MODE_CLIP = tl.constexpr(MODES["clip"].id)  # clamp(a P + g, 0, 1) from a stored LSE
MODE_RELU = tl.constexpr(MODES["relu"].id)  # relu(s) / (i + 1)
# One bit per normalised mode id: the kernels' compile-time view of the table above.
_NORMALISED_BITS = tl.constexpr(sum(1 << m.id for m in MODES.values() if m.normalised))

LN2 = tl.constexpr(0.6931471805599453)
LN2_HALF = tl.constexpr(0.34657359027997264)


def traits_of(mode_id: int) -> ModeTraits:
    return MODES[BY_ID[mode_id]]


@triton.jit
def normalised(MODE: tl.constexpr):
    """(Compile time) whether MODE's weights come from softmax probabilities."""
    return (_NORMALISED_BITS >> MODE) & 1 == 1


# --------------------------------------------------------------------------------------------
# The formulas
# --------------------------------------------------------------------------------------------
@triton.jit
def sigmoid_weights(qk, qk_scale, log2_tk, FAST: tl.constexpr):
    """sigmoid(s - ln T) from raw scores qk (s = qk * sm_scale; qk_scale = sm_scale log2 e).

    FAST (CUDA, half inputs): one special-function op, sigmoid(x) = (1 + tanh(x / 2)) / 2 with
    the approximate tanh (max rel. error ~2^-11, below bf16/fp16 resolution). Otherwise (the
    interpreter, fp32) 1 / (1 + 2^(log2 T - s2)): an exp2 and a reciprocal.
    """
    if FAST:
        h = LN2_HALF * qk_scale  # x / 2 = qk * h - ln(T) / 2
        c = LN2_HALF * log2_tk
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=r,r", [qk * h - c], dtype=tl.float32, is_pure=True, pack=1
        )
        return 0.5 * t + 0.5
    return 1.0 / (1.0 + tl.math.exp2(log2_tk - qk * qk_scale))


@triton.jit
def clip01(x):
    """The clipped softmax's clamp to [0, 1]."""
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def row_stat(LSE_row, offs_m, row_ok, MODE: tl.constexpr):
    """The per-query number ``probs`` reads for queries offs_m: the stored base-2 LSE of a
    normalised mode (0 past T), 1 / (i + 1) for relu (query i sees i + 1 keys), nothing (zeros)
    for sigmoid."""
    if normalised(MODE):
        row = tl.load(LSE_row + offs_m, mask=row_ok, other=0.0)
    elif MODE == MODE_SIGMOID:
        row = tl.zeros(offs_m.shape, dtype=tl.float32)
    elif MODE == MODE_RELU:
        # div.approx (2 ulp): the backward recomputes it per query tile, where an IEEE
        # division (Newton steps, a slow-path branch) adds ~50 instructions per loop
        row = tl.math.fdiv(1.0, (offs_m + 1).to(tl.float32), approx=True)
    else:
        tl.static_assert(False, "unknown attention kernel MODE (see sysout/kernels/_modes.py)")
    return row


@triton.jit
def probs(qk, row, qk_scale, log2_tk, MODE: tl.constexpr, FAST: tl.constexpr):
    """P of a tile of raw scores qk (row: ``row_stat`` broadcast against qk): the softmax
    probability 2^(s2 - LSE) of a normalised mode, the weight W itself of a pointwise one."""
    if normalised(MODE):
        p = tl.math.exp2(qk * qk_scale - row)
    elif MODE == MODE_SIGMOID:
        p = sigmoid_weights(qk, qk_scale, log2_tk, FAST)
    elif MODE == MODE_RELU:
        # relu(s) / (i + 1) = relu(qk * sm_scale / (i + 1)): one multiply per score, any sign
        p = tl.maximum(qk * (row * (qk_scale * LN2)), 0.0)
    else:
        tl.static_assert(False, "unknown attention kernel MODE (see sysout/kernels/_modes.py)")
    return p


@triton.jit
def weights(p, clip_a, clip_g, MODE: tl.constexpr):
    """W, the weights applied to v, from ``probs``: P itself except for the clipped softmax."""
    return clip01(clip_a * p + clip_g) if MODE == MODE_CLIP else p


@triton.jit
def probs_grad(dw, p, clip_a, clip_g, MODE: tl.constexpr):
    """dL/dP from dL/dW = dP (dO . v_j) for a normalised mode: through the clamp for clip
    (slope clip_a inside [0, 1], torch.clamp's convention at the edges)."""
    if MODE == MODE_CLIP:
        x = clip_a * p + clip_g
        dw = tl.where((x >= 0.0) & (x <= 1.0), dw * clip_a, 0.0)
    return dw


@triton.jit
def score_grad(dw, p, qk, row, qk_scale, MODE: tl.constexpr):
    """dL/ds (natural-log score) of a pointwise mode's tile from dL/dW: dL/dW f'(s). p is
    ``probs`` after the causal mask: the result must be 0 where p was masked to 0. (A
    normalised mode's is P (``probs_grad`` - Delta_i), formed by the backward around its Delta
    load.)"""
    if MODE == MODE_SIGMOID:
        ds = dw * p * (1.0 - p)
    elif MODE == MODE_RELU:
        # relu'(s) / (i + 1), 0 where p was masked; selecting before the multiply keeps the
        # select off the bf16 cast (no byte permutes: ~50 fewer instructions per loop)
        ds = dw * tl.where(p > 0.0, row, 0.0)
    else:
        tl.static_assert(False, "not a pointwise attention kernel MODE (see _modes.py)")
    return ds

"""Host side of the kernels: the launch arguments and grids of forward, backward and key mass.

Grids are one-dimensional (``cdiv(T, BLOCK) * B * H`` programs; see ``program_block``), so any
B * H fits. dQ is accumulated atomically in fp32 by the backward and cast once at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from . import _common, _modes
from ._backward import attn_bwd_kernel, attn_bwd_preprocess_kernel
from ._forward import attn_fwd_kernel
from ._passes import attn_clip_delta_kernel, attn_key_mass_kernel


def _ints(*switches) -> tuple[int, ...]:  # the kernels' tl.constexpr switches, for the host
    return tuple(s.value for s in switches)


_SOFTMAX = _modes.MODES["softmax"].id
_NO_EXTRA, _KV, _CONTEXT = _ints(_common.EXTRA_NONE, _common.EXTRA_KV, _common.EXTRA_CONTEXT)
_NO_SCALE, _HEAD, _CHANNEL = _ints(_common.SCALE_NONE, _common.SCALE_HEAD, _common.SCALE_CHANNEL)
LOG2E = _common.LOG2E.value
PRE_BLOCK_M = _common.PRE_BLOCK_M


@dataclass(frozen=True)
class _Spec:
    """Everything about a call that is not a tensor."""

    mode: int
    extra: int
    scale: int
    has_sink: bool
    sm_scale: float
    clip_a: float
    clip_g: float
    return_mass: bool

    @property
    def qk_scale(self) -> float:  # scores in base 2: exp(x) = 2^(x log2 e)
        return self.sm_scale * LOG2E

    @property
    def normalised(self) -> bool:  # an LSE per row, a Delta in the backward
        return _modes.traits_of(self.mode).normalised

    @property
    def lse_first(self) -> bool:  # an LSE-only forward pass first, a Delta pass
        return _modes.traits_of(self.mode).lse_first


# The switches of each launch, shared with _plans.py (what bench/kernel_compile.py compiles).
def fwd_passes(spec: _Spec) -> list[tuple[int, bool]]:
    """(MODE, STATS_ONLY) of each forward launch: an LSE-only pass first when the weights need
    the final LSE (clip: then clamp(a 2^(s2 - LSE) + g) V)."""
    if spec.lse_first:
        return [(_SOFTMAX, True), (spec.mode, False)]
    return [(spec.mode, False)]


def fwd_switches(spec: _Spec, stats_only: bool, store_raw: bool) -> dict:
    return {
        "HAS_SINK": spec.has_sink,
        "EXTRA": spec.extra,
        "SCALE": spec.scale,
        "STORE_RAW": store_raw,
        "STATS_ONLY": stats_only,
        "SCALE_POS": spec.sm_scale > 0,
    }


def runs_preprocess(spec: _Spec) -> bool:
    """The row-wise preprocess computes Delta (normalised modes) and dO, dS of an out scale."""
    return spec.normalised or spec.scale != _NO_SCALE


def pre_switches(spec: _Spec, saved_raw: bool, scale_grad: bool) -> dict:
    return {
        "MODE": spec.mode,
        "EXTRA": spec.extra,
        "SCALE": spec.scale,
        "SAVED_RAW": saved_raw,
        "SCALE_GRAD": scale_grad,
    }


def _lastdim_contiguous(x: Tensor) -> Tensor:
    # The kernels take any batch/head/time strides but need unit stride along the head dim.
    return x if x.stride(-1) == 1 else x.contiguous()


def _empty_like_layout(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty [B, H, T, d] tensor laid out like x: token-major ([B, T, H, d] in memory, what a
    fused qkv projection gives) stays token-major, so the caller's transpose back is free."""
    B, H, T, D = x.shape
    dtype = dtype or x.dtype
    if H > 1 and T > 1 and x.stride(1) < x.stride(2):
        return torch.empty(B, T, H, D, dtype=dtype, device=x.device).transpose(1, 2)
    return torch.empty(B, H, T, D, dtype=dtype, device=x.device)


def _strides3(x: Tensor | None) -> tuple[int, int, int]:
    return (x.stride(0), x.stride(1), x.stride(2)) if x is not None else (0, 0, 0)


def _fast_sigmoid(q: Tensor) -> bool:
    # tanh.approx is PTX (no interpreter) and ~2^-11 accurate: enough for half inputs only.
    return q.is_cuda and q.dtype != torch.float32


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs would otherwise go through TF32 tensor cores (10-bit mantissa).
    return "ieee" if dtype == torch.float32 else "tf32"


def _grid(q: Tensor, block: str):
    """One program per `block` rows of every (batch, head) (see ``program_block``)."""
    B, H, T, _ = q.shape
    return lambda meta: (triton.cdiv(T, meta[block]) * B * H,)


def _or_q(q: Tensor, x: Tensor | None) -> Tensor:
    # An unused pointer argument still needs a tensor.
    return q if x is None else x


def _score_args(kernel, q: Tensor, spec: _Spec, mode: int) -> dict:
    """The sizes, score scalars and switches of a kernel that forms scores, by name: each kernel
    gets those of its parameters among B, H, T, qk_scale, sm_scale, log2_tk, clip_a, clip_g,
    HEAD_DIM, MODE, FAST_SIGMOID and DOT_PREC."""
    B, H, T, D = q.shape
    values = {
        "B": B,
        "H": H,
        "T": T,
        "qk_scale": spec.qk_scale,
        "sm_scale": spec.sm_scale,
        "log2_tk": math.log2(T),
        "clip_a": spec.clip_a,
        "clip_g": spec.clip_g,
        "HEAD_DIM": D,
        "MODE": mode,
        "FAST_SIGMOID": _fast_sigmoid(q),
        "DOT_PREC": _dot_precision(q.dtype),
    }
    return {name: values[name] for name in kernel.arg_names if name in values}


def _forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sink: Tensor | None,
    ek: Tensor | None,
    ev: Tensor | None,
    scale: Tensor | None,
    spec: _Spec,
    store_raw: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Launch the forward pass(es). Returns (Y, O or None, LSE2 or None, E2 or None)."""
    B, H, T, D = q.shape
    out = _empty_like_layout(q)
    raw = _empty_like_layout(q) if store_raw else None
    f32 = {"dtype": torch.float32, "device": q.device}
    lse = torch.empty(B, H, T, **f32) if spec.normalised else None
    e2 = torch.empty(B, H, T, **f32) if spec.extra != _NO_EXTRA else None

    def launch(mode: int, stats_only: bool) -> None:
        extra_ptrs = (raw, lse, e2, sink, ek, ev, scale)
        attn_fwd_kernel[_grid(q, "BLOCK_M")](
            q,
            k,
            v,
            out,
            *(_or_q(q, x) for x in extra_ptrs),
            *_strides3(q),
            *_strides3(k),
            *_strides3(v),
            *_strides3(out),
            *_strides3(scale),
            **fwd_switches(spec, stats_only, store_raw),
            **_score_args(attn_fwd_kernel, q, spec, mode),
        )

    for mode, stats_only in fwd_passes(spec):
        launch(mode, stats_only)
    return out, raw, lse, e2


def _key_mass(q: Tensor, k: Tensor, lse: Tensor | None, spec: _Spec) -> Tensor:
    """sum_i W_ij per key j ([B, H, T] fp32), W the weights applied to v (sink / slot excluded)."""
    B, H, T, D = q.shape
    mass = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    scores = _score_args(attn_key_mass_kernel, q, spec, spec.mode)
    lse = mass if lse is None else lse  # (pointwise modes: no LSE, not read)
    attn_key_mass_kernel[_grid(q, "BLOCK_N")](
        q, k, lse, mass, *_strides3(q), *_strides3(k), **scores
    )
    return mass


def _backward(
    dy: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o_saved: Tensor,
    lse: Tensor | None,
    e2: Tensor | None,
    sink: Tensor | None,
    ek: Tensor | None,
    ev: Tensor | None,
    scale: Tensor | None,
    spec: _Spec,
    saved_raw: bool,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    """Gradients for (q, k, v, sink, ek, ev, scale), None where not needed."""
    B, H, T, D = q.shape
    dev = q.device
    f32 = {"dtype": torch.float32, "device": dev}
    dy = _lastdim_contiguous(dy)
    scale_grad = spec.scale != _NO_SCALE and needs[6]
    do = torch.empty(B, H, T, D, dtype=q.dtype, device=dev) if spec.scale != _NO_SCALE else dy
    delta = torch.empty(B, H, T, **f32) if spec.normalised else None
    n_pre = triton.cdiv(T, PRE_BLOCK_M)
    has_extra = spec.extra != _NO_EXTRA
    de = torch.empty(B, H, T, **f32) if has_extra else None
    part_ek = torch.empty(B, H, n_pre, D, **f32) if has_extra else None
    part_ev = torch.empty(B, H, n_pre, D, **f32) if has_extra else None
    dscale = torch.empty(scale.shape, **f32) if scale_grad else None
    # dQ is summed atomically over key blocks in fp32; the preprocess seeds it with de k'.
    dq_acc = (torch.empty if has_extra else torch.zeros)(B, H, T, D, **f32)

    if runs_preprocess(spec):
        attn_bwd_preprocess_kernel[(n_pre * B * H,)](
            dy,
            o_saved,
            _or_q(q, scale),
            do,
            *(_or_q(q, x) for x in (delta, lse, e2)),
            q,
            *(_or_q(q, x) for x in (ek, ev, de)),
            dq_acc,
            *(_or_q(q, x) for x in (part_ek, part_ev, dscale)),
            *_strides3(dy),
            *_strides3(o_saved),
            *_strides3(scale),
            *_strides3(do),
            *_strides3(q),
            B,
            H,
            T,
            HEAD_DIM=D,
            **pre_switches(spec, saved_raw, scale_grad),
            BLOCK_M=PRE_BLOCK_M,
        )
    qkv_strides = (*_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do))
    if spec.lse_first:  # Delta_i = sum_j P_ij dL/dP_ij needs its own pass over the keys
        scores = _score_args(attn_clip_delta_kernel, q, spec, spec.mode)
        attn_clip_delta_kernel[_grid(q, "BLOCK_M")](q, k, v, do, lse, delta, *qkv_strides, **scores)

    dq = dk = dv = None
    if any(needs[:3]):
        # One kernel gives all three (dQ comes from the same tiles as dK, dV).
        dk, dv = _empty_like_layout(k), _empty_like_layout(v)
        scores = _score_args(attn_bwd_kernel, q, spec, spec.mode)
        attn_bwd_kernel[_grid(q, "BLOCK_N")](
            q,
            k,
            v,
            do,
            _or_q(q, lse),
            _or_q(q, delta),
            dq_acc,
            dk,
            dv,
            *qkv_strides,
            *_strides3(dk),
            *_strides3(dv),
            **scores,
        )
        if needs[0]:
            dq = _empty_like_layout(q).copy_(dq_acc.mul_(spec.sm_scale))

    dsink = dek = dev_ = None
    if spec.has_sink and needs[3]:
        # dz_h = -sum_{b,i} P_sink[b,h,i] Delta[b,h,i], P_sink = exp(z_h - LSE)
        z2 = sink.float()[None, :, None] * LOG2E
        dsink = -(torch.exp2(z2 - lse) * delta).sum(dim=(0, 2)).to(sink.dtype)
    if has_extra:
        if needs[4]:
            dek = (part_ek.sum(dim=(0, 2)) * spec.sm_scale).to(ek.dtype)
        if needs[5]:
            dev_ = part_ev.sum(dim=(0, 2)).to(ev.dtype)
    dscale_out = dscale.to(scale.dtype) if scale_grad else None
    return dq, dk, dv, dsink, dek, dev_, dscale_out

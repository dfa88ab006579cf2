"""Fused causal attention for every sysout variant: one Triton kernel family, one autograd op.

``fused_attention(q, k, v, ...)`` computes, per (batch, head), with s = q k^T * sm_scale and the
causal mask (query i sees keys 0..i):

* ``mode="softmax"``: o = softmax(s) v, FlashAttention-2 style with a base-2 online softmax.
  Switches that fold into the same single pass:
    - ``sink_logit`` z_h: one more softmax column with logit z_h and value 0 (running max starts
      at z, running sum at 1); softmax1 is z = 0.
    - ``extra_key``/``extra_value`` with ``extra_slot="kv"``: one more column with logit
      e_i = q_i.k' * sm_scale and value v' (running max starts at e, sum at 1, accumulator at v').
    - ``extra_slot="context"``: o = softmax(s) v + sigmoid(e - LSE_real) v', where
      sigmoid(e - LSE_real) = softmax([e, s])[0]; added in the epilogue from the final LSE.
    - ``out_scale`` S: Y = S * O in the epilogue, per token and head ([B, H, T]) or per channel
      ([B, H, T, d]).
* ``mode="sigmoid"``: o = sigmoid(s - log T) v, no running max or sum and no LSE (one pass).
* ``clip=(zeta, gamma)``: o = clamp((zeta - gamma) softmax(s) + gamma, 0, 1) v.

Which variants take a second pass, and why:

* clipped softmax, forward: the clamp acts on *normalised* probabilities, which an online
  softmax only knows after it has seen the last key (rescaling by 2^(m_old - m_new) commutes with
  a sum but not with a clamp). Pass 1 runs the forward kernel in ``STATS_ONLY`` mode (QK^T and
  the running max/sum only, no V traffic) and stores the LSE; pass 2 recomputes QK^T, forms
  P = 2^(s2 - LSE) exactly, clamps, and accumulates P' V.
* clipped softmax, backward: Delta_i = sum_j P_ij dP_ij (dP through the clamp) is no longer
  rowsum(dO * O), so a row-wise pass over the keys (the dQ kernel in ``DELTA_ONLY`` mode)
  computes it before the usual dK/dV and dQ kernels.
* key mass (``return_key_mass``), any mode: the per-key sum over queries of the weights needs
  the final LSE of every query, so it is a separate pass with the dK/dV loop structure (one
  program per key block walking the queries, recomputing P from the stored LSE): linear memory,
  about half the FLOPs of a forward. Nothing T x T is ever stored.

Everything else (softmax, sink, softmax1, kv and context slots, headwise and per-channel output
scales, sigmoid) is a single forward pass. The backward is always the FlashAttention-2 trio:
a row-wise preprocess (dO = S dY, Delta, dS, extra-slot logit gradients), a dK/dV kernel and a
dQ kernel; see ``_backward.py`` for the formulas.

Supported combinations: softmax with any of {sink, kv slot, context slot, out_scale, clip}
except context + sink and clip + extra slot; sigmoid with out_scale only.

Autograd: the forward and backward launchers are registered as the custom ops
``sysout::fused_attention_fwd`` / ``sysout::fused_attention_bwd`` (``torch.library``) with the
backward attached by ``register_autograd``. Eagerly this is the same as a
``torch.autograd.Function``; under ``torch.compile`` attention stays one opaque op (no graph
break), and the fake implementations give its output shapes and strides. Saved for backward:
q, k, v, the output (the unscaled O instead when ``out_scale`` needs a gradient), the base-2 LSE
and, with an extra slot, its logit: O(B H T d), as for FlashAttention.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from ._backward import attn_bwd_kernel, attn_bwd_preprocess_kernel
from ._common import (
    EXTRA_CONTEXT,
    EXTRA_KV,
    EXTRA_NONE,
    LN2,
    LOG2E,
    MODE_CLIP,
    MODE_SIGMOID,
    MODE_SOFTMAX,
    PRE_BLOCK_M,
    SCALE_CHANNEL,
    SCALE_HEAD,
    SCALE_NONE,
)
from ._env import SUPPORTED_HEAD_DIMS, kernel_supported
from ._forward import attn_fwd_kernel
from ._passes import attn_clip_delta_kernel, attn_key_mass_kernel

__all__ = ["fused_attention", "kernel_supported", "SUPPORTED_HEAD_DIMS"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_SOFTMAX, _SIGMOID, _CLIP = MODE_SOFTMAX.value, MODE_SIGMOID.value, MODE_CLIP.value
_NO_EXTRA, _KV, _CONTEXT = EXTRA_NONE.value, EXTRA_KV.value, EXTRA_CONTEXT.value
_NO_SCALE, _HEAD, _CHANNEL = SCALE_NONE.value, SCALE_HEAD.value, SCALE_CHANNEL.value


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
        return self.sm_scale * LOG2E.value


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
    lse = torch.empty(B, H, T, **f32) if spec.mode != _SIGMOID else None
    e2 = torch.empty(B, H, T, **f32) if spec.extra != _NO_EXTRA else None

    def dummy(x: Tensor | None) -> Tensor:  # unused pointer arguments still need a tensor
        return q if x is None else x

    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]) * B * H,)

    def launch(mode: int, stats_only: bool) -> None:
        attn_fwd_kernel[grid](
            q,
            k,
            v,
            out,
            dummy(raw),
            dummy(lse),
            dummy(e2),
            dummy(sink),
            dummy(ek),
            dummy(ev),
            dummy(scale),
            *_strides3(q),
            *_strides3(k),
            *_strides3(v),
            *_strides3(out),
            *_strides3(scale),
            B,
            H,
            T,
            spec.qk_scale,
            math.log2(T),
            spec.clip_a,
            spec.clip_g,
            HEAD_DIM=D,
            MODE=mode,
            HAS_SINK=spec.has_sink,
            EXTRA=spec.extra,
            SCALE=spec.scale,
            STORE_RAW=store_raw,
            STATS_ONLY=stats_only,
            SCALE_POS=spec.sm_scale > 0,
            FAST_SIGMOID=_fast_sigmoid(q),
            DOT_PREC=_dot_precision(q.dtype),
        )

    if spec.mode == _CLIP:
        launch(_SOFTMAX, stats_only=True)  # pass 1: LSE only
        launch(_CLIP, stats_only=False)  # pass 2: clamp(a 2^(s2 - LSE) + g) V
    else:
        launch(spec.mode, stats_only=False)
    return out, raw, lse, e2


def _key_mass(q: Tensor, k: Tensor, lse: Tensor | None, spec: _Spec) -> Tensor:
    """sum_i W_ij per key j ([B, H, T] fp32), W the weights applied to v (sink / slot excluded)."""
    B, H, T, D = q.shape
    mass = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_N"]) * B * H,)
    attn_key_mass_kernel[grid](
        q,
        k,
        lse if lse is not None else mass,
        mass,
        *_strides3(q),
        *_strides3(k),
        B,
        H,
        T,
        spec.qk_scale,
        math.log2(T),
        spec.clip_a,
        spec.clip_g,
        HEAD_DIM=D,
        MODE=spec.mode,
        FAST_SIGMOID=_fast_sigmoid(q),
        DOT_PREC=_dot_precision(q.dtype),
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
    delta = torch.empty(B, H, T, **f32) if spec.mode != _SIGMOID else None
    n_pre = triton.cdiv(T, PRE_BLOCK_M)
    has_extra = spec.extra != _NO_EXTRA
    de = torch.empty(B, H, T, **f32) if has_extra else None
    part_ek = torch.empty(B, H, n_pre, D, **f32) if has_extra else None
    part_ev = torch.empty(B, H, n_pre, D, **f32) if has_extra else None
    dscale = torch.empty(scale.shape, **f32) if scale_grad else None
    # dQ is summed atomically over key blocks in fp32; the preprocess seeds it with de k'.
    dq_acc = (torch.empty if has_extra else torch.zeros)(B, H, T, D, **f32)
    prec = _dot_precision(q.dtype)

    def dummy(x: Tensor | None) -> Tensor:
        return q if x is None else x

    if spec.mode != _SIGMOID or spec.scale != _NO_SCALE:
        attn_bwd_preprocess_kernel[(n_pre * B * H,)](
            dy,
            o_saved,
            dummy(scale),
            do,
            dummy(delta),
            dummy(lse),
            dummy(e2),
            q,
            dummy(ek),
            dummy(ev),
            dummy(de),
            dq_acc,
            dummy(part_ek),
            dummy(part_ev),
            dummy(dscale),
            *_strides3(dy),
            *_strides3(o_saved),
            *_strides3(scale),
            *_strides3(do),
            *_strides3(q),
            B,
            H,
            T,
            HEAD_DIM=D,
            MODE=spec.mode,
            EXTRA=spec.extra,
            SCALE=spec.scale,
            SAVED_RAW=saved_raw,
            SCALE_GRAD=scale_grad,
            BLOCK_M=PRE_BLOCK_M,
        )
    if spec.mode == _CLIP:  # Delta_i = sum_j P_ij dP_ij needs its own pass over the keys
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]) * B * H,)
        attn_clip_delta_kernel[grid](
            q,
            k,
            v,
            do,
            lse,
            delta,
            *_strides3(q),
            *_strides3(k),
            *_strides3(v),
            *_strides3(do),
            B,
            H,
            T,
            spec.qk_scale,
            spec.clip_a,
            spec.clip_g,
            HEAD_DIM=D,
            DOT_PREC=prec,
        )

    dq = dk = dv = None
    if any(needs[:3]):
        # One kernel gives all three (dQ comes from the same tiles as dK, dV).
        dk, dv = _empty_like_layout(k), _empty_like_layout(v)
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_N"]) * B * H,)
        attn_bwd_kernel[grid](
            q,
            k,
            v,
            do,
            dummy(lse),
            dummy(delta),
            dq_acc,
            dk,
            dv,
            *_strides3(q),
            *_strides3(k),
            *_strides3(v),
            *_strides3(do),
            *_strides3(dk),
            *_strides3(dv),
            B,
            H,
            T,
            spec.qk_scale,
            spec.sm_scale,
            math.log2(T),
            spec.clip_a,
            spec.clip_g,
            HEAD_DIM=D,
            MODE=spec.mode,
            FAST_SIGMOID=_fast_sigmoid(q),
            DOT_PREC=prec,
        )
        if needs[0]:
            dq = _empty_like_layout(q).copy_(dq_acc.mul_(spec.sm_scale))

    dsink = dek = dev_ = None
    if spec.has_sink and needs[3]:
        # dz_h = -sum_{b,i} P_sink[b,h,i] Delta[b,h,i], P_sink = exp(z_h - LSE)
        z2 = sink.float()[None, :, None] * LOG2E.value
        dsink = -(torch.exp2(z2 - lse) * delta).sum(dim=(0, 2)).to(sink.dtype)
    if has_extra:
        if needs[4]:
            dek = (part_ek.sum(dim=(0, 2)) * spec.sm_scale).to(ek.dtype)
        if needs[5]:
            dev_ = part_ev.sum(dim=(0, 2)).to(ev.dtype)
    dscale_out = dscale.to(scale.dtype) if scale_grad else None
    return dq, dk, dv, dsink, dek, dev_, dscale_out


# The kernels are registered as two custom ops (forward, backward) with autograd attached, so
# that torch.compile treats attention as one opaque op (no graph break) and still traces the
# rest of the model. The scalar arguments are the fields of _Spec.
_SPEC_ARGS = (
    "int mode, int extra, int scale_kind, bool has_sink, float sm_scale, float clip_a, "
    "float clip_g, bool return_mass"
)
_TENSOR_ARGS = "Tensor? sink, Tensor? extra_key, Tensor? extra_value, Tensor? out_scale"


def _spec(mode, extra, scale_kind, has_sink, sm_scale, clip_a, clip_g, return_mass) -> _Spec:
    return _Spec(mode, extra, scale_kind, has_sink, sm_scale, clip_a, clip_g, return_mass)


def _on_device(t: Tensor):
    """Triton launches on the current CUDA device: make it the tensors' (e.g. cuda:1)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@torch.library.custom_op(
    "sysout::fused_attention_fwd",
    mutates_args=(),
    schema=f"(Tensor q, Tensor k, Tensor v, {_TENSOR_ARGS}, {_SPEC_ARGS}, bool store_raw)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _fwd_op(q, k, v, sink, ek, ev, scale, *spec_and_store):
    """(Y, O or empty, LSE2 or empty, E2 or empty, key mass or empty)."""
    *spec_args, store_raw = spec_and_store
    spec = _spec(*spec_args)
    with _on_device(q):
        out, raw, lse, e2 = _forward(q, k, v, sink, ek, ev, scale, spec, store_raw)
        mass = _key_mass(q, k, lse, spec) if spec.return_mass else None
    none = lambda: q.new_empty(0, dtype=torch.float32)  # outputs must be fresh tensors
    return (
        out,
        raw if raw is not None else q.new_empty(0),
        lse if lse is not None else none(),
        e2 if e2 is not None else none(),
        mass if mass is not None else none(),
    )


@_fwd_op.register_fake
def _fwd_fake(q, k, v, sink, ek, ev, scale, *spec_and_store):
    *spec_args, store_raw = spec_and_store
    spec = _spec(*spec_args)
    B, H, T, _ = q.shape
    f32 = lambda *shape: q.new_empty(*shape, dtype=torch.float32)
    return (
        _empty_like_layout(q),
        _empty_like_layout(q) if store_raw else q.new_empty(0),
        f32(B, H, T) if spec.mode != _SIGMOID else f32(0),
        f32(B, H, T) if spec.extra != _NO_EXTRA else f32(0),
        f32(B, H, T) if spec.return_mass else f32(0),
    )


@torch.library.custom_op(
    "sysout::fused_attention_bwd",
    mutates_args=(),
    schema=f"(Tensor dy, Tensor q, Tensor k, Tensor v, Tensor o_saved, Tensor lse, Tensor e2, "
    f"{_TENSOR_ARGS}, {_SPEC_ARGS}, bool saved_raw, bool[] needs)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _bwd_op(dy, q, k, v, o_saved, lse, e2, sink, ek, ev, scale, *rest):
    """Gradients of (q, k, v, sink, extra_key, extra_value, out_scale); empty where not needed."""
    *spec_args, saved_raw, needs = rest
    spec = _spec(*spec_args)
    with _on_device(q):
        grads = _backward(
            dy,
            q,
            k,
            v,
            o_saved,
            lse if lse.numel() else None,
            e2 if e2.numel() else None,
            sink,
            ek,
            ev,
            scale,
            spec,
            saved_raw,
            tuple(needs),
        )
    return tuple(g if g is not None else q.new_empty(0) for g in grads)


@_bwd_op.register_fake
def _bwd_fake(dy, q, k, v, o_saved, lse, e2, sink, ek, ev, scale, *rest):
    needs = rest[-1]
    grads = []
    for i, x in enumerate((q, k, v, sink, ek, ev, scale)):
        if not needs[i] or x is None:
            grads.append(q.new_empty(0))
        elif i < 3:
            grads.append(_empty_like_layout(x))
        else:
            grads.append(x.new_empty(x.shape))
    return tuple(grads)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, sink, ek, ev, scale, *spec_args, store_raw = inputs
    out, raw, lse, e2, _ = output
    ctx.save_for_backward(q, k, v, raw if store_raw else out, lse, e2, sink, ek, ev, scale)
    ctx.spec_args, ctx.store_raw = spec_args, store_raw


def _autograd_backward(ctx, dy, *_unused):
    q, k, v, o_saved, lse, e2, sink, ek, ev, scale = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:7]]
    grads = torch.ops.sysout.fused_attention_bwd(
        dy, q, k, v, o_saved, lse, e2, sink, ek, ev, scale, *ctx.spec_args, ctx.store_raw, needs
    )
    grads = [g if n else None for g, n in zip(grads, needs)]
    return (*grads, *([None] * (len(ctx.spec_args) + 1)))


_fwd_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mode: str = "softmax",
    sink_logit: Tensor | None = None,
    extra_key: Tensor | None = None,
    extra_value: Tensor | None = None,
    extra_slot: str = "kv",
    out_scale: Tensor | None = None,
    clip: tuple[float, float] | None = None,
    sm_scale: float | None = None,
    return_lse: bool = False,
    return_key_mass: bool = False,
) -> Tensor | tuple[Tensor | None, ...]:
    """Causal fused attention over q, k, v of shape [B, H, T, d] (see the module docstring).

    Args:
        mode: ``"softmax"`` or ``"sigmoid"`` (p = sigmoid(s - log T), no normalisation).
        sink_logit: [H] logit z_h of a value-less sink slot in the softmax denominator.
        extra_key, extra_value: [H, d] k', v' of an extra slot every query sees.
        extra_slot: ``"kv"`` (one more softmax column) or ``"context"`` (softmax over the real
            keys plus softmax([e, s])[0] v').
        out_scale: [B, H, T] or [B, H, T, d]; the output is out_scale * O.
        clip: (zeta, gamma) of the clipped softmax clamp((zeta - gamma) P + gamma, 0, 1);
            masked (future) entries stay 0.
        sm_scale: score scale, default 1/sqrt(d).
        return_lse: also return the natural-log LSE per query [B, H, T] (fp32) including the
            sink / extra slot (None for sigmoid). Not differentiable.
        return_key_mass: also return sum_i W_ij per key [B, H, T] (fp32), W the weights applied
            to the real values (before out_scale). Not differentiable.

    Returns:
        o [B, H, T, d] in the input dtype, or (o, lse?, key_mass?) when either is requested.
        o keeps q's memory layout when q is token-major (a view of [B, T, H, d]).
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be [B, H, T, d]; got {q.shape}, {k.shape}, {v.shape}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        got = (q.dtype, k.dtype, v.dtype)
        raise ValueError(f"q, k, v must share a dtype in {_DTYPES}; got {got}")
    B, H, T, D = q.shape
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {D} not supported (use one of {SUPPORTED_HEAD_DIMS})")
    if mode not in ("softmax", "sigmoid"):
        raise ValueError(f"mode must be 'softmax' or 'sigmoid', got {mode!r}")
    if extra_slot not in ("kv", "context"):
        raise ValueError(f"extra_slot must be 'kv' or 'context', got {extra_slot!r}")
    if (extra_key is None) != (extra_value is None):
        raise ValueError("extra_key and extra_value go together")
    has_extra = extra_key is not None
    if mode == "sigmoid" and (sink_logit is not None or has_extra or clip is not None):
        raise ValueError("sigmoid attention takes no sink, extra slot or clip (only out_scale)")
    if clip is not None and has_extra:
        raise NotImplementedError("clipped softmax with an extra key/value slot")
    if sink_logit is not None and has_extra and extra_slot == "context":
        raise NotImplementedError("context extra slot with a sink logit")
    if sink_logit is not None and sink_logit.shape != (H,):
        raise ValueError(f"sink_logit must be [H] = [{H}], got {tuple(sink_logit.shape)}")
    if has_extra and (extra_key.shape != (H, D) or extra_value.shape != (H, D)):
        raise ValueError(f"extra_key/extra_value must be [H, d] = [{H}, {D}]")
    scale_kind = _NO_SCALE
    if out_scale is not None:
        if out_scale.shape == (B, H, T):
            scale_kind = _HEAD
        elif out_scale.shape == (B, H, T, D):
            scale_kind = _CHANNEL
            out_scale = _lastdim_contiguous(out_scale)
        else:
            raise ValueError(f"out_scale must be [B, H, T] or [B, H, T, d], got {out_scale.shape}")

    if not kernel_supported(q):
        raise RuntimeError(
            "fused_attention needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
            "triton is first imported; use kernel_supported(q) to choose a fallback"
        )

    mode_id = _SIGMOID if mode == "sigmoid" else _CLIP if clip is not None else _SOFTMAX
    zeta, gamma = clip if clip is not None else (1.0, 0.0)
    spec = _Spec(
        mode=mode_id,
        extra=(_KV if extra_slot == "kv" else _CONTEXT) if has_extra else _NO_EXTRA,
        scale=scale_kind,
        has_sink=sink_logit is not None,
        sm_scale=float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(D),
        clip_a=float(zeta - gamma),
        clip_g=float(gamma),
        return_mass=return_key_mass,
    )
    contig = lambda x: x.contiguous() if x is not None else None  # [H] / [H, d]: tiny
    # dScale needs the unscaled output O; otherwise Y alone is enough (Delta = rowsum(dY * Y)).
    store_raw = out_scale is not None and out_scale.requires_grad and torch.is_grad_enabled()
    o, _, lse2, e2, mass = torch.ops.sysout.fused_attention_fwd(
        _lastdim_contiguous(q),
        _lastdim_contiguous(k),
        _lastdim_contiguous(v),
        contig(sink_logit),
        contig(extra_key),
        contig(extra_value),
        out_scale,
        spec.mode,
        spec.extra,
        spec.scale,
        spec.has_sink,
        spec.sm_scale,
        spec.clip_a,
        spec.clip_g,
        spec.return_mass,
        store_raw,
    )
    # LSE and key mass are statistics: detached, so that nobody backpropagates into them.
    lse = None
    if return_lse and mode_id != _SIGMOID:
        # base 2 -> natural log; the context slot reports the LSE over [e, s], like the kv slot
        lse = torch.logaddexp2(lse2, e2) if spec.extra == _CONTEXT else lse2
        lse = (lse * LN2).detach()
    if not (return_lse or return_key_mass):
        return o
    result: list[Tensor | None] = [o]
    if return_lse:
        result.append(lse)
    if return_key_mass:
        result.append(mass.detach())
    return tuple(result)

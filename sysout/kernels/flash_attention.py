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
* a pointwise ``mode`` (``"sigmoid"``: o = sigmoid(s - log T) v; every mode's formula is in
  ``_modes.py``): W_ij = f(s_ij), no running max or sum and no LSE (one pass).
* ``clip=(zeta, gamma)``: o = clamp((zeta - gamma) softmax(s) + gamma, 0, 1) v.

Which variants take a second pass, and why:

* clipped softmax, forward: the clamp acts on *normalised* probabilities, which an online
  softmax only knows after it has seen the last key (rescaling by 2^(m_old - m_new) commutes with
  a sum but not with a clamp). Pass 1 runs the forward kernel in ``STATS_ONLY`` mode (QK^T and
  the running max/sum only, no V traffic) and stores the LSE; pass 2 recomputes QK^T, forms
  P = 2^(s2 - LSE) exactly, clamps, and accumulates P' V.
* clipped softmax, backward: Delta_i = sum_j P_ij dP_ij (dP through the clamp) is no longer
  rowsum(dO * O), so a row-wise pass over the keys (``attn_clip_delta_kernel``) computes it
  before the usual backward.
* key mass (``return_key_mass``), any mode: the per-key sum over queries of the weights needs
  the final LSE of every query, so it is a separate pass with the dK/dV loop structure (one
  program per key block walking the queries, recomputing P from the stored LSE): linear memory,
  about half the FLOPs of a forward. Nothing T x T is ever stored.

Everything else (softmax, sink, softmax1, kv and context slots, headwise and per-channel output
scales, pointwise modes) is a single forward pass. The backward is FlashAttention-2's: a row-wise
preprocess (dO = S dY, Delta, dS, extra-slot logit gradients), then one kernel per key block
that gives dK, dV and, added atomically, dQ (five matmuls per tile); see ``_backward.py`` for
the formulas and ``_launch.py`` for the launches.

Supported combinations: softmax with any of {sink, kv slot, context slot, out_scale, clip}
except context + sink and clip + extra slot; pointwise modes with out_scale only.

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

import torch
from torch import Tensor

from . import _modes
from ._common import LN2
from ._env import SUPPORTED_HEAD_DIMS, kernel_supported
from ._launch import (
    _CHANNEL,
    _CONTEXT,
    _HEAD,
    _KV,
    _NO_EXTRA,
    _NO_SCALE,
    _backward,
    _empty_like_layout,
    _forward,
    _key_mass,
    _lastdim_contiguous,
    _Spec,
)

__all__ = ["fused_attention", "kernel_spec", "kernel_supported", "SUPPORTED_HEAD_DIMS"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

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
        f32(B, H, T) if spec.normalised else f32(0),
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
        mode: ``"softmax"`` or a pointwise mode of ``_modes.MODES`` (``"sigmoid"``:
            p = sigmoid(s - log T), no normalisation); pointwise modes take only out_scale.
        sink_logit: [H] logit z_h of a value-less sink slot in the softmax denominator.
        extra_key, extra_value: [H, d] k', v' of an extra slot every query sees.
        extra_slot: ``"kv"`` (one more softmax column) or ``"context"`` (softmax over the real
            keys plus softmax([e, s])[0] v').
        out_scale: [B, H, T] or [B, H, T, d]; the output is out_scale * O.
        clip: (zeta, gamma) of the clipped softmax clamp((zeta - gamma) P + gamma, 0, 1);
            masked (future) entries stay 0.
        sm_scale: score scale, default 1/sqrt(d).
        return_lse: also return the natural-log LSE per query [B, H, T] (fp32) including the
            sink / extra slot (None for pointwise modes). Not differentiable.
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
    spec = kernel_spec(
        tuple(q.shape),
        mode=mode,
        sink_logit=sink_logit,
        extra_key=extra_key,
        extra_value=extra_value,
        extra_slot=extra_slot,
        out_scale=out_scale,
        clip=clip,
        sm_scale=sm_scale,
        return_key_mass=return_key_mass,
    )
    if spec.scale == _CHANNEL:
        out_scale = _lastdim_contiguous(out_scale)
    if not kernel_supported(q):
        raise RuntimeError(
            "fused_attention needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
            "triton is first imported; use kernel_supported(q) to choose a fallback"
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
    if return_lse and spec.normalised:
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


def kernel_spec(
    shape: tuple[int, int, int, int],
    *,
    mode: str = "softmax",
    sink_logit: Tensor | None = None,
    extra_key: Tensor | None = None,
    extra_value: Tensor | None = None,
    extra_slot: str = "kv",
    out_scale: Tensor | None = None,
    clip: tuple[float, float] | None = None,
    sm_scale: float | None = None,
    return_key_mass: bool = False,
) -> _Spec:
    """The kernels' switches and scalars for ``fused_attention``'s arguments on q, k, v of this
    [B, H, T, d] shape; unsupported combinations fail here (also what the compile plan of
    ``bench/kernel_compile.py`` reads, from each registered variant's ``kernel_arguments``)."""
    B, H, T, D = shape
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {D} not supported (use one of {SUPPORTED_HEAD_DIMS})")
    if mode not in _modes.CALLER_MODES:
        raise ValueError(f"mode must be one of {_modes.CALLER_MODES}, got {mode!r}")
    if extra_slot not in ("kv", "context"):
        raise ValueError(f"extra_slot must be 'kv' or 'context', got {extra_slot!r}")
    if (extra_key is None) != (extra_value is None):
        raise ValueError("extra_key and extra_value go together")
    has_extra = extra_key is not None
    if not _modes.MODES[mode].normalised and (
        sink_logit is not None or has_extra or clip is not None
    ):
        raise ValueError(f"{mode} attention takes no sink, extra slot or clip (only out_scale)")
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
        else:
            raise ValueError(f"out_scale must be [B, H, T] or [B, H, T, d], got {out_scale.shape}")
    zeta, gamma = clip if clip is not None else (1.0, 0.0)
    return _Spec(
        mode=_modes.MODES["clip" if clip is not None else mode].id,
        extra=(_KV if extra_slot == "kv" else _CONTEXT) if has_extra else _NO_EXTRA,
        scale=scale_kind,
        has_sink=sink_logit is not None,
        sm_scale=float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(D),
        clip_a=float(zeta - gamma),
        clip_g=float(gamma),
        return_mass=return_key_mass,
    )

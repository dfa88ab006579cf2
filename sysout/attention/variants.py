"""The attention formulations of SPEC section 3, one small class each.

Notation: per head, s = q k^T / sqrt(d) with a causal mask; o is the per-head output before the
output projection. Learned per-head vectors are initialised N(0, 0.02), as in the official model
files. Weight decay follows the official code under nanoGPT's rule (decay every parameter with
dim >= 2): its k' and v' of ``kv_bias``/``context_bias`` are 4-D [1, H, 1, d] and so decayed
(``decay_bias: false`` exempts them), its value bias of ``value_bias`` is a [C] vector and so
not decayed.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sysout.attention.base import (
    AttentionVariant,
    VariantTraits,
    causal_mask,
    causal_scores,
    register_variant,
    upcast,
)

_log = logging.getLogger(__name__)


def _head_vectors(n_head: int, head_dim: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(n_head, head_dim).normal_(0.0, 0.02))


def _sdpa_with_leading_slot(
    q: Tensor, k: Tensor, v: Tensor, slot_key: Tensor, slot_value: Tensor, slot_logit: Tensor | None
) -> Tensor:
    """softmax([slot score, s]) [slot_value; v] with one extra key every query sees, via SDPA.

    slot_key/slot_value are [H, d]; slot_logit [H] is added to the slot's score (the sink trick:
    a zero key with additive logit z_h has score exactly z_h).
    """
    b, h, t, d = q.shape
    k_all = torch.cat([slot_key.to(k.dtype)[None, :, None, :].expand(b, h, 1, d), k], dim=2)
    v_all = torch.cat([slot_value.to(v.dtype)[None, :, None, :].expand(b, h, 1, d), v], dim=2)
    visible = torch.cat(
        [torch.ones(t, 1, dtype=torch.bool, device=q.device), causal_mask(t, t, q.device)], dim=1
    )
    if slot_logit is None:
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=visible)
    bias = torch.zeros(h, t, t + 1, dtype=q.dtype, device=q.device)
    bias[:, :, 0] = slot_logit.to(q.dtype)[:, None]
    bias = bias.masked_fill(~visible, float("-inf"))
    return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias[None])


def _softmax_with_leading_logit(s: Tensor, slot: Tensor) -> Tensor:
    """Weights of the real keys when a slot logit [B or 1, H, T, 1] joins the softmax."""
    return torch.softmax(torch.cat([slot, s], dim=-1), dim=-1)[..., 1:]


def _per_head(scale: Tensor, n_head: int) -> Tensor:
    """[B, T, H] or [B, T, C] -> [B, H, T, 1] or [B, H, T, d] to multiply o."""
    b, t, width = scale.shape
    if width == n_head:
        return scale.transpose(1, 2).unsqueeze(-1)
    return scale.view(b, t, n_head, width // n_head).transpose(1, 2)


@register_variant
class Softmax(AttentionVariant):
    """(a) o = softmax(s) v."""

    name = "softmax"
    traits = VariantTraits(normalised=True, fused=True)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        return torch.softmax(causal_scores(q, k), dim=-1)

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        return {}  # the kernel's default: plain softmax


@register_variant
class ValueBias(Softmax):
    """(b) o = softmax(s) v + v', one learned v' per head (added after the kernel).

    The official model file adds a [C] vector to the [.., d] head outputs (it cannot run as
    written: SPEC 3) and initialises it to zeros; here v' is per head, N(0, 0.02), not decayed
    (as the official [C] vector is not, being 1-D).
    """

    name = "value_bias"

    def __init__(self, n_head: int, n_embd: int, impl: str = "auto") -> None:
        super().__init__(n_head, n_embd, impl)
        self.value_bias = _head_vectors(n_head, self.head_dim)

    def no_weight_decay(self) -> set[str]:
        return {"value_bias"}

    def finish_output(self, o: Tensor, x: Tensor) -> Tensor:
        return o + self.value_bias.to(o.dtype)[None, :, None, :]

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return self.finish_output(super().reference(q, k, v, x), x)


@register_variant
class KVBias(AttentionVariant):
    """(d) o = softmax([q k'^T / sqrt(d), s]) [v'; v]: an extra key/value slot every query sees."""

    name = "kv_bias"
    traits = VariantTraits(normalised=True, has_slot=True, fused=True)

    def __init__(
        self, n_head: int, n_embd: int, impl: str = "auto", decay_bias: bool = True
    ) -> None:
        super().__init__(n_head, n_embd, impl)
        if not isinstance(decay_bias, bool):
            raise ValueError(f"attention.options.decay_bias must be true or false: {decay_bias!r}")
        # Decayed by default, as the official 4-D k', v' are under nanoGPT's dim >= 2 rule.
        self.decay_bias = decay_bias
        self.key_bias = _head_vectors(n_head, self.head_dim)
        self.value_bias = _head_vectors(n_head, self.head_dim)

    def no_weight_decay(self) -> set[str]:
        return set() if self.decay_bias else {"key_bias", "value_bias"}

    def options(self) -> dict[str, Any]:
        return {"decay_bias": self.decay_bias}

    def slot_scores(self, q: Tensor) -> Tensor:
        """q . k' / sqrt(d) as [B, H, T, 1] in at least float32."""
        return torch.einsum("bhtd,hd->bht", upcast(q), upcast(self.key_bias))[..., None] / (
            math.sqrt(self.head_dim)
        )

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return _sdpa_with_leading_slot(q, k, v, self.key_bias, self.value_bias, None)

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        return _softmax_with_leading_logit(causal_scores(q, k), self.slot_scores(q))

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        return {"extra_key": self.key_bias, "extra_value": self.value_bias, "extra_slot": "kv"}


@register_variant
class ContextBias(KVBias):
    """(c) o = softmax(s) v + softmax([q k'^T / sqrt(d), s])[:, 0] v'.

    The bias v' enters in proportion to how much the query would attend to a key k': a
    context-aware bias that leaves the weights of the real values a plain softmax.
    """

    name = "context_bias"
    # v' enters beside the real values, whose weights stay a softmax: no place to park.
    traits = VariantTraits(normalised=True, fused=True)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # The slot with values [v'; 0] contributes exactly p0 v'.
        bias = _sdpa_with_leading_slot(
            q, k, torch.zeros_like(v), self.key_bias, self.value_bias, None
        )
        return plain + bias

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        return torch.softmax(causal_scores(q, k), dim=-1)

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        return {"extra_key": self.key_bias, "extra_value": self.value_bias, "extra_slot": "context"}


@register_variant
class SinkLogit(AttentionVariant):
    """gpt-oss sinks: o = sum_j exp(s_j) v_j / (exp(z_h) + sum_j exp(s_j)), z_h learned per head."""

    name = "sink_logit"
    traits = VariantTraits(normalised=True, has_slot=True, fused=True)

    def __init__(self, n_head: int, n_embd: int, impl: str = "auto") -> None:
        super().__init__(n_head, n_embd, impl)
        self.sink_logit = nn.Parameter(torch.zeros(n_head))

    def sink(self) -> Tensor:
        return self.sink_logit

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        zero = torch.zeros(self.n_head, self.head_dim, dtype=q.dtype, device=q.device)
        return _sdpa_with_leading_slot(q, k, v, zero, zero, self.sink())

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        s = causal_scores(q, k)
        slot = upcast(self.sink())[None, :, None, None].expand(*s.shape[:-1], 1)
        return _softmax_with_leading_logit(s, slot)

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        return {"sink_logit": self.sink()}


@register_variant
class Softmax1(SinkLogit):
    """Off-by-one softmax: the sink logit fixed at 0, i.e. exp(s_j) / (1 + sum_j exp(s_j))."""

    name = "softmax1"

    def __init__(self, n_head: int, n_embd: int, impl: str = "auto") -> None:
        AttentionVariant.__init__(self, n_head, n_embd, impl)
        self.register_buffer("zero_logit", torch.zeros(n_head), persistent=False)

    def sink(self) -> Tensor:
        return self.zero_logit


@register_variant
class Sigmoid(AttentionVariant):
    """(f) o = sigmoid(s - log T) v with T the number of keys; no normalisation."""

    name = "sigmoid"
    traits = VariantTraits(normalised=False, fused=True)

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        s = causal_scores(q, k)
        return torch.sigmoid(s - math.log(k.shape[-2]))  # sigmoid(-inf) = 0 on masked keys

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return torch.matmul(self.attention_weights(q, k, x), upcast(v)).to(v.dtype)

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        return {"mode": "sigmoid"}


@register_variant
class ReLU(AttentionVariant):
    """ReLU attention (Guo et al. 2024, the mitigation they name for attention sinks and massive
    activations): o_i = sum_{j <= i} relu(s_ij) v_j / (i + 1), no normalisation.

    The divisor is Guo et al.'s code's, not the paper's 1/T: their ``Attention.forward`` with
    ``attn_use_relu`` (Active-Dormant-Attention, BBM/model.py) divides the ReLU scores by
    arange(1, T + 1) along the query axis, i.e. by the number of keys query i sees.
    """

    name = "relu"
    traits = VariantTraits(normalised=False, fused=True)

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        s = causal_scores(q, k)  # relu(-inf) = 0 on masked keys
        t_q, t_k = q.shape[-2], k.shape[-2]
        seen = torch.arange(t_k - t_q + 1, t_k + 1, device=q.device, dtype=s.dtype)
        return torch.relu(s) / seen[:, None]  # query i sees keys 0 .. i (aligned at the end)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return torch.matmul(self.attention_weights(q, k, x), upcast(v)).to(v.dtype)

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        return {"mode": "relu"}


@register_variant
class ClippedSoftmax(AttentionVariant):
    """Bondarenko et al. 2023: P' = clip((zeta - gamma) softmax(s) + gamma, 0, 1), gamma = -alpha/T.

    Lets a head output exact zeros without pushing logits to infinity. T is the training length
    (the model's block size), fixed, as in the official code: a short probe sentence sees the
    same gamma as the windows the model was trained on. Defaults zeta = 1, alpha = 12: the
    anchor's OPT-125m script (outlier-free-transformers, ``--alpha 12``, gamma = -alpha / T
    with T its block size, zeta = 1); its BERT script fixes gamma = -0.025 instead.
    """

    name = "clipped_softmax"
    traits = VariantTraits(normalised=False, fused=True, uses_block_size=True)

    def __init__(
        self,
        n_head: int,
        n_embd: int,
        impl: str = "auto",
        zeta: float = 1.0,
        alpha: float = 12.0,
        block_size: int | None = None,
    ) -> None:
        super().__init__(n_head, n_embd, impl)
        if zeta < 1.0 or alpha < 0.0:
            raise ValueError(f"clipped_softmax needs zeta >= 1 and alpha >= 0, got {zeta}, {alpha}")
        if block_size is not None and block_size <= 0:
            raise ValueError(f"clipped_softmax needs a positive block_size, got {block_size}")
        self.zeta = zeta
        self.alpha = alpha
        self.block_size = block_size

    def gamma(self, n_keys: int) -> float:
        """-alpha / T with T the block size (the key count only when none was configured)."""
        return -self.alpha / (self.block_size or n_keys)

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        p = torch.softmax(causal_scores(q, k), dim=-1)
        gamma = self.gamma(k.shape[-2])
        # Masked keys have p = 0 and gamma <= 0, so they clip to exactly 0.
        return torch.clamp((self.zeta - gamma) * p + gamma, 0.0, 1.0)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return torch.matmul(self.attention_weights(q, k, x), upcast(v)).to(v.dtype)

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        return {"clip": (self.zeta, self.gamma(x.shape[1]))}

    def options(self) -> dict[str, Any]:
        return {"zeta": self.zeta, "alpha": self.alpha, "block_size": self.block_size}


class _OutputScaled(AttentionVariant):
    """o = scale(x) * softmax(s) v, with the scale computed from the block input x."""

    traits = VariantTraits(normalised=True, fused=True)

    def scale(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return o * _per_head(self.scale(x), self.n_head).to(o.dtype)

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        return torch.softmax(causal_scores(q, k), dim=-1)

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        scale = _per_head(self.scale(x), self.n_head)
        return {"out_scale": scale.squeeze(-1) if scale.shape[-1] == 1 else scale}


@register_variant
class CAScaling(_OutputScaled):
    """(e) Context-aware scaling: o = S(x) softmax(s) v, S(x) = 2 sigmoid(x W_s + b_s) per head.

    The explicit form of the implicit scaling factor that massive activations provide; S = 1 at
    b_s = 0 and x W_s = 0.
    """

    name = "ca_scaling"

    def __init__(self, n_head: int, n_embd: int, impl: str = "auto") -> None:
        super().__init__(n_head, n_embd, impl)
        self.scale_proj = nn.Linear(n_embd, n_head, bias=True)

    def scale(self, x: Tensor) -> Tensor:
        return 2.0 * torch.sigmoid(self.scale_proj(x))


@register_variant
class Gated(_OutputScaled):
    """Gated attention: o = gate(x) * softmax(s) v with x the attention block's input.

    ``gate``:
    - ``elementwise`` (Qwen 2025: sigmoid(x W_g), W_g: C -> C, one gate per channel) or
      ``headwise`` (W_g: C -> H, one gate per head). W_g is an ``nn.Linear`` and starts as the
      model's ``init`` says (N(0, 0.02) under gpt2, PyTorch's default under torch_default).
    - ``conditional_per_token`` (Bondarenko et al. 2023, the gate of their OPT and BERT
      scripts): per head h a Linear(d -> 1) on that head's slice x_h of the input, one gate per
      token and head, sigmoid(x_h w_h + b_h), b_h = logit(0.25) so every gate starts at 0.25
      (their OPT scripts' ``--attn_gate_init 0.25``). ``gate_init`` sets w_h: ``normal``
      (N(0, 0.02), sysout's default) or ``torch_default`` (PyTorch's Linear init,
      U(-1/sqrt(d), 1/sqrt(d)), as in their code).
    - ``conditional_per_head``: a deprecated alias of ``conditional_per_token``, the name
      sysout used for it before. Bondarenko et al.'s own ``conditional_per_head`` mean-pools the
      gate logit over the whole sequence: token i's gate would read tokens after i, which a
      causal language model cannot do, so sysout does not offer it.
    """

    name = "gated"
    GATES = ("elementwise", "headwise", "conditional_per_token")
    GATE_INITS = ("normal", "torch_default")
    _ALIASES = {"conditional_per_head": "conditional_per_token"}

    def __init__(
        self,
        n_head: int,
        n_embd: int,
        impl: str = "auto",
        gate: str = "elementwise",
        gate_init: str = "normal",
    ) -> None:
        super().__init__(n_head, n_embd, impl)
        if gate in self._ALIASES:
            message = (
                f"gated attention: gate={gate!r} is deprecated; use gate="
                f"{self._ALIASES[gate]!r}, the same per-token gate under Bondarenko et al.'s "
                f"name. (Their own {gate!r} mean-pools the gate over the whole sequence, which "
                "a causal language model cannot use, so sysout does not offer it.)"
            )
            _log.warning(message)  # (Python hides DeprecationWarnings outside __main__)
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            gate = self._ALIASES[gate]
        if gate not in self.GATES:
            raise ValueError(f"gated attention: gate must be one of {self.GATES}, got {gate!r}")
        if gate_init not in self.GATE_INITS:
            raise ValueError(
                f"gated attention: gate_init must be one of {self.GATE_INITS}, got {gate_init!r}"
            )
        if gate_init != "normal" and gate != "conditional_per_token":
            raise ValueError(
                "gated attention: gate_init applies to the conditional_per_token gate; the "
                f"{gate} gate is an nn.Linear that starts as model.init says"
            )
        self.gate = gate
        self.gate_init = gate_init
        if gate == "conditional_per_token":
            self.gate_weight = nn.Parameter(torch.empty(n_head, self.head_dim))
            self.gate_bias = nn.Parameter(torch.full((n_head,), math.log(0.25 / 0.75)))
            if gate_init == "normal":
                nn.init.normal_(self.gate_weight, 0.0, 0.02)
            else:  # nn.Linear(d, 1)'s own init, one row per head: U(-1/sqrt(d), 1/sqrt(d))
                bound = 1.0 / math.sqrt(self.head_dim)
                nn.init.uniform_(self.gate_weight, -bound, bound)
        else:
            width = n_embd if gate == "elementwise" else n_head
            self.gate_proj = nn.Linear(n_embd, width, bias=False)

    def scale(self, x: Tensor) -> Tensor:
        if self.gate == "conditional_per_token":
            b, t, _ = x.shape
            slices = x.view(b, t, self.n_head, self.head_dim)
            logits = torch.einsum("bthd,hd->bth", slices, self.gate_weight.to(x.dtype))
            return torch.sigmoid(logits + self.gate_bias.to(x.dtype))  # [B, T, H]
        return torch.sigmoid(self.gate_proj(x))

    def options(self) -> dict[str, Any]:
        return {"gate": self.gate, "gate_init": self.gate_init}

"""The probe's hooks: turn each layer's tensors into statistics as soon as they exist.

Everything a hook needs to know about the model comes from its adapter
(:mod:`sysout.adapters`): the blocks and their parts, the norms, and the attention capture
(a sysout variant's own key mass, or a pretrained model's eager weights), so the same hooks
probe sysout's GPT and pretrained models. No activation tensor outlives its layer, except in
the probe-sentence pass, which keeps its block outputs and head-mean weights (T is small).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sysout.adapters import (
    AttentionCapture,
    ModelAdapter,
    first_tensor,
    hidden_states_argument,
    linear_weight,
)

from .activations import ActivationOutlierStats, activation_outliers
from .attention import AttentionOutlierStats, attention_outliers
from .channels import ChannelOutlierStats, channel_outliers
from .heads import HeadStats, head_statistics
from .moments import MomentStats, moment_stats
from .residual import ResidualPeakStats, first_query_stats, residual_peak, value_out_stats
from .rules import OutlierThresholds


@dataclass
class ProbePass:
    """What the hooks of one forward pass collect (statistics; tensors only for the sentence)."""

    keep_tensors: bool  # the sentence pass keeps h and attention weights
    query_groups: Mapping[str, Tensor] = field(default_factory=dict)
    token_classes: list[list[str]] | None = None  # [B][T] class of each residual position
    class_names: tuple[str, ...] = ()
    shape: tuple[int, int] = (0, 0)  # [B, T] of the residual stream, to unflatten [B*T, C]
    embedding: ActivationOutlierStats | None = None
    activation: dict[int, ActivationOutlierStats] = field(default_factory=dict)
    residual: dict[int, ResidualPeakStats] = field(default_factory=dict)
    value_out: dict[int, dict[str, float]] = field(default_factory=dict)
    mlp_input: dict[int, ActivationOutlierStats] = field(default_factory=dict)
    attention: dict[int, AttentionOutlierStats] = field(default_factory=dict)
    heads: dict[int, HeadStats] = field(default_factory=dict)
    moments: dict[tuple[int, str], MomentStats] = field(default_factory=dict)
    channels: dict[tuple[str, str], ChannelOutlierStats] = field(default_factory=dict)
    hidden: dict[int, Tensor] = field(default_factory=dict)
    weights: dict[int, Tensor] = field(default_factory=dict)
    key_mass: dict[int, Tensor] = field(default_factory=dict)


def _sequences(x: Tensor, rec: ProbePass) -> Tensor:
    """[B, T, C] for a tensor some models flatten to [B*T, C] (OPT's MLP)."""
    b, t = rec.shape
    if x.dim() == 2 and x.shape[0] == b * t:
        return x.view(b, t, x.shape[-1])
    return x


def norm_names(adapter: ModelAdapter) -> dict[str, nn.Module]:
    """``"<layer>.<attribute>"`` (``"0.ln_1"``) or the final norm's attribute (``"ln_f"``) ->
    module: the names a researcher knows from the model's own code."""
    out: dict[str, nn.Module] = {}
    for i, block in enumerate(adapter.blocks()):
        p = adapter.parts(i)
        for mod in dict.fromkeys(m for m in (p.attn_norm, p.mlp_norm) if m is not None):
            out[f"{i}.{_attribute(block, mod)}"] = mod
    final = adapter.final_norm()
    if final is not None:
        out[_attribute(adapter.model, final)] = final
    return out


def _attribute(parent: nn.Module, module: nn.Module) -> str:
    for name, m in parent.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    return type(module).__name__


def register(
    adapter: ModelAdapter, rec: ProbePass, th: OutlierThresholds
) -> tuple[list[RemovableHandle], nn.Module]:
    """Hooks that fill ``rec``; returns them and the module after which the pass may stop."""
    handles: list[RemovableHandle] = []
    blocks = adapter.blocks()

    def on_embedding(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        rec.embedding = activation_outliers(hidden_states_argument(args, kwargs), th)

    def on_block(i: int):
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            h = first_tensor(out)
            rec.activation[i] = activation_outliers(h, th)
            if h.shape[-2] >= 2:  # a one-token sentence has no "other tokens"
                rec.residual[i] = residual_peak(h, rec.token_classes, rec.class_names)
            if rec.keep_tensors:
                rec.hidden[i] = h[0].detach().float().cpu()
            else:
                rec.moments[(i, "block")] = moment_stats(h)

        return hook

    def on_output(i: int, name: str):
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            rec.moments[(i, name)] = moment_stats(_sequences(first_tensor(out), rec))

        return hook

    def on_mlp_input(i: int):
        def hook(_m: nn.Module, args: tuple) -> None:
            rec.mlp_input[i] = activation_outliers(_sequences(args[0], rec), th)

        return hook

    def on_attention(i: int):
        def callback(cap: AttentionCapture) -> None:
            mass = cap.key_mass().float()
            tq = cap.q.shape[-2]
            rec.attention[i] = attention_outliers(mass, num_queries=tq, thresholds=th)
            if cap.out_proj is not None:
                rec.value_out[i] = value_out_stats(cap.v, linear_weight(cap.out_proj))
            weights = None
            if rec.keep_tensors or rec.query_groups:
                weights = cap.weights()
                if cap.out_proj is not None:
                    rec.value_out[i] |= first_query_stats(
                        weights, cap.v, linear_weight(cap.out_proj)
                    )
            if rec.keep_tensors:  # the sentence: full weights for the heat map, T is small
                rec.weights[i] = weights[0].float().mean(0).cpu()
                rec.key_mass[i] = mass[0].mean(0).cpu()
            rec.heads[i] = head_statistics(
                cap.q,
                cap.k,
                cap.v,
                mass,
                weights=weights,
                query_groups=rec.query_groups,
                thresholds=th,
            )

        return callback

    def on_norm(name: str):
        def hook(_m: nn.Module, args: tuple, out: Any) -> None:
            rec.channels[(name, "in")] = channel_outliers(args[0], th)
            rec.channels[(name, "out")] = channel_outliers(first_tensor(out), th)

        return hook

    handles.append(blocks[0].register_forward_pre_hook(on_embedding, with_kwargs=True))
    for i, block in enumerate(blocks):
        p = adapter.parts(i)
        handles.append(block.register_forward_hook(on_block(i)))
        handles += adapter.capture_attention(i, on_attention(i))
        handles.append(p.down_proj.register_forward_pre_hook(on_mlp_input(i)))
        if not rec.keep_tensors:
            handles.append(p.attn.register_forward_hook(on_output(i, "attn")))
            handles.append(p.down_proj.register_forward_hook(on_output(i, "mlp")))
    if not rec.keep_tensors:
        for name, mod in norm_names(adapter).items():
            handles.append(mod.register_forward_hook(on_norm(name)))
    final = adapter.final_norm()
    return handles, final if final is not None else blocks[-1]


def forward(adapter: ModelAdapter, idx: Tensor, rec: ProbePass, th: OutlierThresholds) -> ProbePass:
    """One probe pass of ``idx`` through the model with the hooks, stopped after the final norm
    (the [B, T, V] logits are not needed)."""
    rec.shape = (int(idx.shape[0]), int(idx.shape[1]) + adapter.prefix_tokens)
    handles, last = register(adapter, rec, th)
    try:
        adapter.run(idx, stop_after=last)
    finally:
        for h in handles:
            h.remove()
    return rec

"""The lab's sink statistics measured directly on a model (from a checkpoint, after training).

The outlier probe (sysout.outliers) streams these during training; this small function measures
the same figures, under the probe's key names, on a saved checkpoint, so the lab's report can be
written from checkpoints as well (runs made without the probe, or steps the probe did not see).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sysout.model import GPT


def _median_ratio(norms: Tensor) -> Tensor:
    """Norm at position 0 / median norm over positions: [..., T] -> [...]."""
    return norms[..., 0] / norms.median(dim=-1).values.clamp_min(1e-12)


@torch.no_grad()
def measure_sinks(
    model: GPT, windows: Tensor, query_groups: dict[str, Tensor] | None = None
) -> dict[str, float]:
    """Per layer and head: attention weight on position 0 (all queries and each query group),
    total weight on real tokens, value/key/query norm at position 0 against the median position,
    and the residual-state ratio of each block's output. Keys as the outlier probe's scalars.
    """
    model.eval()
    captured: list[tuple[Tensor, Tensor]] = []
    hooks = []
    for block in model.transformer.h:
        attn = block.attn

        def grab(module, args, output, attn=attn) -> None:
            captured.append(("attn", args[0]))

        def grab_out(module, args, output) -> None:
            captured.append(("block", output))

        hooks.append(attn.register_forward_hook(grab))
        hooks.append(block.register_forward_hook(grab_out))
    try:
        model(windows)
    finally:
        for h in hooks:
            h.remove()
    attn_inputs = [t for kind, t in captured if kind == "attn"]
    block_outputs = [t for kind, t in captured if kind == "block"]
    groups = dict(query_groups or {})
    out: dict[str, float] = {}
    for layer, (block, x, h) in enumerate(zip(model.transformer.h, attn_inputs, block_outputs)):
        q, k, v = block.attn.heads(x)  # [B, H, T, d]
        p = block.attn.variant.attention_weights(q, k, x).float()  # [B, H, T, T]
        first = p[..., 0]  # [B, H, T] weight of each query on position 0
        lay = f"layer_{layer:02d}"
        out[f"outliers/attention/{lay}/first_token_share"] = float(first.mean())
        out[f"outliers/attention/{lay}/weight_sum"] = float(p.sum(-1).mean())
        for name, mask in groups.items():
            m = mask.to(first.device)[:, None, :].expand_as(first)
            per_head = (first * m).sum((0, 2)) / m.sum((0, 2)).clamp_min(1)
            for head, value in enumerate(per_head.tolist()):
                out[f"outliers/heads/{lay}/head_{head:02d}/first_token_share_{name}"] = value
            out[f"outliers/heads/{lay}/first_token_share_{name}"] = float(per_head.mean())
        ratios = {}
        for kind, t in (("value", v), ("key", k), ("query", q)):
            r = _median_ratio(t.float().norm(dim=-1)).mean(0)  # [H], mean over windows
            ratios[kind] = r
            for head, value in enumerate(r.tolist()):
                out[f"outliers/heads/{lay}/head_{head:02d}/first_token_{kind}_ratio"] = value
        for head, value in enumerate(first.mean((0, 2)).tolist()):
            out[f"outliers/heads/{lay}/head_{head:02d}/first_token_share"] = value
        out[f"outliers/heads/{lay}/first_token_value_ratio"] = float(ratios["value"].mean())
        residual = _median_ratio(h.float().norm(dim=-1)).mean()
        out[f"outliers/activation/{lay}/first_token_norm_ratio"] = float(residual)
        out[f"outliers/activation/{lay}/ratio"] = float(
            (h.abs().amax((1, 2)) / h.abs().flatten(1).median(1).values.clamp_min(1e-12)).mean()
        )
    return out

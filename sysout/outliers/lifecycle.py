"""The lifecycle of massive activations (paper section 3), through a model adapter.

For each massive activation (token t, dim c) of one sequence, the signed values at (t, c) through
every block: the block input (the attention norm's input), the attention norm's output, the
attention output, the MLP norm's output, the down-projection output and the residual after the
block; and, at the down-projection input channel j that writes most of it (the ``down_proj``
column, the weight outlier), the MLP's up / gate / activation outputs and the down-projection
input. The block where it is *created* is the first whose output is massive there (its MLP's
down-projection amplifying an ordinary activation); it *disappears* at the first later block
whose output no longer is (cancelled by an opposite-sign MLP output). Per layer and head, the
q / k / v norms at the sink token against the mean over the other tokens (large keys, small
values). :func:`capture` hooks the model; the rest are pure functions of what it captured.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from sysout.adapters import (
    AttentionCapture,
    ModelAdapter,
    adapter_for,
    first_tensor,
    hidden_states_argument,
    linear_weight,
)
from sysout.outliers.rules import OutlierThresholds, magnitudes, massive_activation_mask

STAGES = ("block_in", "attn_norm_out", "attn_out", "mlp_norm_out", "down_out", "residual")
CHANNEL_STAGES = ("up_out", "gate_out", "act_out", "down_in")  # at the down_proj column


@dataclass
class Captured:
    """Per layer: stage -> tensor [T, width] of one sequence; per layer: q/k/v [H, T, d]."""

    stages: list[dict[str, Tensor]]
    qkv: list[tuple[Tensor, Tensor, Tensor]]
    down_weight: list[Tensor]  # [out, in]


@dataclass
class Lifecycle:
    token: int
    dim: int
    column: int  # the down_proj input channel that writes most of it at creation
    created: int | None
    disappears: int | None
    values: dict[str, list[float]]  # stage -> one value per layer
    heads: list[dict[str, list[float]]] = field(default_factory=list)  # per layer: name -> per head


@torch.no_grad()
def capture(model: nn.Module | ModelAdapter, idx: Tensor) -> Captured:
    """Run one sequence ``idx`` [T] (or [1, T]) and keep every stage of every block."""
    ad = adapter_for(model)
    idx = idx.reshape(1, -1)
    t = idx.shape[1]
    n = ad.num_layers()
    stages: list[dict[str, Tensor]] = [{} for _ in range(n)]
    qkv: list[Any] = [None] * n
    handles = []

    def keep(i: int, name: str, use_input: bool = False) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple, out: Any) -> None:
            x = args[0] if use_input else first_tensor(out)
            stages[i][name] = x.detach().float().reshape(t, -1)  # OPT's MLP sees [B*T, C]

        return hook

    for i in range(n):
        p = ad.parts(i)

        def pre(_m: nn.Module, args: tuple, kwargs: dict, i: int = i) -> None:
            stages[i]["block_in"] = hidden_states_argument(args, kwargs).detach().float()[0]

        handles.append(p.block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(p.block.register_forward_hook(keep(i, "residual")))
        handles.append(p.attn.register_forward_hook(keep(i, "attn_out")))
        handles.append(p.down_proj.register_forward_hook(keep(i, "down_out")))
        handles.append(p.down_proj.register_forward_hook(keep(i, "down_in", use_input=True)))
        for name, mod in (
            ("attn_norm_out", p.attn_norm),
            ("mlp_norm_out", p.mlp_norm if p.mlp_norm is not None else p.attn_norm),
            ("up_out", p.up_proj),
            ("gate_out", p.gate_proj),
            ("act_out", p.act),
        ):
            if mod is not None:
                handles.append(mod.register_forward_hook(keep(i, name)))

        def got(c: AttentionCapture, i: int = i) -> None:
            qkv[i] = tuple(z.detach().float()[0] for z in (c.q, c.k, c.v))

        handles += ad.capture_attention(i, got)
    try:
        with ad.eval_mode():
            ad.run(idx)
    finally:
        for h in handles:
            h.remove()
    weights = [linear_weight(ad.parts(i).down_proj).detach().float() for i in range(n)]
    return Captured(stages, qkv, weights)


def massive_coordinates(cap: Captured, th: OutlierThresholds) -> list[tuple[int, int]]:
    """(token, dim) of every massive activation in any block's output, largest first."""
    best: dict[tuple[int, int], float] = {}
    for st in cap.stages:
        a = magnitudes(st["residual"])[None]
        mask, _ = massive_activation_mask(a, th)
        for _, t, c in mask.nonzero().tolist():
            best[(t, c)] = max(best.get((t, c), 0.0), float(a[0, t, c]))
    return sorted(best, key=lambda k: -best[k])


def _head_norms(q: Tensor, k: Tensor, v: Tensor, token: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    others = torch.ones(q.shape[1], dtype=torch.bool)
    others[token] = False
    for name, z in (("q", q), ("k", k), ("v", v)):
        norms = z.norm(dim=-1)  # [H, T]
        out[f"{name}_sink"] = norms[:, token].tolist()
        rest = norms[:, others].mean(dim=1) if others.any() else torch.full_like(norms[:, 0], 0)
        out[f"{name}_other"] = rest.tolist()
    return out


def trace(cap: Captured, token: int, dim: int, th: OutlierThresholds) -> Lifecycle:
    """The lifecycle of the massive activation at (token, dim) (see the module docstring)."""
    n = len(cap.stages)
    massive = []
    for st in cap.stages:
        a = magnitudes(st["residual"])[None]
        mask, _ = massive_activation_mask(a, th)
        massive.append(bool(mask[0, token, dim]))
    created = next((i for i in range(n) if massive[i]), None)
    disappears = None
    if created is not None:
        disappears = next((i for i in range(created + 1, n) if not massive[i]), None)
    # The column: the down_proj input channel with the largest share of the output at creation.
    at = created if created is not None else 0
    contrib = cap.stages[at]["down_in"][token] * cap.down_weight[at][dim]
    column = int(contrib.abs().argmax())
    values: dict[str, list[float]] = {s: [] for s in (*STAGES, *CHANNEL_STAGES)}
    for st in cap.stages:
        for s in STAGES:
            values[s].append(float(st[s][token, dim]) if s in st else float("nan"))
        for s in CHANNEL_STAGES:
            x = st.get(s)
            ok = x is not None and x.shape[-1] > column
            values[s].append(float(x[token, column]) if ok else float("nan"))
    heads = [_head_norms(*cap.qkv[i], token) for i in range(n)]
    return Lifecycle(token, dim, column, created, disappears, values, heads)


def lifecycles(
    model: nn.Module | ModelAdapter,
    idx: Tensor,
    thresholds: OutlierThresholds | None = None,
    limit: int = 4,
) -> list[Lifecycle]:
    """The lifecycles of the (up to ``limit``) largest massive activations of sequence ``idx``."""
    th = OutlierThresholds.from_any(thresholds)
    cap = capture(model, idx)
    return [trace(cap, t, c, th) for t, c in massive_coordinates(cap, th)[:limit]]


def write_lifecycle_csv(items: list[Lifecycle], path: Path) -> Path:
    """One row per (activation, layer): the signed stage values and the sink token's head norms
    (per head, ``;``-separated)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stages = [*STAGES, *CHANNEL_STAGES]
    norms = ["q_sink", "q_other", "k_sink", "k_other", "v_sink", "v_other"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["token", "dim", "column", "created", "disappears", "layer", *stages, *norms])
        for lc in items:
            for i in range(len(lc.values["residual"])):
                w.writerow(
                    [lc.token, lc.dim, lc.column, lc.created, lc.disappears, i]
                    + [f"{lc.values[s][i]:.6g}" for s in stages]
                    + [";".join(f"{v:.4g}" for v in lc.heads[i][k]) for k in norms]
                )
    return path


def lifecycle_figure(items: list[Lifecycle], title: str = "") -> Figure:
    """Per activation: the signed stage values through the blocks (creation and disappearance
    marked), and the sink token's mean key / value norm against the other tokens'."""
    rows = max(1, len(items))
    fig = Figure(figsize=(12, 3.2 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    for r, lc in enumerate(items):
        ax, hx = axes[r]
        layers = range(len(lc.values["residual"]))
        for s in ("residual", "down_out", "attn_out", "mlp_norm_out"):
            ax.plot(layers, lc.values[s], marker="o", label=s)
        ax.plot(layers, lc.values["down_in"], ls="--", label=f"down_in[col {lc.column}]")
        for mark, colour in ((lc.created, "green"), (lc.disappears, "red")):
            if mark is not None:
                ax.axvline(mark, color=colour, alpha=0.4)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"token {lc.token}, dim {lc.dim}: created {lc.created}, gone {lc.disappears}")
        ax.set_xlabel("block")
        ax.legend(fontsize=7)
        for key, style in (("k", "-"), ("v", "--")):
            sink = [sum(h[f"{key}_sink"]) / len(h[f"{key}_sink"]) for h in lc.heads]
            other = [sum(h[f"{key}_other"]) / len(h[f"{key}_other"]) for h in lc.heads]
            hx.plot(layers, sink, style, marker="o", label=f"|{key}| sink token")
            hx.plot(layers, other, style, marker="x", label=f"|{key}| other tokens")
        hx.set_title("mean over heads")
        hx.set_xlabel("block")
        hx.legend(fontsize=7)
    if not items:
        axes[0, 0].text(0.5, 0.5, "no massive activation", ha="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_lifecycle(items: list[Lifecycle], path: Path, title: str = "") -> Path:
    """:func:`lifecycle_figure` saved as a PNG (Agg, no pyplot state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lifecycle_figure(items, title).savefig(path, dpi=110)
    return path

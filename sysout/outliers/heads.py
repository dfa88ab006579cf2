"""Per-head attention statistics: sink share, active-dormant split, and q/k/v norms at the sink.

For one attention layer with per-head q, k, v [B, H, T, d] and per-head key mass
m[b, h, j] = sum_i P[b, h, i, j] (the variant's own weights):

- ``first_token_share[h]`` = mean_b m[b, h, 0] / Tq: the weight each head puts on position 0;
  ``top_share[h]`` = mean_b max_j m[b, h, j] / Tq and ``top_key[h]`` the key that most often
  takes it; a head is a *sink head* by :func:`~sysout.outliers.rules.sink_head_mask`;
- the **active-dormant split** (Guo et al. 2024): the first-token share over the queries of each
  named group only (e.g. the Bigram-Backcopy task's trigger and non-trigger positions), and,
  from the same layer and the same queries, figures that compare like with like across
  variants whose weights need not sum to one: ``row_weight`` (mean of sum_j P[i, j] over the
  real keys: 1 for softmax, 1 - the slot's weight for kv_bias / sink_logit / softmax1, anything
  for sigmoid and ReLU attention), ``first_token_share_of_weight`` (position 0's share of all the
  weight the group's queries spend on real keys), ``top_key_share_of_weight`` (the same for each
  sample's most-attended key, wherever it sits) and ``first_token_weight_vs_uniform`` (position 0's
  weight over what it would get if every query spread its weight evenly over the i + 1 keys it
  sees: 1 is no preference), so that "no sink" does not hinge on an absolute weight that
  initialisation already meets (about 1/T per key);
- **value-state drain / large keys**: ||x[b, h, t]|| at the first token, and at each head's
  top-mass key, divided by the median over positions of ||x[b, h, t]||, for x in q, k, v,
  averaged over samples (An et al. 2025: sink tokens have large keys and small values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ._common import index_list
from .rules import DEFAULT_THRESHOLDS, OutlierThresholds, sink_head_mask

ROLES = ("query", "key", "value")


@dataclass(frozen=True, eq=False)
class HeadStats:
    """Per-head figures of one attention layer; vectors are float32 CPU tensors [H]."""

    first_token_share: Tensor
    top_share: Tensor
    top_key: list[int]
    group_stats: dict[str, dict[str, Tensor]]  # group -> stat -> [H]
    first_token_ratio: dict[str, Tensor]  # role ("query", "key", "value") -> [H]
    sink_ratio: dict[str, Tensor]  # the same at each head's top-mass key
    sink_heads: list[int]

    @property
    def num_heads(self) -> int:
        return int(self.first_token_share.numel())

    def scalars(self) -> dict[str, float]:
        """``head_YY/<stat>`` per head and the head means ``<stat>``."""
        per_head: dict[str, Tensor] = {
            "first_token_share": self.first_token_share,
            "top_share": self.top_share,
        }
        per_head.update(
            {f"{stat}_{g}": v for g, stats in self.group_stats.items() for stat, v in stats.items()}
        )
        per_head.update({f"first_token_{r}_ratio": v for r, v in self.first_token_ratio.items()})
        per_head.update({f"sink_{r}_ratio": v for r, v in self.sink_ratio.items()})
        out: dict[str, float] = {}
        for name, values in per_head.items():
            out[name] = float(values.nanmean().item())
            for h, v in enumerate(values.tolist()):
                out[f"head_{h:02d}/{name}"] = float(v)
        out["num_sink_heads"] = float(len(self.sink_heads))
        return out


def _norm_ratio_at(x: Tensor, positions: Tensor) -> Tensor:
    """||x[b, h, p[b, h]]|| / median_t ||x[b, h, t]||, averaged over b: [H] (x [B, H, T, d])."""
    norms = x.detach().float().norm(dim=-1)  # [B, H, T]
    med = norms.median(dim=-1).values
    at = norms.gather(-1, positions.unsqueeze(-1)).squeeze(-1)
    ratio = torch.where(med > 0, at / med.clamp_min(1e-30), torch.nan)
    return ratio.nanmean(dim=0).cpu()


def group_statistics(weights: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-head figures [H] over the queries of one group (mask [B, Tq]) of weights
    [B, H, Tq, Tk] on the real keys (keys aligned at the end, as
    :func:`~sysout.attention.causal_mask`).

    The shares are of the weight the group's queries spend in all, pooled over queries and
    samples, so that a query which spends almost nothing (a sigmoid or ReLU head that does
    nothing by outputting zeros) weighs almost nothing, where averaging normalised rows would
    let its rounding noise elect a "sink"."""
    w = weights.detach().float()
    tq, tk = w.shape[-2:]
    m = mask.to(device=w.device, dtype=torch.float32)[:, None, :]  # [B, 1, Tq]
    row = w.sum(dim=-1)  # [B, H, Tq]
    per_key = (w * m[..., None]).sum(dim=2)  # [B, H, Tk]: weight the group puts on each key
    spent = per_key.sum(dim=(0, 2)).clamp_min(1e-30)  # [H]
    # What position 0 would get if each query spread its row evenly over the keys it sees.
    visible = torch.arange(tq, device=w.device, dtype=torch.float32) + 1 + (tk - tq)
    uniform_first = ((row / visible) * m).sum(dim=(0, 2)).clamp_min(1e-30)
    first = per_key[..., 0].sum(dim=0)
    return {
        "first_token_share": ((w[..., 0] * m).sum(dim=(0, 2)) / m.sum().clamp_min(1.0)).cpu(),
        "row_weight": ((row * m).sum(dim=(0, 2)) / m.sum().clamp_min(1.0)).cpu(),
        "first_token_share_of_weight": (first / spent).cpu(),
        "top_key_share_of_weight": (per_key.amax(dim=-1).sum(dim=0) / spent).cpu(),
        "first_token_weight_vs_uniform": (first / uniform_first).cpu(),
    }


def head_statistics(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mass: Tensor,
    *,
    weights: Tensor | None = None,
    query_groups: Mapping[str, Tensor] | None = None,
    thresholds: OutlierThresholds = DEFAULT_THRESHOLDS,
) -> HeadStats:
    """Per-head statistics of one layer.

    ``key_mass`` [B, H, Tk] is the per-head mass (sum over queries of the weights on the real
    keys); ``weights`` [B, H, Tq, Tk] is needed only for ``query_groups`` (name -> bool [B, Tq]
    masks of the queries to average over).
    """
    b, h, tq, _ = q.shape
    mass = key_mass.detach().float()
    first = (mass[..., 0] / tq).mean(dim=0).cpu()
    top_mass, top_idx = mass.max(dim=-1)  # [B, H]
    top_share = (top_mass / tq).mean(dim=0).cpu()
    top_key = [int(torch.mode(top_idx[:, i]).values.item()) for i in range(h)]
    if query_groups and weights is None:
        raise ValueError("per-group sink shares need the attention weights")
    groups = {name: group_statistics(weights, m) for name, m in (query_groups or {}).items()}
    zeros = torch.zeros(b, h, dtype=torch.long, device=q.device)
    tensors = dict(zip(ROLES, (q, k, v)))
    return HeadStats(
        first_token_share=first,
        top_share=top_share,
        top_key=top_key,
        group_stats=groups,
        first_token_ratio={r: _norm_ratio_at(x, zeros) for r, x in tensors.items()},
        sink_ratio={r: _norm_ratio_at(x, top_idx.to(x.device)) for r, x in tensors.items()},
        sink_heads=index_list(sink_head_mask(top_share, thresholds)),
    )

"""Attention outliers (attention sinks; SPEC section 2).

With A [B, H, Tq, Tk] the weights applied to the values (they need not sum to one: sigmoid, sink
and off-by-one variants do not), the mass received by key j in sample b is

    m[b, j] = sum_i mean_h A[b, h, i, j]

and key j is an attention outlier of sample b when m[b, j] >= attention_mass_fraction x Tq
(:mod:`sysout.outliers.rules`).
Keys must be indexed by token position: a variant with an extra learned key/value slot
(kv_bias) must drop it (or report it separately) before calling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._common import index_list, position_list
from .rules import DEFAULT_THRESHOLDS, OutlierThresholds, attention_sink_mask


def attention_mass(attn: torch.Tensor) -> torch.Tensor:
    """Per-key mass m[b, j] = sum_i mean_h A[b, h, i, j] of A [B, H, Tq, Tk], float32 [B, Tk].

    Accumulates in float32 without materialising an upcast copy of A."""
    if attn.dim() != 4:
        shape = tuple(attn.shape)
        raise ValueError(f"expected attention probabilities [B, H, Tq, Tk], got {shape}")
    return attn.detach().sum(dim=(1, 2), dtype=torch.float32) / attn.shape[1]


@dataclass(frozen=True, eq=False)
class AttentionOutlierStats:
    """Attention-outlier statistics of one layer.

    Batch aggregation: ``first_token_share``, ``top1_mass`` and ``top1_fraction`` are means over
    samples of the per-sample figures; ``count`` is the total number of (b, j) outlier pairs in
    the batch (``count_per_sample`` = count / B); ``positions`` lists them all as (b, j), row-major
    (at most B * Tk, never truncated); ``keys`` are the distinct outlier key positions j.
    ``mean_mass`` is the batch-mean mass per key, float32 CPU [Tk]; ``top1_key`` its argmax.
    ``top_keys`` is each sample's own top key (where that sample's sink sits: without BOS it
    need not be position 0, nor the same position in every sample).
    """

    num_queries: int
    num_keys: int
    batch_size: int
    first_token_share: float
    top1_mass: float
    top1_fraction: float
    top1_key: int
    count: int
    positions: list[tuple[int, int]]
    keys: list[int]
    mean_mass: torch.Tensor
    top_keys: list[int]

    @property
    def count_per_sample(self) -> float:
        return self.count / self.batch_size

    def scalars(self) -> dict[str, float]:
        """Flat W&B-ready figures; ``top_key_mode`` is the position most samples' top key sits
        at, ``top_key_mode_share`` / ``top_key_first_token_share`` the shares of samples whose
        top key is that position / position 0."""
        mode = max(set(self.top_keys), key=lambda j: (self.top_keys.count(j), -j))
        n = len(self.top_keys)
        return {
            "top_key_mode": float(mode),
            "top_key_mode_share": self.top_keys.count(mode) / n,
            "top_key_first_token_share": self.top_keys.count(0) / n,
            "first_token_share": self.first_token_share,
            "top1_mass": self.top1_mass,
            "top1_fraction": self.top1_fraction,
            "top1_key": float(self.top1_key),
            "count": float(self.count),
            "count_per_sample": self.count_per_sample,
            "num_keys": float(len(self.keys)),
        }


def attention_outliers(
    attn_or_mass: torch.Tensor,
    num_queries: int | None = None,
    thresholds: OutlierThresholds = DEFAULT_THRESHOLDS,
) -> AttentionOutlierStats:
    """Attention-outlier statistics from probabilities or from an already-reduced key mass.

    Input (by dimension): 4-D A [B, H, Tq, Tk] (``num_queries`` optional, must equal Tq if
    given); 3-D per-head mass [B, H, Tk] (sum over queries, averaged over heads here);
    2-D mass [B, Tk]. ``num_queries`` (Tq) is required for the mass inputs.

    first_token_share = mean_b m[b, 0] / Tq (= mean over batch, heads and queries of A[..., 0]);
    top1_mass = mean_b max_j m[b, j]; top1_fraction = top1_mass / Tq;
    outlier (b, j): :func:`~sysout.outliers.rules.attention_sink_mask`.
    """
    if attn_or_mass.dim() == 4:
        tq = attn_or_mass.shape[2]
        if num_queries is not None and num_queries != tq:
            raise ValueError(f"num_queries={num_queries} but A has Tq={tq}")
        mass = attention_mass(attn_or_mass)
    elif attn_or_mass.dim() in (2, 3):
        if num_queries is None:
            raise ValueError("num_queries (Tq) is required when a per-key mass is given")
        tq = int(num_queries)
        mass = attn_or_mass.detach().float()
        if mass.dim() == 3:
            mass = mass.mean(dim=1)
    else:
        raise ValueError(
            "expected A [B, H, Tq, Tk], mass [B, H, Tk] or mass [B, Tk], "
            f"got {tuple(attn_or_mass.shape)}"
        )
    if tq <= 0 or mass.numel() == 0:
        raise ValueError("attention_outliers: empty input")
    mass = mass.double()
    bsz, tk = mass.shape
    per_sample_top1 = mass.amax(dim=1)
    outlier = attention_sink_mask(mass, tq, thresholds)
    mean_mass = mass.mean(dim=0)
    top1_mass = float(per_sample_top1.mean().item())
    return AttentionOutlierStats(
        num_queries=tq,
        num_keys=int(tk),
        batch_size=int(bsz),
        first_token_share=float(mass[:, 0].mean().item()) / tq,
        top1_mass=top1_mass,
        top1_fraction=top1_mass / tq,
        top1_key=int(mean_mass.argmax().item()),
        count=int(outlier.sum().item()),
        positions=position_list(outlier),  # type: ignore[arg-type]
        keys=index_list(outlier.any(dim=0)),
        mean_mass=mean_mass.float().cpu(),
        top_keys=[int(j) for j in mass.argmax(dim=1).tolist()],
    )

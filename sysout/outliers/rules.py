"""The one owner of SPEC section 2's thresholds and outlier rules.

Every other module (the statistics, the probe, the mitigation probes, evaluation, the configs)
takes an :class:`OutlierThresholds` and calls the rule functions here; nothing else writes a
threshold's default or re-implements a rule. Configs override only the fields they change.

The rules, on magnitudes ``a = |x|``:

- massive activation (Sun et al. 2024): ``a > abs_threshold`` (strict) and
  ``a >= median_ratio x median(a)``, the median taken **per sequence** (over that sequence's
  [T, C] values), as the anchors probe one sequence at a time;
- token rule (official massive-activations code): token t is flagged when
  ``max_c a[t, c] > token_mean_ratio x mean(a)``, the mean per sequence;
- attention sink: key j with mass (sum over queries of the head-mean weight) ``>= fraction x Tq``;
  a *sink head* puts, on average over its queries, ``>= sink_head_share`` of its weight on one key;
- weight outlier row/column: peak ratio ``>= weight_rel_threshold x median ratio``;
- channel outlier (Raman et al. 2025): ``m_c >= channel_tau x median(m)`` and a fraction of
  tokens ``>= channel_min_fraction`` with ``|x| >= channel_magnitude``;
- LayerNorm gamma outlier: ``|gamma_c| > gamma_tau x median|gamma|`` (strict); a gamma whose
  median magnitude is 0 has no outliers (the ratio is undefined, and flagging every non-zero
  entry would make a mitigation rewrite most of the vector).

Medians follow ``torch.median`` (the lower middle value for an even count), as the official
code does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._common import settings_from


@dataclass(frozen=True)
class OutlierThresholds:
    """Every threshold of SPEC section 2; the defaults are the SPEC's."""

    abs_threshold: float = 100.0  # massive activation: |h| > this ...
    median_ratio: float = 1000.0  # ... and |h| >= this x the sequence's median |h|
    token_mean_ratio: float = 1000.0  # official token rule: max_c |h[t]| > this x mean |h|
    max_positions: int = 1000  # outlier coordinates kept per tensor
    attention_mass_fraction: float = 0.1  # key j is a sink when its mass >= this x Tq
    sink_head_share: float = 0.5  # a head sinks when its top key gets >= this share of weight
    weight_rel_threshold: float = 3.0  # outlier row/col: ratio >= this x median ratio
    channel_tau: float = 10.0  # channel outlier: m_c >= tau x median m ...
    channel_magnitude: float = 6.0  # ... with |x| >= this (LLM.int8's magnitude) ...
    channel_min_fraction: float = 0.25  # ... on at least this fraction of tokens
    gamma_tau: float = 10.0  # LayerNorm scale outlier: |gamma_c| > tau x median |gamma|
    use_token_rule: bool = False  # consistency from the token rule instead of the element rule

    @classmethod
    def from_any(cls, value: OutlierThresholds | Mapping[str, Any] | None) -> OutlierThresholds:
        """Thresholds from an instance, a (Hydra) mapping of overrides, or None (defaults); a
        None value in the mapping keeps that field's default."""
        return settings_from(cls, value, "outlier thresholds")


DEFAULT_THRESHOLDS = OutlierThresholds()


def magnitudes(x: Tensor) -> Tensor:
    """|x| in float32 (float64 stays float64), detached, on x's device."""
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.float()
    return x.abs()


def as_sequences(a: Tensor) -> Tensor:
    """[B, T, C] as it is; [T, C] as one sequence [1, T, C]."""
    if a.dim() == 2:
        return a.unsqueeze(0)
    if a.dim() != 3:
        raise ValueError(f"expected [B, T, C] or [T, C], got {tuple(a.shape)}")
    return a


def sequence_medians(a: Tensor) -> Tensor:
    """torch.median of each sequence's values, [B] (a = magnitudes [B, T, C])."""
    return a.reshape(a.shape[0], -1).median(dim=1).values


def massive_activation_mask(
    a: Tensor, th: OutlierThresholds = DEFAULT_THRESHOLDS
) -> tuple[Tensor, Tensor]:
    """(bool mask [B, T, C] of massive activations, the per-sequence bound [B, 1, 1]).

    ``a`` are magnitudes [B, T, C] (:func:`magnitudes`, :func:`as_sequences`); the bound is
    ``median_ratio x median`` of each sequence.
    """
    bound = (th.median_ratio * sequence_medians(a)).reshape(-1, 1, 1)
    return (a > th.abs_threshold) & (a >= bound), bound


def token_rule_mask(a: Tensor, th: OutlierThresholds = DEFAULT_THRESHOLDS) -> Tensor:
    """Bool [B, T]: max_c a[b, t, c] > token_mean_ratio x mean of sequence b (a [B, T, C])."""
    mean = a.reshape(a.shape[0], -1).mean(dim=1, dtype=torch.float64).to(a.dtype)
    return a.amax(dim=-1) > th.token_mean_ratio * mean.reshape(-1, 1)


def attention_sink_mask(
    mass: Tensor, num_queries: int, th: OutlierThresholds = DEFAULT_THRESHOLDS
) -> Tensor:
    """Bool [B, Tk]: keys whose mass (sum over queries of the head-mean weight) >= f x Tq."""
    return mass >= th.attention_mass_fraction * num_queries


def sink_head_mask(top_share: Tensor, th: OutlierThresholds = DEFAULT_THRESHOLDS) -> Tensor:
    """Bool [H]: heads whose top key receives >= sink_head_share of their queries' weight."""
    return top_share >= th.sink_head_share


def weight_outlier_mask(
    ratios: Tensor, median_ratio: float, th: OutlierThresholds = DEFAULT_THRESHOLDS
) -> Tensor:
    """Bool mask of rows (or columns) whose peak ratio >= rel_threshold x the median ratio."""
    return ratios >= th.weight_rel_threshold * median_ratio


def channel_outlier_mask(
    channel_max: Tensor,
    channel_fraction: Tensor,
    median_max: float,
    th: OutlierThresholds = DEFAULT_THRESHOLDS,
) -> Tensor:
    """Bool [C]: m_c >= tau x median m and frac_c >= min_fraction."""
    return (channel_max >= th.channel_tau * median_max) & (
        channel_fraction >= th.channel_min_fraction
    )


def gamma_outlier_mask(gamma: Tensor, th: OutlierThresholds = DEFAULT_THRESHOLDS) -> Tensor:
    """Bool [C]: |gamma_c| > gamma_tau x median|gamma| (none when that median is 0)."""
    a = magnitudes(gamma.reshape(-1))
    if a.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=gamma.device)
    med = a.median()
    if med <= 0:
        return torch.zeros_like(a, dtype=torch.bool)
    return a > th.gamma_tau * med


__all__ = [
    "DEFAULT_THRESHOLDS",
    "OutlierThresholds",
    "as_sequences",
    "attention_sink_mask",
    "channel_outlier_mask",
    "gamma_outlier_mask",
    "magnitudes",
    "massive_activation_mask",
    "sequence_medians",
    "sink_head_mask",
    "token_rule_mask",
    "weight_outlier_mask",
]

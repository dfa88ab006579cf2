"""What the outlier probe reports: one frozen dataclass per level (layer, norm, sentence, model)
and the flat metric names ``outliers/<group>/<scope>/<stat>`` of everything it measured.

Layer pairing of the consistency figures (documented in docs/dashboard.md):
- position consistency of layer l compares the activation-outlier tokens of the residual stream
  that attention l *reads* (the block-l input: h_{l-1}, or the embeddings for l = 0) with the
  attention-outlier keys of attention l (HF convention: hidden_states[l] vs attentions[l]);
- dimension consistency of layer l compares the activation-outlier dims of h_l with the outlier
  rows of the down-projection of block l (which writes into h_l); column consistency compares
  the outlier channels of that down-projection's input with its outlier columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from .activations import ActivationOutlierStats
from .attention import AttentionOutlierStats
from .channels import ChannelOutlierStats, CoincidenceStats, GammaOutlierStats
from .consistency import ConsistencyStats
from .heads import HeadStats
from .keys import metric_key, summary_key
from .moments import MomentStats
from .residual import ResidualPeakStats
from .rules import OutlierThresholds
from .tokens import CLASSES as TOKEN_CLASSES
from .weights import WeightOutlierStats

PROBE_SENTENCE = "Summer is warm. Winter is cold."


@dataclass(frozen=True)
class OutlierRecord:
    """One activation outlier: a row of the W&B outlier table."""

    kind: str  # "block_output" (residual stream h_l) or "mlp_input" (c_proj input)
    source: str  # "val" (probe windows) or "sentence"
    layer: int
    sample: int
    position: int
    token_id: int
    token: str
    dim: int
    value: float
    token_class: str  # initial / delimiter / weak_semantic / other (sysout.outliers.tokens)

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "kind",
        "source",
        "layer",
        "sample",
        "position",
        "token_id",
        "token",
        "dim",
        "value",
        "token_class",
    )

    def row(self) -> list[Any]:
        return [getattr(self, c) for c in self.COLUMNS]


@dataclass(frozen=True, eq=False)
class NormReport:
    """Channel outliers of one LayerNorm's input and output, its gamma outliers, and whether the
    gamma outliers coincide with the output's outlier channels (Raman et al. 2025)."""

    input: ChannelOutlierStats
    output: ChannelOutlierStats
    gamma: GammaOutlierStats
    coincidence: CoincidenceStats

    def scalars(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for part, stats in (("in", self.input), ("out", self.output)):
            s = stats.scalars()
            out.update({f"{part}/{k}": s[k] for k in ("count", "top1", "ratio", "max_fraction")})
        g = self.gamma.scalars()
        out.update({f"gamma/{k}": g[k] for k in ("count", "max_abs", "ratio")})
        c = self.coincidence.scalars()
        out.update({f"coincidence/{k}": c[k] for k in ("overlap", "jaccard")})
        return out


@dataclass(frozen=True, eq=False)
class LayerReport:
    """Everything the probe measured in block ``index``."""

    index: int
    activation: ActivationOutlierStats  # block output h_l
    mlp_input: ActivationOutlierStats  # MLP c_proj input (after GELU, width 4C)
    attention: AttentionOutlierStats  # from the variant's own weights / key mass
    heads: HeadStats  # per-head sink shares and q/k/v norms at the sink
    moments: dict[str, MomentStats]  # "block", "attn", "mlp" outputs
    norms: dict[str, NormReport]  # the block's norms by attribute name ("ln_1", "ln_2")
    weights: dict[str, WeightOutlierStats]  # "mlp.c_proj", "attn.c_attn", ... (block-relative)
    consistency: ConsistencyStats
    down_proj_name: str = "mlp.c_proj"  # the key of the down-projection in ``weights``
    residual: ResidualPeakStats | None = None  # the residual-state peak of h_l
    value_out: dict[str, float] | None = None  # ||W_O v(pos 0)||: None without W_O

    @property
    def c_proj(self) -> WeightOutlierStats:
        """The MLP down-projection (GPT-2's c_proj, LLaMA's down_proj): its outlier rows are
        residual feature dims, its outlier columns the channels that feed them."""
        return self.weights[self.down_proj_name]

    def scalars(self) -> dict[str, dict[str, float]]:
        """This layer's figures by metric group (names without the ``layer_XX`` scope)."""
        c = self.consistency
        groups: dict[str, dict[str, float]] = {
            "activation": self.activation.scalars(),
            "mlp_input": self.mlp_input.scalars(),
            "attention": {
                **self.attention.scalars(),
                "weight_sum": self.weight_sum,
                **(self.value_out or {}),
            },
            "heads": self.heads.scalars(),
            "consistency": {
                "position": c.position_consistency,
                "dimension": c.dimension_consistency,
                "column": c.column_consistency,
            },
        }
        weights = {f"mlp_c_proj/{k}": v for k, v in self.c_proj.scalars().items()}
        for name, w in self.weights.items():
            if name != self.down_proj_name:  # the others: their peak ratios only
                weights.update(
                    {f"{name.replace('.', '_')}/{k}": v for k, v in _peak_ratios(w).items()}
                )
        groups["weight"] = weights
        if self.residual is not None:
            groups["residual"] = self.residual.scalars()
        groups["channel"] = {
            f"{name}/{k}": v for name, norm in self.norms.items() for k, v in norm.scalars().items()
        }
        groups["moments"] = {
            f"{name}/{k}": v for name, m in self.moments.items() for k, v in m.scalars().items()
        }
        return groups

    @property
    def weight_sum(self) -> float:
        """Mean over queries (and heads, samples) of sum_j P[i, j]: 1 for softmax, below 1 when
        a sink, an extra slot or a sigmoid keeps weight off the real values."""
        a = self.attention
        return float(a.mean_mass.sum().item()) / a.num_queries


@dataclass(frozen=True, eq=False)
class SentenceReport:
    """The probe sentence: its own forward pass, kept whole (T is small)."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    hidden: Tensor  # [L, T, C] block outputs, float32 CPU
    attention: Tensor  # [L, T, T] head-mean weights of the variant's formula, float32 CPU
    key_mass: Tensor  # [L, T] head-mean key mass from variant.key_mass (the batch's path)
    activation: list[ActivationOutlierStats]  # per layer, of the block outputs

    @property
    def max_layer(self) -> int:
        """The layer whose block output has the largest |h| on the sentence."""
        return max(range(len(self.activation)), key=lambda i: self.activation[i].top1)


@dataclass(frozen=True, eq=False)
class ProbeReport:
    """The probe's result. ``scalars()`` gives flat ``outliers/<group>/...`` figures."""

    variant: str
    batch_shape: tuple[int, int]
    thresholds: OutlierThresholds
    embedding: ActivationOutlierStats  # input of block 0 (read by attention 0)
    layers: list[LayerReport]
    final_norm: NormReport | None
    other_weights: dict[str, WeightOutlierStats]  # Linears outside the blocks (lm_head)
    sentence: SentenceReport | None
    outliers: list[OutlierRecord]
    step: int | None = None
    final_norm_name: str = "ln_f"

    @property
    def max_layer(self) -> int:
        """The layer with the largest top-1 |h_l| on the probe windows."""
        return max(range(len(self.layers)), key=lambda i: self.layers[i].activation.top1)

    def _pooled(self, fraction: str, count: str) -> float:
        """A consistency pooled over layers: counts summed, not a mean of per-layer fractions."""
        num = den = 0
        for lay in self.layers:
            n, value = getattr(lay.consistency, count), getattr(lay.consistency, fraction)
            if n and not math.isnan(value):
                num += round(value * n)
                den += n
        return num / den if den else math.nan

    def summary(self) -> dict[str, float]:
        """Cross-layer figures: the dashboard's first panels."""
        layers = self.layers
        i = self.max_layer
        act = layers[i].activation
        shares = [lay.attention.first_token_share for lay in layers]
        act_dims = {d for lay in layers for d in lay.activation.dims}
        rows = {r for lay in layers for r in lay.c_proj.outlier_rows}
        out = {
            "max_top1": act.top1,
            "max_pooled_top1": max(lay.activation.pooled_top1 for lay in layers),
            "max_top1_layer": float(i),
            "max_top1_ratio": act.ratio,
            "max_mlp_input_top1": max(lay.mlp_input.top1 for lay in layers),
            "num_activation_outliers": float(sum(lay.activation.count for lay in layers)),
            "first_token_share": sum(shares) / len(shares),
            "max_first_token_share": max(shares),
            "num_attention_outliers": float(sum(lay.attention.count for lay in layers)),
            "max_c_proj_row_ratio": max(lay.c_proj.max_row_ratio for lay in layers),
            "max_c_proj_col_ratio": max(lay.c_proj.max_col_ratio for lay in layers),
            "position_consistency": self._pooled("position_consistency", "num_activation_tokens"),
            "dimension_consistency": (
                len(act_dims & rows) / len(act_dims) if act_dims else math.nan
            ),
            "column_consistency": self._pooled("column_consistency", "num_mlp_input_dims"),
            "max_first_token_norm_ratio": max(
                lay.activation.first_token_norm_ratio for lay in layers
            ),
            "min_first_token_value_ratio": min(
                lay.heads.scalars()["first_token_value_ratio"] for lay in layers
            ),
            "num_sink_heads": float(sum(len(lay.heads.sink_heads) for lay in layers)),
            "max_kurtosis": max(lay.moments["block"].kurtosis for lay in layers),
            "num_channel_outliers": float(
                sum(n.output.count for lay in layers for n in lay.norms.values())
            ),
        }
        # Which tokens carry the residual-stream outliers (An et al.'s classes), counted over
        # the distinct (sample, position) of the reported records of the probe windows.
        tokens = {
            (r.sample, r.position): r.token_class
            for r in self.outliers
            if r.source == "val" and r.kind == "block_output"
        }
        for cls in TOKEN_CLASSES:
            out[f"outlier_tokens_{cls}"] = float(sum(c == cls for c in tokens.values()))
        if self.sentence is not None:
            out["sentence_max_top1"] = max(a.top1 for a in self.sentence.activation)
        return out

    def scalars(self) -> dict[str, float]:
        """Flat figures named ``outliers/<group>/layer_XX/<stat>`` and ``outliers/summary/...``."""
        out: dict[str, float] = {}
        for lay in self.layers:
            for group, values in lay.scalars().items():
                out.update({metric_key(group, k, lay.index): float(v) for k, v in values.items()})
        if self.final_norm is not None:
            out.update(
                {
                    metric_key("channel", k, scope=self.final_norm_name): float(v)
                    for k, v in self.final_norm.scalars().items()
                }
            )
        for name, w in self.other_weights.items():
            scope = name.replace(".", "_")
            out.update(
                {metric_key("weight", k, scope=scope): float(v) for k, v in _peak_ratios(w).items()}
            )
        out.update({summary_key(k): float(v) for k, v in self.summary().items()})
        return out

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per layer, one ``<group>/<stat>`` column each (the per-layer CSV)."""
        return [
            {"layer": lay.index}
            | {f"{g}/{k}": v for g, values in lay.scalars().items() for k, v in values.items()}
            for lay in self.layers
        ]


def _peak_ratios(w: WeightOutlierStats) -> dict[str, float]:
    return {"max_row_ratio": w.max_row_ratio, "max_col_ratio": w.max_col_ratio}

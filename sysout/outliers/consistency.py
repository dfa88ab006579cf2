"""Consistency between activation, attention and weight outliers (paper Table 1).

- position consistency = |P_act ∩ P_attn| / |P_act|, with P_act the activation-outlier token
  positions (b, t) and P_attn the attention-outlier key positions (b, j) of the same forward pass;
- dimension consistency = |D_act ∩ R_w| / |D_act|, with D_act the activation-outlier feature dims
  and R_w the outlier rows of the MLP down-projection (c_proj) weight;
- column consistency = |D_in ∩ C_w| / |D_in|, with D_in the activation-outlier channels of the
  down-projection's input and C_w the outlier columns of its weight (the official analysis of
  which ``down_proj`` column creates a massive activation).

Both are NaN when there are no activation outliers (empty denominator): "undefined", not 0 or 1,
so a clean model does not read as perfectly (in)consistent; W&B shows NaN as a gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ._common import fraction
from .activations import ActivationOutlierStats
from .attention import AttentionOutlierStats
from .weights import WeightOutlierStats


def position_consistency(
    activation_tokens: Iterable[tuple[int, int]], attention_positions: Iterable[tuple[int, int]]
) -> float:
    """Fraction of activation-outlier tokens (b, t) that are attention-outlier keys (b, j).
    NaN when there are no activation-outlier tokens."""
    act = {(int(b), int(t)) for b, t in activation_tokens}
    attn = {(int(b), int(j)) for b, j in attention_positions}
    return fraction(len(act & attn), len(act))


def dimension_consistency(activation_dims: Iterable[int], weight_rows: Iterable[int]) -> float:
    """Fraction of activation-outlier feature dims that are weight-outlier rows.
    NaN when there are no activation-outlier dims."""
    act = {int(c) for c in activation_dims}
    rows = {int(r) for r in weight_rows}
    return fraction(len(act & rows), len(act))


@dataclass(frozen=True)
class ConsistencyStats:
    """Consistency figures of one layer; NaN where undefined or where the input was not given."""

    position_consistency: float
    dimension_consistency: float
    num_activation_tokens: int
    num_activation_dims: int
    column_consistency: float = math.nan
    num_mlp_input_dims: int = 0

    def scalars(self) -> dict[str, float]:
        """Flat W&B-ready figures."""
        return {
            "position_consistency": self.position_consistency,
            "dimension_consistency": self.dimension_consistency,
            "num_activation_tokens": float(self.num_activation_tokens),
            "num_activation_dims": float(self.num_activation_dims),
            "column_consistency": self.column_consistency,
            "num_mlp_input_dims": float(self.num_mlp_input_dims),
        }


def outlier_consistency(
    activation: ActivationOutlierStats,
    attention: AttentionOutlierStats | None = None,
    weight: WeightOutlierStats | None = None,
    *,
    reads: ActivationOutlierStats | None = None,
    mlp_input: ActivationOutlierStats | None = None,
    use_token_rule: bool = False,
) -> ConsistencyStats:
    """Position consistency against ``attention`` and dimension consistency against
    ``weight.outlier_rows`` for one layer. Activation tokens come from the element rule
    (``activation.tokens``), or from the official token rule with ``use_token_rule=True``.
    Position consistency uses the tokens of ``reads`` when given (the residual stream the
    attention reads: the block's input, while ``activation`` is its output). With ``mlp_input``
    (the down-projection input's statistics) and ``weight`` (its weight), also the column
    consistency. A comparison whose partner is None is NaN."""
    read = reads if reads is not None else activation
    tokens = read.token_rule_tokens if use_token_rule else read.tokens
    pos = position_consistency(tokens, attention.positions) if attention is not None else math.nan
    dim = (
        dimension_consistency(activation.dims, weight.outlier_rows)
        if weight is not None
        else math.nan
    )
    col = math.nan
    if weight is not None and mlp_input is not None:
        col = dimension_consistency(mlp_input.dims, weight.outlier_cols)
    return ConsistencyStats(
        position_consistency=pos,
        dimension_consistency=dim,
        num_activation_tokens=len(tokens),
        num_activation_dims=len(activation.dims),
        column_consistency=col,
        num_mlp_input_dims=len(mlp_input.dims) if mlp_input is not None else 0,
    )

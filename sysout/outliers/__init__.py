"""Outlier statistics (SPEC section 2): pure functions of tensors returning frozen dataclasses.

Every result has ``scalars() -> dict[str, float]`` with flat names; the caller adds a prefix such
as ``outliers/activation/layer_03/``. All figures are computed in float32/float64 whatever the
input dtype, on the input's device; positions are Python ints.
"""

from .activations import ActivationOutlierStats, activation_outliers
from .attention import AttentionOutlierStats, attention_mass, attention_outliers
from .channels import (
    ChannelOutlierStats,
    CoincidenceStats,
    GammaOutlierStats,
    channel_outliers,
    gamma_channel_coincidence,
    gamma_outliers,
)
from .consistency import (
    ConsistencyStats,
    dimension_consistency,
    outlier_consistency,
    position_consistency,
)
from .moments import MomentStats, inf_norm, kurtosis, kurtosis_per_sample, moment_stats
from .weights import WeightOutlierStats, weight_outliers, weight_outliers_by_name

__all__ = [
    "ActivationOutlierStats",
    "AttentionOutlierStats",
    "ChannelOutlierStats",
    "CoincidenceStats",
    "ConsistencyStats",
    "GammaOutlierStats",
    "MomentStats",
    "WeightOutlierStats",
    "activation_outliers",
    "attention_mass",
    "attention_outliers",
    "channel_outliers",
    "dimension_consistency",
    "gamma_channel_coincidence",
    "gamma_outliers",
    "inf_norm",
    "kurtosis",
    "kurtosis_per_sample",
    "moment_stats",
    "outlier_consistency",
    "position_consistency",
    "weight_outliers",
    "weight_outliers_by_name",
]

"""Outlier statistics (SPEC section 2) and the probe that measures them on a model.

- ``rules``: the thresholds (:class:`OutlierThresholds`) and every outlier rule, written once;
- ``activations``, ``attention``, ``heads``, ``weights``, ``channels``, ``moments``,
  ``consistency``: pure functions of tensors returning frozen dataclasses, each with
  ``scalars() -> dict[str, float]`` (flat names; the caller adds ``outliers/<group>/...``);
- ``capture`` (hooks through :mod:`sysout.adapters`), ``reports`` (what the probe reports and
  its metric names), ``probe`` (:func:`run_probe`), ``plots`` (figures of a report).

All figures are computed in float32/float64 whatever the input dtype; positions are Python ints.
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
from .heads import HeadStats, head_statistics
from .moments import MomentStats, inf_norm, kurtosis, kurtosis_per_sample, moment_stats
from .probe import run_probe
from .reports import PROBE_SENTENCE, LayerReport, OutlierRecord, ProbeReport
from .rules import DEFAULT_THRESHOLDS, OutlierThresholds
from .weights import WeightOutlierStats, weight_outliers, weight_outliers_by_name

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PROBE_SENTENCE",
    "ActivationOutlierStats",
    "HeadStats",
    "LayerReport",
    "OutlierRecord",
    "OutlierThresholds",
    "ProbeReport",
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
    "head_statistics",
    "inf_norm",
    "kurtosis",
    "kurtosis_per_sample",
    "moment_stats",
    "outlier_consistency",
    "position_consistency",
    "run_probe",
    "weight_outliers",
    "weight_outliers_by_name",
]

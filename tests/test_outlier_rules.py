"""The one owner of SPEC 2's thresholds and rules, and that every consumer follows it."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from sysout.outliers import OutlierThresholds, gamma_outliers
from sysout.outliers.rules import (
    as_sequences,
    gamma_outlier_mask,
    magnitudes,
    massive_activation_mask,
)


def test_overrides_keep_the_other_defaults_and_reject_unknown_names() -> None:
    th = OutlierThresholds.from_any({"median_ratio": 500.0, "gamma_tau": None})
    assert th.median_ratio == 500.0 and th.gamma_tau == OutlierThresholds().gamma_tau
    with pytest.raises(ValueError, match="unknown outlier thresholds.*valid"):
        OutlierThresholds.from_any({"median_ration": 1.0})


def test_callback_config_writes_no_default(compose_train) -> None:
    # Each threshold's default is written once (rules.py): the config only names the keys.
    cfg = compose_train("experiment=quickstart")
    values = OmegaConf.to_container(cfg.callbacks.outliers.thresholds)
    assert set(values) == set(OutlierThresholds.__dataclass_fields__)
    assert all(v is None for v in values.values())


def test_gamma_rule_with_a_zero_median_flags_nothing_everywhere() -> None:
    gamma = torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0])
    assert not gamma_outlier_mask(gamma).any()
    assert gamma_outliers(gamma).entries == []
    gamma = torch.tensor([1.0, 1.0, 1.0, 10.5, 1.0])
    assert gamma_outlier_mask(gamma).tolist() == [False, False, False, True, False]


def test_massive_rule_uses_each_sequences_own_median() -> None:
    quiet = torch.full((4, 8), 0.01)
    loud = torch.ones(4, 8)
    quiet[1, 2] = loud[1, 2] = 150.0
    mask, bound = massive_activation_mask(magnitudes(as_sequences(torch.stack([quiet, loud]))))
    assert mask[0, 1, 2] and not mask[1, 1, 2]  # 150 >= 1000 x 0.01 but < 1000 x 1
    assert bound.reshape(-1).tolist() == pytest.approx([10.0, 1000.0])

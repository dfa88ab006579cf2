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


def test_one_threshold_in_the_config_reaches_probe_report_and_mitigation(
    compose_train, tmp_path
) -> None:
    """evaluate.py's probe.thresholds is read once (into the evaluation's settings) and the
    probe, the outlier report and the set_zero mitigation all follow it: an abs_threshold above
    the planted activation hides it from all three."""
    from test_outlier_probe import B, T, planted_gpt

    from sysout.compress import get_method
    from sysout.evaluation.outlier_report import outlier_report
    from sysout.evaluation.settings import EvalSettings
    from sysout.outliers import run_probe

    model = planted_gpt()
    batch = torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(1))
    found = {}
    for name, overrides in (("default", []), ("raised", ["probe.thresholds.abs_threshold=1e4"])):
        cfg = compose_train("checkpoints=unused", *overrides, config_name="evaluate")
        th = EvalSettings.from_config(cfg).thresholds
        probe = run_probe(model, batch, thresholds=th).summary()["num_activation_outliers"]
        summary, _ = outlier_report(model, tmp_path / name, batch, None, thresholds=th)
        with get_method("set_zero")(model, [batch], th) as record:
            model(batch)
        found[name] = (probe, summary["num_activation_outliers"], record.replaced)
    assert all(n > 0 for n in found["default"])  # the planted activation, seen by all three
    assert found["raised"] == (0, 0, 0)

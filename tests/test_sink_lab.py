"""The CPU laboratory end to end: a learned attention sink, measured by the outlier probe.

Two 600-step runs of experiment=sink_lab (about 3 minutes each on one CPU thread; longer on a
loaded machine), so this is marked slow and runs only with SYSOUT_LAB_TESTS=1
(``make test-lab``); the committed docs/results/sink-lab.md carries the figures of every variant.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from sysout.training.run import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("SYSOUT_LAB_TESTS") != "1",
        reason="two 600-step trainings: set SYSOUT_LAB_TESTS=1 (make test-lab)",
    ),
]


def probe_rows(output_dir) -> list[dict[str, float]]:
    """The probe's logged scalars, one dict per probe step, in training order."""
    with open(output_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    key = "outliers/attention/layer_00/first_token_share"
    return [
        {k: float(v) for k, v in row.items() if k.startswith("outliers/") and v not in ("", None)}
        for row in rows
        if row.get(key)
    ]


def run_lab(compose_train, variant: str):
    torch.set_num_threads(1)
    cfg = compose_train(
        "experiment=sink_lab",
        f"attention={variant}",
        "seed=1",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.outliers.every_n_steps=200",
        "callbacks.outliers.log_images=false",
    )
    metrics = train(cfg)
    return metrics, probe_rows(Path(cfg.paths.output_dir))


def test_softmax_grows_a_bos_sink_with_a_value_drain(compose_train) -> None:
    _, rows = run_lab(compose_train, "softmax")
    first, last = rows[0], rows[-1]
    share = "outliers/heads/layer_00/first_token_share_non_trigger"
    assert last[share] > 0.4, last[share]
    assert last["outliers/heads/layer_00/first_token_value_ratio"] < 0.3
    assert last[share] > first[share] + 0.3  # it grew during training
    # Active-dormant: trigger queries (which must copy) do not park on BOS as much.
    assert last["outliers/heads/layer_00/first_token_share_trigger"] < last[share]


def test_sigmoid_puts_no_weight_on_bos(compose_train) -> None:
    _, rows = run_lab(compose_train, "sigmoid")
    last = rows[-1]
    for layer in range(3):
        # Sigmoid weights do not sum to one: this is the absolute weight on BOS.
        assert last[f"outliers/attention/layer_{layer:02d}/first_token_share"] < 0.05

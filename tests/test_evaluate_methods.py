"""evaluate_methods with the issue's method list, thresholds reaching the probes, and the
robustness files naming each column's convention and anchor (Markdown, CSVs, JSON)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from test_compress import batches, tiny_gpt

from sysout.compress import METHODS
from sysout.evaluation.perplexity import perplexity
from sysout.evaluation.report import legend_rows, write_robustness
from sysout.evaluation.robustness import CheckpointResult, evaluate_methods, normalize_methods
from sysout.outliers.rules import OutlierThresholds

ISSUE_METHODS = [
    "w8a8", "w8a8_static", "w8_absmax", "magnitude_50", "magnitude_50_matrix", "wanda_50",
    "set_zero", "set_mean",
]  # fmt: skip


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def measured():
    model = tiny_gpt()
    with torch.no_grad():
        model.transformer.h[0].ln_2.weight[2] = 5.0  # 5x the median: a gamma outlier at tau 4
    plant = model.transformer.h[1].register_forward_hook(lambda m, a, out: _massive(out))
    ids = torch.randint(0, 64, (60,), generator=torch.Generator().manual_seed(3))
    specs = normalize_methods([*ISSUE_METHODS, "gamma_reset_one", "gamma_reset_one+w8a8"])
    results = evaluate_methods(
        model,
        specs,
        lambda m: perplexity(m, ids, block_size=8, batch_size=4),
        calibration=batches(2),
        thresholds=OutlierThresholds(gamma_tau=4.0),
    )
    plant.remove()
    return specs, results


def _massive(out: torch.Tensor) -> torch.Tensor:
    """Block 1 creates a massive activation at (token 0, dim 3) of every sequence."""
    out = out.clone()
    out[:, 0, 3] += 1e4
    return out


def test_every_issue_method_measures_and_thresholds_reach_the_probes(measured):
    specs, results = measured
    assert [r.method for r in results] == specs and specs[0] == "baseline"
    by = {r.method: r for r in results}
    for r in results:
        assert r.error is None and math.isfinite(r.ppl) and r.tokens == 59, (r.method, r.error)
    base = by["baseline"].ppl
    for name in ISSUE_METHODS:
        assert by[name].ppl != base, name  # each one changed the model
    assert by["gamma_reset_one"].details["gamma_reset_one"]["changed"] == {
        "transformer.h.0.ln_2": [2]
    }  # found only with the configured tau 4, not the default 10
    assert by["set_zero"].details["set_zero"]["layer"] == 1
    assert by["set_mean"].details["set_mean"]["calibration"]["dims"] == [3]
    combo = by["gamma_reset_one+w8a8"].details
    assert list(combo) == ["gamma_reset_one", "w8a8"] and combo["w8a8"]["name"] == "W8A8"


def test_missing_calibration_fails_only_the_calibrated_methods():
    model = tiny_gpt()
    ids = torch.randint(0, 64, (30,), generator=torch.Generator().manual_seed(4))
    results = evaluate_methods(
        model,
        normalize_methods(["w8_absmax", "w8a8_static", "set_mean"]),
        lambda m: perplexity(m, ids, block_size=8),
        calibration=None,
        calibration_error="the validation text is missing",
    )
    errors = {r.method: r.error for r in results}
    assert errors["baseline"] is None and errors["w8_absmax"] is None
    for name in ("w8a8_static", "set_mean"):
        assert "no calibration data: the validation text is missing" in errors[name]


def test_tables_name_each_columns_convention_and_anchor(measured, tmp_path):
    specs, results = measured
    row = CheckpointResult("0_softmax", "ckpt.ckpt", "run", "softmax", 4, 3.2, results)
    files = write_robustness([row], specs, tmp_path, {"eval text": "test"})
    wide = _read(files["csv"])
    assert all(name in wide[0] for name in specs)
    legend = {r["method"]: r for r in _read(files["legend_csv"])}
    assert list(legend) == specs
    for name in ISSUE_METHODS:
        assert legend[name]["convention"] == METHODS[name].description
        assert legend[name]["anchor"] == METHODS[name].anchor != ""
    assert "percentile" in legend["w8a8_static"]["convention"]
    assert "one threshold per matrix" in legend["magnitude_50_matrix"]["convention"]
    combo = legend["gamma_reset_one+w8a8"]
    assert combo["convention"].endswith(" then " + METHODS["w8a8"].description)
    assert combo["kind"] == "mitigate+quantize"
    md = files["md"].read_text()
    for r in legend_rows(specs):
        assert f"- `{r['method']}`: {r['convention']}" in md
    assert "anchor: Sun et al. 2024" in md and "anchor: Bondarenko et al. 2023" in md
    long = _read(files["long_csv"])
    assert {r["method"]: r["convention"] for r in long}["set_zero"] == METHODS[
        "set_zero"
    ].description
    assert json.loads(files["json"].read_text())["legend"] == legend_rows(specs)

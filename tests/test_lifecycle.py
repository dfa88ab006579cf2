"""Lifecycle and token classes on planted outliers; the adapter-driven probe on every HF family."""

from __future__ import annotations

import csv

import pytest
import torch
from hf_tiny import (
    BORN,
    DIM,
    FAMILIES,
    HEADS,
    LAYERS,
    MASSIVE,
    SINK_HEAD,
    SINK_LAYER,
    J,
    plant,
    planted_input,
    tiny_model,
)

from sysout.outliers.lifecycle import lifecycles, plot_lifecycle, write_lifecycle_csv
from sysout.outliers.tokens import class_counts, token_class


@pytest.mark.parametrize("kind", FAMILIES)
def test_lifecycle_finds_birth_column_cancellation_and_the_sinks_large_key(kind, tmp_path):
    model = plant(tiny_model(kind))
    found = lifecycles(model, planted_input(batch=1)[0])
    assert found, "the planted massive activation was not found"
    lc = found[0]
    assert (lc.token, lc.dim, lc.column) == (0, DIM, J)
    assert lc.created == BORN and lc.disappears == LAYERS - 1
    v = lc.values
    # Born in the MLP: the down-projection writes it from an ordinary input.
    assert v["down_out"][BORN] > 0.9 * MASSIVE and abs(v["attn_out"][BORN]) < 10
    assert abs(v["down_in"][BORN]) < 100 and abs(v["block_in"][BORN]) < 10
    # Cancelled by an opposite-sign MLP output in the last block.
    assert v["down_out"][LAYERS - 1] < -0.9 * MASSIVE
    assert abs(v["residual"][LAYERS - 1]) < 1.0
    # The sink head keys on it: its key at the sink token dwarfs the others'.
    heads = lc.heads[SINK_LAYER]
    assert heads["k_sink"][SINK_HEAD] > 5 * heads["k_other"][SINK_HEAD]
    assert len(heads["v_sink"]) == HEADS
    csv_path = write_lifecycle_csv(found, tmp_path / "lifecycle.csv")
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert len(rows) == LAYERS * len(found) and rows[BORN]["created"] == str(BORN)
    assert plot_lifecycle(found, tmp_path / "lifecycle.png").stat().st_size > 0


def test_token_classes():
    pairs = [(0, "Summer"), (3, "."), (4, "\n"), (5, " the"), (6, "Ġand"), (7, " Winter")]
    assert [token_class(p, s) for p, s in pairs] == [
        "initial",
        "delimiter",
        "delimiter",
        "weak_semantic",
        "weak_semantic",
        "other",
    ]
    assert token_class(2, "</s>") == "weak_semantic"
    assert class_counts(pairs) == {"initial": 1, "delimiter": 2, "weak_semantic": 2, "other": 1}


@pytest.mark.parametrize("kind", FAMILIES)
def test_probe_reports_the_planted_outlier_on_every_family(kind):
    from sysout.outliers.probe import run_probe

    model = plant(tiny_model(kind))
    report = run_probe(model, planted_input(batch=2), None)
    born = report.layers[BORN]
    assert (0, DIM) in {(r.position, r.dim) for r in report.outliers if r.layer == BORN}
    assert DIM in born.activation.dims and report.layers[BORN - 1].activation.dims == []
    assert J in born.c_proj.outlier_cols  # the down_proj column that writes it
    sink = report.layers[SINK_LAYER].heads
    assert int(torch.as_tensor(sink.first_token_share).argmax()) == SINK_HEAD

"""The outlier report of one checkpoint (SPEC 5): the probe's figures as PNG and its tables as CSV,
and the probe summaries of all checkpoints side by side."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sysout.evaluation.report import _md_table, fmt, save_figure, write_csv
from sysout.evaluation.robustness import CheckpointResult
from sysout.outliers import PROBE_SENTENCE, OutlierRecord, OutlierThresholds, run_probe
from sysout.outliers.lifecycle import lifecycle_figure, lifecycles, write_lifecycle_csv
from sysout.outliers.options import ProbeOptions
from sysout.outliers.plots import report_figures

#: Probe-summary figures shown in the cross-checkpoint outlier table (all are in the CSV).
OUTLIER_COLUMNS = (
    "max_top1",
    "max_top1_layer",
    "max_top1_ratio",
    "num_activation_outliers",
    "first_token_share",
    "num_attention_outliers",
    "max_c_proj_row_ratio",
    "position_consistency",
    "dimension_consistency",
    "column_consistency",
    "max_first_token_norm_ratio",
    "min_first_token_value_ratio",
    "max_kurtosis",
    "num_channel_outliers",
)


def outlier_report(
    model: nn.Module,
    out_dir: Path,
    batch: torch.Tensor | None,
    sentence: Sequence[int] | None,
    *,
    thresholds: OutlierThresholds | Mapping[str, Any] | None = None,
    decode: Callable[[int], str] | None = None,
    sentence_text: str | None = None,
    step: int | None = None,
    max_records: int | None = None,
) -> tuple[dict[str, float], dict[str, Path]]:
    """Probe ``model`` (SPEC 2) and write SPEC 5's outlier report into ``out_dir``: figures
    (per-layer top-k/median curves, attention heat map and 3-D surface of the probe sentence,
    weight-outlier plot, the lifecycle of the largest massive activations) as PNG, and CSVs
    (per-layer statistics, consistency, outlier list with token classes, lifecycle, summary).
    ``max_records`` caps the outlier list (None: :class:`~sysout.outliers.options.ProbeOptions`'
    default). Returns the probe summary and the files written."""

    report = run_probe(
        model,
        batch,
        sentence,
        thresholds=thresholds,
        decode=decode,
        sentence_text=sentence_text or PROBE_SENTENCE,
        step=step,
        max_records=ProbeOptions().max_records if max_records is None else max_records,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, fig in report_figures(report).items():
        key = name.replace("/", "_")
        files[key] = save_figure(fig, out_dir / f"{key}.png", dpi=90)
    scalars = report.scalars()
    rows = report.layer_rows()
    files["layers"] = write_csv(out_dir / "outlier_layers.csv", list(rows[0]), rows)
    consistency = [
        {
            "layer": lay.index,
            "position_consistency": lay.consistency.position_consistency,
            "dimension_consistency": lay.consistency.dimension_consistency,
            "column_consistency": lay.consistency.column_consistency,
            "activation_outlier_tokens": lay.consistency.num_activation_tokens,
            "activation_outlier_dims": lay.consistency.num_activation_dims,
        }
        for lay in report.layers
    ]
    summary = report.summary()
    consistency.append(
        {
            "layer": "all",
            "position_consistency": summary["position_consistency"],
            "dimension_consistency": summary["dimension_consistency"],
            "column_consistency": summary["column_consistency"],
        }
    )
    files["consistency"] = write_csv(out_dir / "consistency.csv", list(consistency[0]), consistency)
    # The lifecycle of the largest massive activations of the sentence (or the first window).
    sequence = torch.as_tensor(sentence) if sentence else batch[0] if batch is not None else None
    if sequence is not None:
        found = lifecycles(model, sequence.reshape(-1), report.thresholds)
        files["lifecycle_csv"] = write_lifecycle_csv(found, out_dir / "lifecycle.csv")
        files["lifecycle"] = save_figure(
            lifecycle_figure(found, f"{report.variant}: lifecycle of massive activations"),
            out_dir / "lifecycle.png",
            dpi=90,
        )
    files["outliers"] = write_csv(
        out_dir / "outlier_records.csv",
        OutlierRecord.COLUMNS,
        [dict(zip(OutlierRecord.COLUMNS, rec.row())) for rec in report.outliers],
    )
    files["summary"] = write_csv(
        out_dir / "outlier_summary.csv",
        ["name", "value"],
        [{"name": k, "value": v} for k, v in scalars.items() if "/layer_" not in k],
    )
    return summary, files


def write_outlier_summary(results: Sequence[CheckpointResult], out_dir: Path) -> dict[str, Path]:
    """``outliers.{csv,md}``: the probe summary of every checkpoint side by side."""
    probed = [r for r in results if r.outliers]
    if not probed:
        return {}
    keys = list(dict.fromkeys(k for r in probed for k in r.outliers))
    rows = [{"label": r.label, "variant": r.variant or "", **r.outliers} for r in probed]
    files = {"outliers_csv": write_csv(out_dir / "outliers.csv", ["label", "variant", *keys], rows)}
    shown = [k for k in OUTLIER_COLUMNS if k in keys]
    body = [[r["label"], r["variant"], *(fmt(r.get(k, math.nan)) for k in shown)] for r in rows]
    text = ["# Outlier summary (probe of each checkpoint, SPEC section 2)", ""]
    text += [*_md_table(["checkpoint", "variant", *shown], body), ""]
    files["outliers_md"] = out_dir / "outliers.md"
    files["outliers_md"].write_text("\n".join(text))
    return files

"""From a finished lab run to the files committed beside the report.

For each run, under ``<results>/runs/<plan>/``:

- ``<config>_s<seed>.csv``: one row per measured optimizer step: the validation losses and the
  probe's figures the lab reports (per layer: the residual-state peak and where max |h| sits,
  Sun et al.'s top-1 / median, the attention shares of every query group, the extra slot's
  weight, each sample's top key, the value drain), from the run's CSV log, completed at each
  saved checkpoint (``checkpoints/steps/``, ``last.ckpt``) by the current probe: a figure the
  probe gained after the run was trained is measured on its weights, never left out;
- ``<config>_s<seed>.final.csv``: at the last step, per layer and probe sequence, the top key
  (where that sequence's sink sits) and where max |h| sits: the histograms of the report;
- ``<config>_s<seed>.json``: the run's record (configuration, overrides, seed, steps, wall time,
  machine, versions).

The report (``python -m sysout.lab.report <results>``) reads these files alone.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from sysout.outliers.keys import PREFIX, parse_key

VAL_KEYS = ("val/loss", "val/true_loss", "val/loss_gap", "val/loss_trigger", "val/loss_non_trigger")
# The probe's figures the lab keeps, by group; "*" keeps every head-mean figure of the group.
KEPT = {
    "residual": "*",
    "heads": "*",
    "activation": ("top1", "median", "ratio", "first_token_norm_ratio"),
    "attention": (
        "first_token_share",
        "weight_sum",
        "top1_fraction",
        "top_key_mode",
        "top_key_mode_share",
        "top_key_first_token_share",
        "first_token_value_out_norm",
        "first_token_value_out_ratio",
        "first_query_weight",
        "first_query_out_norm",
    ),
    "summary": ("max_top1", "max_top1_ratio", "max_first_token_norm_ratio"),
}
FINAL_COLUMNS = (
    "layer",
    "sequence",
    "top_key",
    "argmax_position",
    "argmax_dim",
    "argmax_value",
    "argmax_class",
)


def kept(key: str) -> bool:
    """Whether the lab keeps a probe figure (head means, not per-head copies)."""
    try:
        group, _, stat = parse_key(key)
    except ValueError:
        return False
    rule = KEPT.get(group)
    if rule is None or stat.startswith("head_"):
        return False
    return rule == "*" or stat in rule


def _number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def read_log(metrics_csv: Path) -> list[dict[str, float]]:
    """The run's CSV log as rows ``{"step": optimizer step, figure: value}``, one per step.

    Lightning's CSV logger writes validation at ``step = optimizer steps - 1`` and the probe at
    the optimizer step itself; both are put at the optimizer step here.
    """
    if not metrics_csv.is_file():
        raise FileNotFoundError(f"no CSV log at {metrics_csv}: was the run made with logger=csv?")
    rows: dict[int, dict[str, float]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            probe = {k: v for k, v in row.items() if k.startswith(PREFIX + "/") and kept(k)}
            probe = {k: x for k, v in probe.items() if (x := _number(v)) is not None}
            val = {k: x for k in VAL_KEYS if (x := _number(row.get(k, ""))) is not None}
            if probe:
                rows.setdefault(step, {}).update(probe)
            if val:
                rows.setdefault(step + 1, {}).update(val)
    return [{"step": float(s), **rows[s]} for s in sorted(rows)]


def write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    """Rows as CSV, figures to 6 significant digits (the committed data stays small)."""
    columns = sorted({k for r in rows for k in r} - {"step"}, key=_column_order)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *columns])
        for r in rows:
            cells = [f"{r[c]:.6g}" if c in r else "" for c in columns]
            writer.writerow([int(r["step"]), *cells])


def _column_order(key: str) -> tuple:
    if key.startswith("val/"):
        return (0, key)
    group, layer, stat = parse_key(key)
    return (1, group, -1 if layer is None else layer, stat)


def probe_bigram_backcopy(model: Any, bos: bool, windows: int) -> Any:
    """The outlier probe of a Bigram-Backcopy model on the task's first ``windows`` fixed
    validation sequences, with the task's query groups and token classes (as training probes)."""
    from sysout.data.bigram_backcopy import BigramBackcopyDataModule
    from sysout.lab.runs import default_text_path
    from sysout.outliers import run_probe

    data = BigramBackcopyDataModule(str(default_text_path()), model.config.block_size, bos=bos)
    inputs = data.probe_inputs(windows)
    return run_probe(
        model,
        inputs.windows,
        query_groups=inputs.query_groups,
        decode=inputs.decode,
        token_class=inputs.token_class,
        token_class_names=inputs.token_class_names,
    )


def final_positions(checkpoint: Path, bos: bool, windows: int = 32) -> list[dict[str, Any]]:
    """Per layer and probe sequence at the checkpoint: its top key and where max |h| sits."""
    from sysout.model.checkpoint import load_gpt_checkpoint

    report = probe_bigram_backcopy(load_gpt_checkpoint(checkpoint).model, bos, windows)
    rows = []
    for lay in report.layers:
        res = lay.residual
        assert res is not None
        for b, top in enumerate(lay.attention.top_keys):
            rows.append(
                {
                    "layer": lay.index,
                    "sequence": b,
                    "top_key": top,
                    "argmax_position": res.argmax_positions[b],
                    "argmax_dim": res.argmax_dims[b],
                    "argmax_value": f"{res.argmax_values[b]:.6g}",
                    "argmax_class": res.argmax_classes[b],
                }
            )
    return rows


def grad_norms(metrics_csv: Path) -> dict[str, float]:
    """The gradient norms the run logged before any clipping (``train/grad_norm``, at the
    logging interval): how many, the median and the largest. Empty for runs that predate it."""
    with open(metrics_csv) as f:
        norms = [float(r["train/grad_norm"]) for r in csv.DictReader(f) if r.get("train/grad_norm")]
    if not norms:
        return {}
    return {
        "grad_norm_logged": len(norms),
        "grad_norm_median": round(statistics.median(norms), 6),
        "grad_norm_max": round(max(norms), 6),
    }


def _run_settings(folder: Path) -> dict[str, Any]:
    """The composed config's sizes the report needs (tokens per step)."""
    from omegaconf import OmegaConf

    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    cfg = OmegaConf.load(path)
    return {
        "block_size": int(cfg.model.block_size),
        "batch_size": int(cfg.data.batch_size),
        "lr": float(cfg.optim.lr),
        "optimizer": str(cfg.optim.get("name", "adamw")),
        "gradient_clip_val": cfg.trainer.get("gradient_clip_val"),
        "log_every_n_steps": int(cfg.trainer.get("log_every_n_steps") or 50),
        "probe_windows": _probe_windows(cfg),
    }


def _probe_windows(cfg: Any) -> int | None:
    """The windows the run's probe used: the callback's setting, else the probe group's, else
    the probe's default."""
    from sysout.outliers.options import ProbeOptions

    outliers = (cfg.get("callbacks") or {}).get("outliers")
    if outliers is None:
        return None
    value = outliers.get("probe_windows")
    return int(value) if value is not None else ProbeOptions().windows


def checkpoint_figures(folder: Path, bos: bool, windows: int) -> dict[int, dict[str, float]]:
    """The current probe's kept figures on every saved checkpoint of a run, by optimizer step:
    ``checkpoints/steps/step*.ckpt`` and ``checkpoints/last.ckpt``."""
    from sysout.model.checkpoint import load_gpt_checkpoint

    paths = sorted((folder / "checkpoints" / "steps").glob("step*.ckpt"))
    last = folder / "checkpoints" / "last.ckpt"
    out: dict[int, dict[str, float]] = {}
    for path in [*paths, last] if last.is_file() else paths:
        ckpt = load_gpt_checkpoint(path)
        report = probe_bigram_backcopy(ckpt.model, bos, windows)
        out[int(ckpt.step or 0)] = {k: v for k, v in report.scalars().items() if kept(k)}
    return out


def merge_checkpoint_figures(
    rows: list[dict[str, float]], measured: dict[int, dict[str, float]]
) -> list[dict[str, float]]:
    """The log's rows with the figures they lack added from ``measured`` at the same step (a
    step the log has no row for gets one). Only figures the current probe measures are kept (a
    statistic renamed or redefined since the run was trained never survives under its old
    name); a figure both have keeps the logged value, and the two must agree (the same probe on
    the same weights), else ValueError."""
    current = {k for figures in measured.values() for k in figures}
    keep = lambda key: key == "step" or key.startswith("val/") or not current or key in current
    by_step = {int(r["step"]): {k: v for k, v in r.items() if keep(k)} for r in rows}
    for step, figures in measured.items():
        row = by_step.setdefault(step, {"step": float(step)})
        for key, value in figures.items():
            if key not in row:
                row[key] = value
            elif not math.isclose(row[key], value, rel_tol=1e-3, abs_tol=1e-6):
                raise ValueError(
                    f"{key} at step {step}: logged {row[key]:.6g}, measured on the checkpoint "
                    f"{value:.6g}: the checkpoint is not the weights the run probed"
                )
    return [by_step[s] for s in sorted(by_step)]


def collect_run(folder: Path, record: dict[str, Any], results: Path) -> Path:
    """Write a finished run's committed files under ``results``; returns the per-step CSV."""
    stem = results / "runs" / record["plan"] / f"{record['config']}_s{record['seed']}"
    rows = read_log(folder / "csv" / "metrics.csv")
    if not rows:
        raise ValueError(f"{folder}: the CSV log has no probe or validation rows")
    settings = _run_settings(folder)
    windows = settings.get("probe_windows") or 8
    rows = merge_checkpoint_figures(rows, checkpoint_figures(folder, bool(record["bos"]), windows))
    write_rows(stem.with_suffix(".csv"), rows)
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        final = final_positions(last, bool(record["bos"]), windows)
        with open(stem.with_suffix(".final.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FINAL_COLUMNS)
            writer.writeheader()
            writer.writerows(final)
    meta = {
        **record,
        **settings,
        **grad_norms(folder / "csv" / "metrics.csv"),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return stem.with_suffix(".csv")

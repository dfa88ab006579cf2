"""Write what an evaluation found: the robustness table (Markdown, CSV, bar chart) and the same
to W&B / other loggers. Each checkpoint's outlier report: :mod:`sysout.evaluation.outlier_report`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from sysout.compress import METHODS
from sysout.evaluation.robustness import CheckpointResult, parse_method_spec

log = logging.getLogger(__name__)

ID_COLUMNS = ("label", "variant", "step", "val_loss", "tokens")
TAIL_COLUMNS = ("errors", "checkpoint")


# ----------------------------------------------------------------------------- tables
def robustness_columns(methods: Sequence[str]) -> list[str]:
    return [*ID_COLUMNS, *methods, *TAIL_COLUMNS]


def robustness_rows(
    results: Sequence[CheckpointResult], methods: Sequence[str]
) -> list[dict[str, Any]]:
    """One dict per checkpoint: identity, validation loss, one perplexity per method, errors."""
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "label": r.label,
            "variant": r.variant or "",
            "step": "" if r.step is None else r.step,
            "val_loss": r.val_loss,
            "tokens": r.tokens,
        }
        row.update({m: r.ppl(m) for m in methods})
        row["errors"] = " | ".join(r.errors())
        row["checkpoint"] = r.checkpoint
        rows.append(row)
    return rows


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: floats with ``digits`` decimals (3 significant digits when huge), NaN as an
    empty cell, anything else as text."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(c) for c in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


LEGEND_COLUMNS = ("method", "kind", "convention", "anchor")


def legend_rows(methods: Sequence[str]) -> list[dict[str, str]]:
    """One row per column of the tables: its convention and the anchor it follows; a combined
    spec ``a+b`` joins its parts' conventions with " then " (applied in that order)."""
    rows = []
    for spec in methods:
        parts = [METHODS[n] for n in parse_method_spec(spec)]
        rows.append(
            {
                "method": spec,
                "kind": "+".join(p.kind for p in parts),
                "convention": " then ".join(p.description for p in parts),
                "anchor": "; ".join(p.anchor for p in parts if p.anchor),
            }
        )
    return rows


def robustness_markdown(
    results: Sequence[CheckpointResult], methods: Sequence[str], meta: Mapping[str, Any]
) -> str:
    """The table of perplexities, a second one relative to each row's baseline, the errors."""
    rows = robustness_rows(results, methods)
    head = ["checkpoint", "variant", "step", "val loss", *methods]
    body = [
        [r["label"], r["variant"], fmt(r["step"]), fmt(r["val_loss"], 3)]
        + [
            "error" if (m_res := res.result(m)) is not None and m_res.error else fmt(r[m])
            for m in methods
        ]
        for r, res in zip(rows, results)
    ]
    lines = ["# Compression robustness", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "## Perplexity (lower is better)", "", *_md_table(head, body), ""]
    rel = []
    for r, res in zip(rows, results):
        base = res.ppl(methods[0])
        cells = [fmt(res.ppl(m) / base) if base and math.isfinite(base) else "" for m in methods]
        rel.append([r["label"], r["variant"], *cells])
    lines += ["## Perplexity relative to the row's baseline (x)", ""]
    lines += [*_md_table(["checkpoint", "variant", *methods], rel), ""]
    lines += ["## Legend: what each column measures, and the anchor it follows", ""]
    for r in legend_rows(methods):
        anchor = f" (anchor: {r['anchor']})" if r["anchor"] else ""
        lines.append(f"- `{r['method']}`: {r['convention']}{anchor}")
    lines += [""]
    errors = [(r.label, e) for r in results for e in r.errors()]
    if errors:
        lines += ["## Errors", ""] + [f"- {label}: {e}" for label, e in errors] + [""]
    return "\n".join(lines)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_robustness(
    results: Sequence[CheckpointResult],
    methods: Sequence[str],
    out_dir: Path,
    meta: Mapping[str, Any],
) -> dict[str, Path]:
    """``robustness.{md,csv}`` (wide: one row per checkpoint), ``robustness_legend.csv`` (each
    method column's convention and anchor), ``robustness_long.csv`` (one row per checkpoint x
    method, with its convention, timings and the methods' records) and ``evaluation.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = robustness_rows(results, methods)
    legend = legend_rows(methods)
    convention = {r["method"]: r["convention"] for r in legend}
    files = {"csv": write_csv(out_dir / "robustness.csv", robustness_columns(methods), rows)}
    files["legend_csv"] = write_csv(out_dir / "robustness_legend.csv", LEGEND_COLUMNS, legend)
    md = out_dir / "robustness.md"
    md.write_text(robustness_markdown(results, methods, meta))
    files["md"] = md
    long_rows = [
        {
            "label": r.label,
            "variant": r.variant or "",
            "method": m.method,
            "convention": convention.get(m.method, ""),
            "ppl": m.ppl,
            "nll": m.nll,
            "tokens": m.tokens,
            "seconds": round(m.seconds, 3),
            "error": m.error or "",
            "details": json.dumps(m.details, default=str),
        }
        for r in results
        for m in r.methods
    ]
    files["long_csv"] = write_csv(
        out_dir / "robustness_long.csv",
        [
            "label",
            "variant",
            "method",
            "convention",
            "ppl",
            "nll",
            "tokens",
            "seconds",
            "error",
            "details",
        ],  # fmt: skip
        long_rows,
    )
    summary = {
        "meta": dict(meta),
        "methods": list(methods),
        "legend": legend,
        "checkpoints": [
            {k: v for k, v in vars(r).items() if k != "methods"}
            | {"methods": [vars(m) | {"ppl": m.ppl} for m in r.methods]}
            for r in results
        ],
    }
    files["json"] = out_dir / "evaluation.json"
    files["json"].write_text(json.dumps(summary, indent=1, default=str))
    return files


# ----------------------------------------------------------------------------- bar chart
def plot_robustness(results: Sequence[CheckpointResult], methods: Sequence[str]) -> Figure:
    """Grouped bars: one group per method, one colour per checkpoint, log y (perplexity).
    Failed or infinite entries have no bar and are marked with an x on the axis."""
    fig_width = min(18.0, max(6.0, 0.55 * len(methods) * max(1, len(results)) ** 0.5 + 3))
    fig = Figure(figsize=(fig_width, 4.5))
    ax = fig.subplots()
    n = max(1, len(results))
    width = 0.8 / n
    x = np.arange(len(methods))
    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    for i, r in enumerate(results):
        values = np.array([r.ppl(m) for m in methods], dtype=float)
        ok = np.isfinite(values) & (values > 0)
        color = cmap(i % 10) if n <= 10 else cmap(i / max(1, n - 1))
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos[ok], values[ok], width, label=r.label, color=color)
        if (~ok).any():
            ax.scatter(
                pos[~ok],
                np.ones((~ok).sum()),
                marker="x",
                color=color,
                clip_on=False,
                transform=ax.get_xaxis_transform(),
                zorder=3,
            )
    if any(np.isfinite(r.ppl(m)) and r.ppl(m) > 0 for r in results for m in methods):
        ax.set_yscale("log")  # (log of nothing is an error: every entry failed)
    ax.set_xticks(x, methods, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("perplexity (log)")
    ax.set_title("compression robustness (x: failed or infinite)")
    ax.legend(fontsize=7, ncol=max(1, n // 8 + 1))
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)  # Figure without pyplot: rendered by Agg, nothing kept open
    return path


# ----------------------------------------------------------------------------- loggers
def _cell(value: Any) -> Any:
    """W&B table cell: missing (empty, NaN) as None, so a column keeps one type."""
    if value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def log_results(
    loggers: Sequence[Any],
    results: Sequence[CheckpointResult],
    methods: Sequence[str],
    images: Mapping[str, Path],
) -> None:
    """W&B: the table and its legend (each column's convention and anchor) as ``wandb.Table``s,
    the charts and outlier figures as images, the perplexities in the run summary. Other
    Lightning loggers: the numbers as metrics."""
    from lightning.pytorch.loggers import WandbLogger

    columns = robustness_columns(methods)
    rows = robustness_rows(results, methods)
    scalars: dict[str, float] = {}
    for r in results:
        scalars[f"eval/{r.label}/val_loss"] = r.val_loss
        for m in r.methods:
            scalars[f"eval/{r.label}/ppl/{m.method}"] = m.ppl
    for lg in loggers:
        try:
            if isinstance(lg, WandbLogger):
                import wandb

                run = lg.experiment
                data = [[_cell(row[c]) for c in columns] for row in rows]
                payload: dict[str, Any] = {
                    "eval/robustness_table": wandb.Table(
                        columns=columns, data=data, allow_mixed_types=True
                    ),
                    "eval/robustness_legend": wandb.Table(
                        columns=list(LEGEND_COLUMNS),
                        data=[[r[c] for c in LEGEND_COLUMNS] for r in legend_rows(methods)],
                    ),
                }
                payload.update(
                    {f"eval/figures/{k}": wandb.Image(str(p)) for k, p in images.items()}
                )
                run.log(payload)
                run.summary.update({k: v for k, v in scalars.items() if math.isfinite(v)})
                for r in results:
                    if r.outliers:
                        run.summary.update(
                            {f"eval/{r.label}/outliers/{k}": v for k, v in r.outliers.items()}
                        )
            else:
                lg.log_metrics({k: v for k, v in scalars.items() if math.isfinite(v)}, step=0)
                lg.save()
        except Exception as err:  # noqa: BLE001  (logging must not lose the files on disk)
            log.warning("could not log the evaluation to %s: %s", type(lg).__name__, err)


def print_summary(
    results: list[CheckpointResult], methods: list[str], files: dict[str, Path]
) -> None:
    """The end-of-run summary on stdout: each checkpoint's val loss and baseline perplexity,
    and where the files are."""
    width = max([len(r.label) for r in results] + [10])
    lines = ["", "=== sysout evaluation ===", f"{'checkpoint':<{width}}  val loss  baseline ppl"]
    for r in results:
        if r.error:
            lines.append(f"{r.label:<{width}}  FAILED: {r.error}")
            continue
        vl = f"{r.val_loss:8.4f}" if math.isfinite(r.val_loss) else "       -"
        lines.append(f"{r.label:<{width}}  {vl}  {r.ppl(methods[0]):.4g}")
    lines += [f"{k}: {Path(p).resolve()}" for k, p in files.items()]
    print("\n".join(lines), flush=True)

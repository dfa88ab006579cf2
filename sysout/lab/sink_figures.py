"""The sink lab report's figures: statistics over training per variant, from the runs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sysout.lab.runs import LabRunResult  # noqa: E402
from sysout.outliers.keys import read_metric  # noqa: E402


def sink_layer_value(stats: dict[str, float], n_layer: int, what: str) -> float:
    """A per-layer figure reduced over layers: the sink (largest non-trigger share on position
    0), the value ratio at that layer, the largest residual ratio, and the weight the sink
    layer's non-trigger queries put off the real tokens (the extra slot / sink logit)."""
    layers = range(n_layer)
    share = [read_metric(stats, "heads", "first_token_share_non_trigger", i) for i in layers]
    sink = max(layers, key=lambda i: share[i])
    if what == "sink_share":
        return share[sink]
    if what == "sink_value_ratio":
        return read_metric(stats, "heads", "first_token_value_ratio", sink)
    if what == "residual_peak":
        return max(read_metric(stats, "activation", "first_token_norm_ratio", i) for i in layers)
    if what == "slot_share":  # same layer, same queries as the sink share: like with like
        return 1 - read_metric(stats, "heads", "row_weight_non_trigger", sink)
    raise ValueError(what)


def _mean_curves(runs: list[LabRunResult], value) -> dict[str, tuple[list[int], list[float]]]:
    """variant -> (steps, mean over seeds) of value(run, step)."""
    by_variant: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for step in sorted(run.stats):
            by_variant[run.variant][step].append(value(run, step))
    return {
        v: (sorted(d), [sum(d[s]) / len(d[s]) for s in sorted(d)])
        for v, d in sorted(by_variant.items())
    }


def _panel(ax, curves, title: str, ylabel: str, log: bool = False) -> None:
    for variant, (steps, values) in curves.items():
        style = "-" if variant in ("softmax", "sigmoid") else "--"
        ax.plot(steps, values, style, marker=".", label=variant)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def training_curves(runs: list[LabRunResult], path: Path, title: str) -> Path:
    """2 x 2: layer-0 share on position 0 (non-trigger queries), layer-0 value ratio,
    residual peak, validation loss gap; mean over seeds."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    _panel(
        axes[0, 0],
        _mean_curves(
            runs, lambda r, s: read_metric(r.stats[s], "heads", "first_token_share_non_trigger", 0)
        ),
        "sink share: layer 0, non-trigger queries, weight on position 0",
        "share",
    )
    _panel(
        axes[0, 1],
        _mean_curves(
            runs, lambda r, s: read_metric(r.stats[s], "heads", "first_token_value_ratio", 0)
        ),
        "value drain: layer 0, ||v(pos 0)|| / median ||v||",
        "ratio",
        log=True,
    )
    _panel(
        axes[1, 0],
        _mean_curves(runs, lambda r, s: sink_layer_value(r.stats[s], r.n_layer(), "residual_peak")),
        "residual peak: max over layers of ||h(pos 0)|| / median ||h||",
        "ratio",
    )
    gaps: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for step, val in run.val.items():
            if "val/loss_gap" in val:
                gaps[run.variant][step].append(val["val/loss_gap"])
    _panel(
        axes[1, 1],
        {
            v: (sorted(d), [sum(d[s]) / len(d[s]) for s in sorted(d)])
            for v, d in sorted(gaps.items())
        },
        "validation loss - true distribution's loss",
        "nats per token",
        log=True,
    )
    axes[0, 0].legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def longer_curves(runs: list[LabRunResult], path: Path) -> Path:
    """Per variant of the longer runs: each layer's share on position 0 and on the extra slot."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.8), squeeze=False)
    for ax, run in zip(axes[0], runs):
        steps = sorted(run.stats)
        for layer in range(run.n_layer()):
            _, share = run.series("heads", "first_token_share_non_trigger", layer)
            ax.plot(steps, share, "-", marker=".", label=f"L{layer} pos 0")
            _, weight = run.series("heads", "row_weight_non_trigger", layer)
            if any(w < 0.999 for w in weight):
                ax.plot(steps, [1 - w for w in weight], ":", marker=".", label=f"L{layer} slot")
        ax.set_title(f"{run.variant} (seed {run.seed})", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("non-trigger share")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

"""The massive lab report's figures: residual-peak trajectories against Guo et al.'s, and where
the sink and the largest activation sit without BOS."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sysout.lab.runs import LabRunResult  # noqa: E402

GuoCurves = dict[str, tuple[list[int], list[float]]]


def _band(runs: list[LabRunResult], value) -> tuple[list[int], list[float], list[float], list]:
    """(steps, mean, min, max) over the runs (seeds) of value(run, step), on common steps."""
    steps = sorted(set.intersection(*(set(r.stats) for r in runs)))
    per = [[value(r, s) for r in runs] for s in steps]
    return steps, [sum(v) / len(v) for v in per], [min(v) for v in per], [max(v) for v in per]


def growth_curves(
    groups: dict[str, list[LabRunResult]],
    layer_of: Callable[[LabRunResult], int],
    layer_name: str,
    tokens_per_step: int,
    guo: GuoCurves,
    guo_tokens_per_step: int,
    path: Path,
) -> Path:
    """BOS residual norm after the layer ``layer_of(run)`` picks (``layer_name``) relative to
    step 0, mean and range over seeds, per configuration, against tokens seen; Guo et al.'s
    (their layer 0) dashed on the same axis."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for name, runs in groups.items():
        if not runs:
            continue

        def growth(r: LabRunResult, s: int) -> float:
            start = r.metric("residual", "first_token_norm", layer_of(r), step=min(r.stats))
            return r.metric("residual", "first_token_norm", layer_of(r), step=s) / start

        steps, mean, low, high = _band(runs, growth)
        tokens = [max(s, 1) * tokens_per_step for s in steps]
        for ax in axes:
            (line,) = ax.plot(tokens if ax is axes[1] else steps, mean, "-", label=name)
            x = tokens if ax is axes[1] else steps
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    for name, (steps, values) in guo.items():
        tokens = [max(s, 1) * guo_tokens_per_step for s in steps]
        axes[1].plot(tokens, [v / values[0] for v in values], "--", label=f"Guo et al.: {name}")
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("tokens seen (log)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel(f"||h(BOS)|| after {layer_name} / its step-0 value")
        ax.grid(alpha=0.3)
    axes[0].set_title("this lab (mean and range over seeds)", fontsize=10)
    axes[1].set_title("against Guo et al. 2024 (width 256, batch 512), by tokens seen", fontsize=10)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def layer_curves(runs: list[LabRunResult], path: Path, title: str) -> Path:
    """Per layer: BOS residual norm and the median other token's, mean over seeds."""
    n = runs[0].n_layer()
    fig, axes = plt.subplots(1, n, figsize=(4.3 * n, 3.8), squeeze=False)
    for layer, ax in enumerate(axes[0]):
        for stat, style in (("first_token_norm", "-"), ("other_norm_median", ":")):
            steps, mean, low, high = _band(
                runs, lambda r, s, st=stat, la=layer: r.metric("residual", st, la, step=s)
            )
            (line,) = ax.plot(steps, mean, style, label=stat.replace("_", " "))
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("residual norm")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def position_histograms(
    groups: dict[str, list[LabRunResult]], layer_of, column: str, path: Path, title: str
) -> Path:
    """Per configuration: how often each position is ``column`` (``top_key``: each probe
    sequence's sink; ``argmax_position``: its largest |h|) at the last step, pooled over seeds
    and sequences, at the layer ``layer_of(run)`` picks."""
    names = [n for n, runs in groups.items() if runs]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        counts: Counter[int] = Counter()
        for run in groups[name]:
            layer = layer_of(run)
            counts.update(int(r[column]) for r in run.final if int(r["layer"]) == layer)
        top = max(counts) if counts else 0
        xs = list(range(min(top, 40) + 1))
        ax.bar(xs, [counts.get(x, 0) for x in xs], color="tab:blue")
        later = sum(c for x, c in counts.items() if x > 40)
        ax.set_title(f"{name}" + (f" (+{later} past 40)" if later else ""), fontsize=9)
        ax.set_xlabel("position")
    axes[0, 0].set_ylabel("sequences x seeds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return path


def by_config(runs: list[LabRunResult]) -> dict[str, list[LabRunResult]]:
    out: dict[str, list[LabRunResult]] = defaultdict(list)
    for run in runs:
        out[run.config].append(run)
    return dict(out)

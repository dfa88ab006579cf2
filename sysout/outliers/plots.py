"""Figures of a :class:`~sysout.outliers.probe.ProbeReport`.

Every function takes the report (never the trainer) and returns a Figure, so the training
callback and the offline outlier report draw the same pictures. Figures are built with the
object-oriented API (``matplotlib.figure.Figure``, no pyplot): nothing is registered globally,
so nothing leaks across probes, no display is needed (PNG rendering uses Agg), and a notebook's
backend is left alone.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .reports import ProbeReport

_LABEL_LIMIT = 24  # above this many tokens, axis labels would overlap: show indices only


def _title(report: ProbeReport, what: str) -> str:
    step = f", step {report.step}" if report.step is not None else ""
    return f"{what} ({report.variant}{step})"


def _positive(values: list[float]) -> np.ndarray:
    """Log axes cannot show 0 or NaN: mask them."""
    a = np.asarray(values, dtype=float)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def plot_layer_curves(report: ProbeReport) -> Figure:
    """Per-layer top-1/2/3 and median |x| on a log scale (the paper's Figure 10), for the block
    outputs (residual stream) and the MLP down-projection inputs."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharex=True)
    layers = np.arange(len(report.layers))
    for ax, kind, label in (
        (axes[0], "activation", "block output h_l"),
        (axes[1], "mlp_input", "MLP c_proj input"),
    ):
        stats = [getattr(lay, kind) for lay in report.layers]
        for attr, style in (("top1", "o-"), ("top2", "s-"), ("top3", "^-"), ("median", "k--")):
            ax.plot(layers, _positive([getattr(s, attr) for s in stats]), style, label=attr, ms=4)
        ax.axhline(report.thresholds.abs_threshold, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("|value|")
        ax.set_title(label)
        ax.set_xticks(layers)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(_title(report, "massive activations per layer"))
    fig.tight_layout()
    return fig


def _token_ticks(ax, tokens: list[str], axis: str) -> None:
    n = len(tokens)
    if n > _LABEL_LIMIT:
        return
    labels = [repr(t)[1:-1] for t in tokens]  # show spaces/newlines unambiguously
    if axis in ("x", "both"):
        ax.set_xticks(range(n))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
    if axis in ("y", "both"):
        ax.set_yticks(range(n))
        ax.set_yticklabels(labels, fontsize=6)


def plot_attention_heatmap(report: ProbeReport, layers: list[int] | None = None) -> Figure:
    """Head-mean attention weights of the probe sentence, one panel per layer (query rows, key
    columns). The weights are the variant's own (sigmoid and sink rows need not sum to one)."""
    sent = report.sentence
    if sent is None:
        raise ValueError("the report has no probe sentence")
    layers = list(range(sent.attention.shape[0])) if layers is None else list(layers)
    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    # Fixed margins (constrained layout costs seconds with a dozen labelled panels): token
    # labels on the left column and the bottom row only, one colour bar on the right.
    fig = Figure(figsize=(2.6 * cols + 1.6, 2.6 * rows + 1.0))
    fig.subplots_adjust(left=0.1, right=0.88, bottom=0.12, top=0.9, wspace=0.08, hspace=0.2)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    vmax = max(1.0, float(sent.attention.max()))
    image = None
    for n, (ax, layer) in enumerate(zip(axes.flat, layers)):
        image = ax.imshow(sent.attention[layer].numpy(), cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(f"layer {layer}", fontsize=8, pad=2)
        _token_ticks(ax, sent.tokens, "both")
        ax.tick_params(labelleft=n % cols == 0, labelbottom=n >= len(layers) - cols)
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, cax=fig.add_axes((0.9, 0.2, 0.015, 0.6)))
    fig.suptitle(_title(report, f"attention weights: {sent.text!r}"))
    return fig


def plot_activation_surface(report: ProbeReport, layer: int | None = None) -> Figure:
    """3-D surface of |h_l| of the probe sentence over tokens x feature dims, at ``layer``
    (default: the layer with the largest top-1 on the sentence)."""
    sent = report.sentence
    if sent is None:
        raise ValueError("the report has no probe sentence")
    layer = sent.max_layer if layer is None else layer
    z = sent.hidden[layer].abs().numpy()  # [T, C]
    t, c = z.shape
    xs, ys = np.meshgrid(np.arange(c), np.arange(t))
    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(xs, ys, z, cmap="coolwarm", rstride=1, cstride=1, linewidth=0)
    ax.set_xlabel("feature dim")
    ax.set_ylabel("token")
    ax.set_zlabel("|h|")
    _token_ticks(ax, sent.tokens, "y")
    top = np.unravel_index(int(z.argmax()), z.shape)
    ax.set_title(
        f"layer {layer}: max |h| = {z.max():.3g} at token {top[0]} "
        f"({sent.tokens[top[0]]!r}), dim {top[1]}",
        fontsize=9,
    )
    fig.suptitle(_title(report, "activation surface"))
    return fig


def plot_weight_ratios(report: ProbeReport) -> Figure:
    """Per-row peak ratio max|W[r,:]| / mean|W[r,:]| of each layer's MLP c_proj (rows = residual
    feature dims), with the activation-outlier dims of the probe marked."""
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    n = len(report.layers)
    for lay in report.layers:
        ratios = lay.c_proj.row_ratios.numpy()
        ax.plot(ratios, lw=0.7, color=cmap(lay.index / max(1, n - 1)), label=f"layer {lay.index}")
        if lay.c_proj.outlier_rows:
            rows = lay.c_proj.outlier_rows
            ax.scatter(rows, ratios[rows], s=14, color=cmap(lay.index / max(1, n - 1)), zorder=3)
    for dim in sorted({d for lay in report.layers for d in lay.activation.dims}):
        ax.axvline(dim, color="red", lw=0.8, ls="--", alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("c_proj output row = residual feature dim (red: activation-outlier dims)")
    ax.set_ylabel("row max / mean |W|")
    if n <= 12:
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_title(_title(report, "MLP c_proj weight outliers"))
    fig.tight_layout()
    return fig


def report_figures(report: ProbeReport) -> dict[str, Figure]:
    """All figures of a report by their metric group and name (sentence figures only when the
    report has a sentence)."""
    figs = {
        "activation/layer_curves": plot_layer_curves(report),
        "weight/c_proj_row_ratios": plot_weight_ratios(report),
    }
    if report.sentence is not None:
        figs["attention/sentence_heatmap"] = plot_attention_heatmap(report)
        figs["activation/sentence_surface"] = plot_activation_surface(report)
    return figs


def render_png(fig: Figure, dpi: int = 90) -> bytes:
    """PNG bytes of a figure (rendered by Agg whatever the session's backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


__all__ = [
    "plot_activation_surface",
    "plot_attention_heatmap",
    "plot_layer_curves",
    "plot_weight_ratios",
    "render_png",
    "report_figures",
]

"""The massive lab's report (experiment=massive_lab): a learned residual-state peak, its controls
and factors, and where sinks and peaks go without BOS, over several seeds, read from the
committed per-run files alone (:mod:`sysout.lab.collect`); written by ``python -m
sysout.lab.report``. Every criterion is stated beside its verdict, every figure with its spread.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sysout.lab.massive_claims import CONTROLS, FACTORS, claims, seeded
from sysout.lab.massive_figures import (
    by_config,
    growth_curves,
    layer_curves,
    position_histograms,
)
from sysout.lab.massive_metrics import (
    APART,
    GUO_TOKENS_PER_STEP,
    ON_BOS,
    PEAK_GROWTH,
    SINK,
    PeakLayers,
    attention_write_share,
    bos_growth,
    bos_norm,
    bos_over_median,
    first_query_weight,
    largest_class,
    peak_name,
    read_guo,
    sink_layer,
    sink_share,
    slot_share,
    sun_layer,
    sun_ratio,
    token_sink_share,
)
from sysout.lab.plans import BASELINE, configs, parking_variants
from sysout.lab.runs import LabRunResult, shown
from sysout.lab.text import coverage_line, markdown_table, spread, sweep_line


def _plan_index(planned: list[str], name: str) -> int:
    return planned.index(name) if name in planned else len(planned)


def bos_table(groups: dict[str, list[LabRunResult]], at: PeakLayers, about: dict[str, str]):
    head = [
        "configuration",
        "what it changes",
        "seeds",
        "peak layer (per seed; none: BOS never stands out)",
        f"BOS norm after {at.name}",
        "growth vs step 0",
        "BOS / median token",
        f"max abs h of {at.name} on BOS (share of sequences)",
        f"Sun top-1 / median, {at.name}",
        f"{at.name}'s attention at BOS: query 0's weight",
        "its write / BOS norm after that layer",
        "sink layer: top-key share (non-trigger)",
        "loss gap",
    ]
    rows = []
    for name, runs in groups.items():
        runs = seeded(runs)
        sinks = Counter(sink_layer(r) for r in runs).most_common(1)[0][0]
        rows.append(
            [
                name,
                about.get(name, ""),
                str(len(runs)),
                ", ".join(map(peak_name, runs)),
                spread([bos_norm(r, at(r)) for r in runs], 1),
                spread([bos_growth(r, at(r)) for r in runs]),
                spread([bos_over_median(r, at(r)) for r in runs]),
                spread([r.metric("residual", "argmax_first_token_share", at(r)) for r in runs]),
                spread([r.metric("activation", "ratio", at(r)) for r in runs], 1),
                spread([first_query_weight(r, at(r)) for r in runs]),
                spread([attention_write_share(r, at(r)) for r in runs]),
                f"L{sinks}: " + spread([sink_share(r) for r in runs]),
                spread([r.val_metric("val/loss_gap") for r in runs], 3),
            ]
        )
    return markdown_table(head, rows)


def _final_counts(runs: list[LabRunResult], column: str, layer_of) -> Counter:
    """Positions in ``column`` at the last step over the runs' probe sequences, each run at
    ``layer_of(run)``."""
    return Counter(
        int(row[column]) for run in runs for row in run.final if int(row["layer"]) == layer_of(run)
    )


def _mode(counts: Counter) -> str:
    if not counts:
        return "—"
    position, count = counts.most_common(1)[0]
    return f"{position} ({count / sum(counts.values()):.2f})"


def nobos_sink_table(groups: dict[str, list[LabRunResult]]) -> list[str]:
    """Where each variant's attention goes without BOS: the slot, one token, or nowhere."""
    head = [
        "variant",
        "seeds",
        "sink layer (mode): most on one place, a token or the slot",
        "there: slot's share of the row (non-trigger)",
        "there: top real key's share of the row",
        "there: top real key's share of the weight on tokens",
        "top real key's share of the row, largest over layers",
        "top key at position 0 (share of sequences)",
        "modal top key: position (share of sequences x seeds)",
        "loss gap",
    ]
    rows = []
    for name, runs in groups.items():
        runs = seeded(runs)
        at = lambda r, group, stat: r.metric(group, stat, sink_layer(r))
        parks = name in parking_variants()
        on_tokens = spread([at(r, "heads", "top_key_share_of_weight_non_trigger") for r in runs])
        rows.append(
            [
                name,
                str(len(runs)),
                f"L{Counter(sink_layer(r) for r in runs).most_common(1)[0][0]}",
                spread([slot_share(r, sink_layer(r)) for r in runs]) if parks else "—",
                spread([sink_share(r) for r in runs]),
                on_tokens if parks else "= row",
                spread([token_sink_share(r) for r in runs]),
                spread([at(r, "attention", "top_key_first_token_share") for r in runs]),
                _mode(_final_counts(runs, "top_key", sink_layer)),
                spread([r.val_metric("val/loss_gap") for r in runs], 3),
            ]
        )
    return markdown_table(head, rows)


def nobos_peak_table(groups: dict[str, list[LabRunResult]]) -> list[str]:
    """Where each variant's largest activation sits without BOS, read at the layer with the
    largest Sun top-1 / median, seed by seed."""
    head = [
        "variant",
        "seeds",
        "Sun top-1 / median, largest over layers (per seed)",
        "its layer (per seed)",
        "there: largest abs h (mean over sequences)",
        "held by the run's modal dimension (share of sequences)",
        "its commonest token class (share of sequences, per seed)",
        "modal position (share of sequences x seeds)",
    ]
    rows = []
    for name, runs in groups.items():
        runs = seeded(runs)
        rows.append(
            [
                name,
                str(len(runs)),
                ", ".join(f"{sun_ratio(r):.1f}" for r in runs),
                ", ".join(str(sun_layer(r)) for r in runs),
                spread([r.metric("residual", "argmax_abs", sun_layer(r)) for r in runs], 1),
                spread([r.metric("residual", "argmax_dim_share", sun_layer(r)) for r in runs]),
                ", ".join("{} {:.2f}".format(*largest_class(r, sun_layer(r))) for r in runs),
                _mode(_final_counts(runs, "argmax_position", sun_layer)),
            ]
        )
    return markdown_table(head, rows)


def _figures(groups, nobos, base, at, meta, results, figdir) -> list[tuple[str, Path]]:
    tokens = int(meta.get("block_size", 256)) * int(meta.get("batch_size", 32))
    figs = []
    if base:
        controls = {k: groups[k] for k in CONTROLS if k in groups}
        factors = {k: groups[k] for k in (BASELINE, *FACTORS) if k in groups}
        figs += [
            (
                "BOS residual norm growth: controls, against Guo et al.",
                growth_curves(
                    controls,
                    at,
                    at.name,
                    tokens,
                    read_guo(results),
                    GUO_TOKENS_PER_STEP,
                    figdir / "growth-controls.png",
                ),
            ),
            (
                "BOS residual norm growth: sysout's departures from Guo et al.",
                growth_curves(
                    factors,
                    at,
                    at.name,
                    tokens,
                    {},
                    GUO_TOKENS_PER_STEP,
                    figdir / "growth-factors.png",
                ),
            ),
            (
                "softmax, every layer: BOS and the median other token",
                layer_curves(base, figdir / "layers-softmax.png", "softmax with BOS"),
            ),
        ]
    if nobos:
        figs += [
            (
                "without BOS: where each sequence's sink sits (top key at the sink layer)",
                position_histograms(
                    nobos,
                    sink_layer,
                    "top_key",
                    figdir / "nobos-sinks.png",
                    "top key per probe sequence, last step",
                ),
            ),
            (
                "without BOS: where each sequence's largest activation sits (sink layer)",
                position_histograms(
                    nobos,
                    sink_layer,
                    "argmax_position",
                    figdir / "nobos-argmax.png",
                    "position of max |h|",
                ),
            ),
        ]
    return figs


def write_report(runs: list[LabRunResult], results: Path, md: Path) -> Path:
    """The massive lab's markdown and figures from its runs (read from ``results``)."""
    found = by_config([r for r in runs if r.plan in ("controls", "factors")])
    order = [*CONTROLS, *FACTORS]
    groups = {k: found[k] for k in order if k in found}
    groups |= {k: v for k, v in found.items() if k not in order}
    nobos = by_config([r for r in runs if r.plan == "nobos"])  # configurations are variants
    planned = [c.name for c in configs("massive_lab", "nobos")]  # softmax first, as planned
    nobos = dict(sorted(nobos.items(), key=lambda kv: _plan_index(planned, kv[0])))
    # what each with-BOS configuration changes (a no-BOS run shares its name, not its setting)
    about = {r.config: r.meta.get("about", "") for v in groups.values() for r in v}
    base = seeded(groups.get(BASELINE, []))
    at = PeakLayers.of(base)
    figs = _figures(groups, nobos, base, at, runs[0].meta, results, md.with_suffix(""))
    seeds = sorted({r.seed for r in runs})
    lines = [
        "# Massive-activation lab: a learned residual-state peak on one CPU thread",
        "",
        f"Written by `python -m sysout.lab.report {shown(results)}` from the per-run files "
        "committed beside it (`runs/<plan>/<config>_s<seed>.{csv,final.csv,json}`), which `make "
        "massive-lab` writes as its runs finish; every figure below is measured from those files."
        " Set-up, metrics and every departure from Guo et al.'s setting: "
        "[docs/lab.md](../lab.md#the-massive-activation-lab).",
        "",
        f"Runs: {len(runs)} ({sum(map(len, groups.values()))} with BOS, "
        f"{sum(map(len, nobos.values()))} without), seeds {', '.join(map(str, seeds))}, "
        f"{max(r.steps for r in runs)} steps each; {sweep_line(runs, results)}",
        "",
        coverage_line("massive_lab", runs, "make massive-lab"),
        "",
        "Figures are mean ± sd [min–max] over seeds. Criteria: peak = BOS norm after the peak "
        f"layer > {PEAK_GROWTH}x its step-0 value; controls apart = softmax's BOS norm >= "
        f"{APART}x the control's for the same seed; on BOS = the layer's largest |h| on BOS in "
        f">= {ON_BOS:.0%} of sequences; sink = one real key > {SINK} of what the non-trigger rows "
        "spend (of the weight on tokens for sigmoid and ReLU attention, whose rows need not sum "
        "to one; of the whole row for kv_bias, sink_logit and softmax1, so weight parked on "
        "their slot is no token's sink); peak layer = "
        "the layer where BOS's norm stands out most from the median other token's at the end, "
        "chosen seed by seed; a control or factor is read at softmax's peak layer of its seed, "
        "except in the factor verdicts, which read each run at its own (a factor may move it). "
        "Sun et al.'s element rule (|h| > 100 and 1000x the median) is not expected at this "
        "width: the lab reports norm ratios and Sun's top-1/median instead.",
        "",
        "## Verdicts",
        "",
        *claims(groups, nobos, read_guo(results)),
        "",
        f"## With BOS: controls and factors (at softmax's peak layer of the same seed: "
        f"{at.per_seed() or at.name})",
        "",
        *bos_table(groups, at, about),
    ]
    if nobos:
        lines += ["", "## Without BOS (`data.bos=false`)", "", "### Where attention goes", ""]
        lines += [*nobos_sink_table(nobos), "", "### Where the largest activation sits", ""]
        lines += [*nobos_peak_table(nobos)]
    lines += ["", "## Figures", ""]
    for title, fig in figs:
        lines += [f"### {title}", "", f"![{title}]({fig.relative_to(md.parent).as_posix()})", ""]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines).rstrip() + "\n")
    return md

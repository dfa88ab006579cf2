"""The massive lab's report (experiment=massive_lab): a learned residual-state peak, its controls
and factors, and where sinks and peaks go without BOS, over several seeds, read from the
committed per-run files alone (:mod:`sysout.lab.collect`); written by ``python -m
sysout.lab.report``. Every criterion is stated beside its verdict, every figure with its spread.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

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
    first_step_above,
    peak_layer,
    read_guo,
    sink_layer,
    sink_share,
    sun_ratio,
)
from sysout.lab.plans import BASELINE, parking_variants
from sysout.lab.runs import LabRunResult, shown
from sysout.lab.text import coverage_line, fmt, markdown_table, spread, sweep_line

CONTROLS = ("softmax", "sgd", "relu_attention", "clip")
FACTORS = ("gelu", "tied", "gpt2_init")


def _seeded(runs: list[LabRunResult]) -> list[LabRunResult]:
    return sorted(runs, key=lambda r: r.seed)


def bos_table(groups: dict[str, list[LabRunResult]], at: PeakLayers, about: dict[str, str]):
    head = [
        "configuration",
        "what it changes",
        "seeds",
        "peak layer (per seed)",
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
        runs = _seeded(runs)
        sinks = Counter(sink_layer(r) for r in runs).most_common(1)[0][0]
        rows.append(
            [
                name,
                about.get(name, ""),
                str(len(runs)),
                ", ".join(str(peak_layer(r)) for r in runs),
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


def _final_counts(runs: list[LabRunResult], column: str) -> Counter:
    """Positions in ``column`` at the last step over the runs' probe sequences, each run at its
    sink layer."""
    return Counter(
        int(row[column])
        for run in runs
        for row in run.final
        if int(row["layer"]) == sink_layer(run)
    )


def _mode(counts: Counter) -> str:
    if not counts:
        return "—"
    position, count = counts.most_common(1)[0]
    return f"{position} ({count / sum(counts.values()):.2f})"


def nobos_table(groups: dict[str, list[LabRunResult]]) -> list[str]:
    head = [
        "variant",
        "seeds",
        "sink layer (mode)",
        "top-key share of row (non-trigger)",
        "top key at position 0 (share of sequences)",
        "modal top key: position (share of sequences x seeds)",
        "weight off the tokens (slot)",
        "max abs h: modal position (share)",
        "Sun top-1 / median (max over layers)",
        "loss gap",
    ]
    rows = []
    for name, runs in groups.items():
        runs = _seeded(runs)
        at = lambda r, group, stat: r.metric(group, stat, sink_layer(r))
        slot = (
            spread([1 - at(r, "heads", "row_weight_non_trigger") for r in runs])
            if name in parking_variants()
            else "—"
        )
        rows.append(
            [
                name,
                str(len(runs)),
                f"L{Counter(sink_layer(r) for r in runs).most_common(1)[0][0]}",
                spread([sink_share(r) for r in runs]),
                spread([at(r, "attention", "top_key_first_token_share") for r in runs]),
                _mode(_final_counts(runs, "top_key")),
                slot,
                _mode(_final_counts(runs, "argmax_position")),
                spread([sun_ratio(r) for r in runs], 1),
                spread([r.val_metric("val/loss_gap") for r in runs], 3),
            ]
        )
    return markdown_table(head, rows)


def _peak_claims(base: list[LabRunResult], at: PeakLayers) -> list[str]:
    growth = [bos_growth(r, at(r)) for r in base]
    on = [r.metric("residual", "argmax_first_token_share", at(r)) for r in base]
    dims = Counter(int(r.metric("residual", "argmax_dim", at(r))) for r in base)
    dim_share = [r.metric("residual", "argmax_dim_share", at(r)) for r in base]
    grows = "supported" if min(growth) > PEAK_GROWTH else "not supported"
    return [
        f"- **A residual-state peak grows on BOS** (softmax, AdamW: BOS norm after each seed's "
        f"peak layer ({at.per_seed()}), > {PEAK_GROWTH}x its step-0 value in every seed): "
        f"{grows} — "
        f"{spread(growth)} ({len(base)} seeds; per seed "
        f"{', '.join(fmt(g) for g in growth)}); BOS / median token "
        f"{spread([bos_over_median(r, at(r)) for r in base])}.",
        f"- **The peak layer's largest activation sits on BOS** (in >= {ON_BOS:.0%} of the "
        f"probe sequences, every seed): {'supported' if min(on) >= ON_BOS else 'not supported'} "
        f"— {spread(on)}; the modal dimension holds it in {spread(dim_share)} of the sequences, "
        f"{len(dims)} distinct modal dimension(s) over {len(base)} seeds.",
    ]


def _guo_line(
    base: list[LabRunResult], at: PeakLayers, guo: dict[str, tuple[list[int], list[float]]]
) -> list[str]:
    """Guo et al.'s AdamW growth at the end, at the tokens this lab's runs see, and the tokens
    they needed for this lab's growth."""
    if "adam" not in guo or not base:
        return []
    steps, values = guo["adam"]
    meta = base[0].meta
    tokens = base[0].steps * int(meta.get("block_size", 256)) * int(meta.get("batch_size", 32))
    theirs = min(steps, key=lambda s: abs(s * GUO_TOKENS_PER_STEP - tokens))
    theirs_growth = values[steps.index(theirs)] / values[0]
    ours = statistics.fmean(bos_growth(r, at(r)) for r in base)
    reach = next((s for s, v in zip(steps, values) if v / values[0] >= ours), None)
    needed = (
        f"they reach this lab's mean growth ({ours:.2f}x) at step {reach} "
        f"({reach * GUO_TOKENS_PER_STEP / 1e9:.2f}B tokens, "
        f"{reach * GUO_TOKENS_PER_STEP / tokens:.0f}x this lab's)"
        if reach is not None
        else f"they never reach this lab's mean growth ({ours:.2f}x)"
    )
    return [
        f"- **Against Guo et al.** (their committed AdamW run, width 256, batch 512, lr 3e-4, "
        f"layer 0): {values[-1] / values[0]:.2f}x its step-0 value at step {steps[-1]} "
        f"({steps[-1] * GUO_TOKENS_PER_STEP / 1e9:.1f}B tokens); at the {tokens / 1e6:.0f}M "
        f"tokens this lab's runs see (their step {theirs}) it had grown {theirs_growth:.2f}x; "
        f"{needed}: "
        "the lab's higher rate and smaller batch grow the peak on far fewer tokens (figure "
        "below)."
    ]


def _control_claim(base: list[LabRunResult], runs: list[LabRunResult], name: str, at: PeakLayers):
    by_seed = {r.seed: r for r in runs}
    pairs = [(r, by_seed[r.seed]) for r in base if r.seed in by_seed]
    if not pairs:
        return []
    ratio = [bos_norm(r, at(r)) / bos_norm(c, at(c)) for r, c in pairs]
    grown = [bos_growth(c, at(c)) for _, c in pairs]
    if name == "clip":
        ok = min(grown) > PEAK_GROWTH
        what, crit = "Gradient clipping at 1.0 leaves the peak", f"clipped growth > {PEAK_GROWTH}x"
        same = sum(r.final_stats() == c.final_stats() for r, c in pairs)
        logged = [r.meta["grad_norm_max"] for r, _ in pairs if "grad_norm_max" in r.meta]
        norms = (
            f"; the largest gradient norm the unclipped runs logged (every "
            f"{pairs[0][0].meta.get('log_every_n_steps', 50)} steps) is {spread(logged, 3)}"
            if logged
            else ""
        )
        return [
            f"- **{what}** ({crit}, {at.name}): {'supported' if ok else 'not supported'} — "
            f"clip's growth {spread(grown)}, softmax / clip {spread(ratio)}; the clipped and "
            f"unclipped runs end with identical figures in {same} of {len(pairs)} seed pairs"
            f"{norms}: clipping by norm at 1.0 only acts on a gradient norm above 1.0."
        ]
    else:
        ok = min(ratio) >= APART
        flat = {"sgd": "SGD", "relu_attention": "ReLU attention"}
        what = f"{flat.get(name, name)} keeps the BOS norm flat"
        crit = f"softmax's BOS norm >= {APART}x the control's, seed by seed"
    short = [
        f"seed {r.seed}: softmax {fmt(bos_growth(r, at(r)))}x, {name} {fmt(bos_growth(c, at(c)))}x"
        for (r, c), x in zip(pairs, ratio)
        if x < APART
    ]
    why = f" Growth vs step 0 where the gap is under {APART}x: {'; '.join(short)}." if short else ""
    weight = lambda rs: spread([first_query_weight(r, at(r)) for r in rs])
    share = lambda rs: spread([attention_write_share(r, at(r)) for r in rs])
    controls = [c for _, c in pairs]
    return [
        f"- **{what}** ({crit}, {at.name}): {'supported' if ok else 'not supported'} — "
        f"softmax / {name}: {spread(ratio)} (per seed {', '.join(fmt(x) for x in ratio)}); "
        f"{name}'s own growth {spread(grown)} ({len(pairs)} seed pairs). What writes BOS's "
        f"norm at {at.name}: query 0's weight on itself {weight(controls)} (softmax "
        f"{weight(base)}), and that one attention write is {share(controls)} of the norm "
        f"(softmax {share(base)}).{why}"
    ]


def _factor_claim(base: list[LabRunResult], runs: list[LabRunResult], name: str, at: PeakLayers):
    if not runs:
        return []
    when = lambda rs: ", ".join(
        "never" if (s := first_step_above(r, at(r), 1.5)) is None else str(s) for r in rs
    )
    return [
        f"- **Factor {name}**: BOS growth after {at.name} "
        f"{spread([bos_growth(r, at(r)) for r in runs])} vs softmax "
        f"{spread([bos_growth(r, at(r)) for r in base])}; peak layer per seed "
        f"{[peak_layer(r) for r in _seeded(runs)]} vs {[peak_layer(r) for r in base]}; first "
        f"step above 1.5x: {when(_seeded(runs))} vs {when(base)}."
    ]


def _nobos_claims(nobos: dict[str, list[LabRunResult]]) -> list[str]:
    soft = nobos.get(BASELINE, [])
    if not soft:
        return []
    verdict = "supported" if min(map(sink_share, soft)) > SINK else "not supported"
    out = [
        f"- **Without BOS, softmax still makes a sink** (top key > {SINK} of the non-trigger "
        f"rows in every seed): {verdict} — {spread([sink_share(r) for r in soft])}; where it "
        "sits: the table and the figure below."
    ]
    for variant, runs in nobos.items():
        if variant == BASELINE:
            continue
        no_sink = max(map(sink_share, runs)) < SINK
        mean = lambda group: statistics.fmean(map(sun_ratio, group))
        lower = mean(runs) < 0.5 * mean(soft)
        out.append(
            f"- **{variant} without BOS**: sink prevented (top-key share < {SINK} in every "
            f"seed): {'yes' if no_sink else 'no'} ({spread([sink_share(r) for r in runs])} vs "
            f"softmax {spread([sink_share(r) for r in soft])}); peak reduced (Sun top-1/median "
            f"below half of softmax's, mean over seeds): {'yes' if lower else 'no'} "
            f"({spread([sun_ratio(r) for r in runs], 1)} vs "
            f"{spread([sun_ratio(r) for r in soft], 1)})."
        )
    return out


def claims(
    groups: dict[str, list[LabRunResult]],
    nobos: dict[str, list[LabRunResult]],
    guo: dict[str, tuple[list[int], list[float]]] | None = None,
) -> list[str]:
    """The verdicts, each with its criterion and the per-seed figures behind it."""
    base = _seeded(groups.get(BASELINE, []))
    if not base:
        return ["- No softmax baseline runs: nothing to judge."]
    at = PeakLayers.of(base)
    out = _peak_claims(base, at) + _guo_line(base, at, guo or {})
    for name in CONTROLS[1:]:
        out += _control_claim(base, groups.get(name, []), name, at)
    for name in FACTORS:
        out += _factor_claim(base, groups.get(name, []), name, at)
    return out + _nobos_claims(nobos)


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
    about = {r.config: r.meta.get("about", "") for r in runs}
    base = _seeded(groups.get(BASELINE, []))
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
        f">= {ON_BOS:.0%} of sequences; sink = top key > {SINK} of the non-trigger rows (each "
        "row normalised to one: like with like for sigmoid and ReLU attention); peak layer = "
        "the layer where BOS's norm stands out most from the median other token's at the end, "
        "chosen seed by seed; a control or factor is read at softmax's peak layer of its seed. "
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
        lines += ["", "## Without BOS (`data.bos=false`)", "", *nobos_table(nobos)]
    lines += ["", "## Figures", ""]
    for title, fig in figs:
        lines += [f"### {title}", "", f"![{title}]({fig.relative_to(md.parent).as_posix()})", ""]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines).rstrip() + "\n")
    return md

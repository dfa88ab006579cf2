"""The massive lab's verdicts: each claim with its criterion, the per-seed figures behind it and,
where it fails, why (functions of the committed runs; :mod:`sysout.lab.massive_report` writes
them into the report)."""

from __future__ import annotations

import math
import statistics
from collections import Counter

from sysout.lab.massive_metrics import (
    APART,
    CHANGED,
    GUO_TOKENS_PER_STEP,
    ON_BOS,
    PEAK_GROWTH,
    SINK,
    STANDOUT,
    PeakLayers,
    attention_write_share,
    bos_growth,
    bos_norm,
    bos_over_median,
    bos_standout,
    changed,
    first_query_weight,
    formed_step,
    peak_layer,
    peak_name,
    sun_ratio,
    token_sink_share,
)
from sysout.lab.plans import BASELINE
from sysout.lab.runs import LabRunResult
from sysout.lab.text import fmt, spread

CONTROLS = ("softmax", "sgd", "relu_attention", "clip")
FACTORS = ("gelu", "tied", "gpt2_init")


def seed_list(runs: list[LabRunResult]) -> str:
    return ", ".join(str(r.seed) for r in seeded(runs))


def seeded(runs: list[LabRunResult]) -> list[LabRunResult]:
    return sorted(runs, key=lambda r: r.seed)


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


def _pairs(base: list[LabRunResult], runs: list[LabRunResult]):
    """(softmax, other) runs of the same seed."""
    by_seed = {r.seed: r for r in runs}
    return [(r, by_seed[r.seed]) for r in base if r.seed in by_seed]


def _control_claim(base: list[LabRunResult], runs: list[LabRunResult], name: str, at: PeakLayers):
    pairs = _pairs(base, runs)
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


def _later(softmax: int | None, factor: int | None) -> float:
    """How many times later the factor's peak forms than softmax's (inf: it never does)."""
    if softmax is None or factor is None:
        return 1.0 if softmax == factor else (math.inf if factor is None else 0.0)
    return factor / max(softmax, 1)


def _factor_claim(base: list[LabRunResult], runs: list[LabRunResult], name: str):
    """Does one of sysout's departures from Guo change the peak's size, layer or timing? Each
    run is read at its own peak layer, seed by seed against softmax (a factor may move it)."""
    pairs = _pairs(base, runs)
    if not pairs:
        return []
    mine = [f for _, f in pairs]
    size = [bos_standout(f) / bos_standout(s) for s, f in pairs]
    # a layer is only a peak's where BOS stands out: a run without one has no layer to move
    peaked = [(s, f) for s, f in pairs if formed_step(s) is not None and formed_step(f) is not None]
    moved = sum(peak_layer(f) != peak_layer(s) for s, f in peaked)
    later = [_later(formed_step(s), formed_step(f)) for s, f in pairs]
    step = lambda r: "never" if (s := formed_step(r)) is None else str(s)
    size_word = {1: "yes, larger", -1: "yes, smaller", 0: "no"}[changed(size)]
    time_word = {1: "yes, later", -1: "yes, earlier", 0: "no"}[changed(later)]
    if all(map(math.isinf, later)):
        time_word = "yes, it never forms"
    return [
        f"- **Factor {name}** (seed by seed against softmax, each at its own peak layer; a "
        f"change counts when every seed pair differs by more than {CHANGED}x the same way): "
        f"changes the peak's size (BOS / median token): {size_word} — {name} "
        f"{spread([bos_standout(f) for f in mine])} vs softmax "
        f"{spread([bos_standout(s) for s, _ in pairs])}, {name} / softmax per seed "
        f"{', '.join(fmt(x) for x in size)}; moves the peak layer (every seed pair where both "
        f"have a peak): {'yes' if peaked and moved == len(peaked) else 'no'} — in {moved} of "
        f"{len(peaked)} (per seed {', '.join(map(peak_name, mine))} vs "
        f"{', '.join(peak_name(s) for s, _ in pairs)}); changes when it forms (first step "
        f"BOS > {STANDOUT}x the median token): {time_word} — per seed "
        f"{', '.join(map(step, mine))} vs {', '.join(step(s) for s, _ in pairs)}."
    ]


def _nobos_claims(nobos: dict[str, list[LabRunResult]]) -> list[str]:
    soft = nobos.get(BASELINE, [])
    if not soft:
        return []
    verdict = "supported" if min(map(token_sink_share, soft)) > SINK else "not supported"
    out = [
        f"- **Without BOS, softmax still makes a sink** (one real key takes > {SINK} of the "
        f"non-trigger rows in some layer, every seed): {verdict} — "
        f"{spread([token_sink_share(r) for r in soft])} (seeds {seed_list(soft)}); where it "
        "sits: the table and the figure below."
    ]
    for variant, runs in nobos.items():
        if variant == BASELINE:
            continue
        no_sink = max(map(token_sink_share, runs)) < SINK
        mean = lambda group: statistics.fmean(map(sun_ratio, group))
        lower = mean(runs) < 0.5 * mean(soft)
        out.append(
            f"- **{variant} without BOS**: sink on a token prevented (no real key takes as much as "
            f"{SINK} of the rows in any layer, every seed): {'yes' if no_sink else 'no'} "
            f"({spread([token_sink_share(r) for r in runs])} vs softmax "
            f"{spread([token_sink_share(r) for r in soft])}); peak reduced (Sun top-1/median "
            f"below half of softmax's, mean over seeds): {'yes' if lower else 'no'} "
            f"({spread([sun_ratio(r) for r in runs], 1)} vs "
            f"{spread([sun_ratio(r) for r in soft], 1)}; seeds {seed_list(runs)} vs "
            f"{seed_list(soft)})."
        )
    return out


def claims(
    groups: dict[str, list[LabRunResult]],
    nobos: dict[str, list[LabRunResult]],
    guo: dict[str, tuple[list[int], list[float]]] | None = None,
) -> list[str]:
    """The verdicts, each with its criterion and the per-seed figures behind it."""
    base = seeded(groups.get(BASELINE, []))
    if not base:
        return ["- No softmax baseline runs: nothing to judge."]
    at = PeakLayers.of(base)
    out = _peak_claims(base, at) + _guo_line(base, at, guo or {})
    for name in CONTROLS[1:]:
        out += _control_claim(base, groups.get(name, []), name, at)
    for name in FACTORS:
        out += _factor_claim(base, groups.get(name, []), name)
    return out + _nobos_claims(nobos)

"""How the lab's reports write figures: spreads over seeds, markdown tables, the sweep's line."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from sysout.lab.plans import DEFAULT_SEEDS, PLANS, lab_plan
from sysout.lab.runs import LabRunResult

ENDED = "%Y-%m-%d %H:%M:%S"  # a sweep's end, as sweep.json records it (local time)


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:.0f}"


def spread(values: list[float], digits: int = 2) -> str:
    """``mean ± sd [min–max]`` over seeds (one value as it is, none as —)."""
    if not values:
        return "—"
    if len(values) == 1:
        return fmt(values[0], digits)
    sd = statistics.stdev(values)
    return (
        f"{fmt(statistics.fmean(values), digits)} ± {fmt(sd, digits)} "
        f"[{fmt(min(values), digits)}–{fmt(max(values), digits)}]"
    )


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def busy_seconds(sweeps: list[dict]) -> float:
    """Wall time the sweeps cover: invocations that ran side by side count once (each spans
    ``wall_s`` up to its ``ended`` time; one without an end time counts alone)."""
    total = sum(s["wall_s"] for s in sweeps if "ended" not in s)
    reach = -math.inf
    ends = [
        (time.mktime(time.strptime(s["ended"], ENDED)), s["wall_s"]) for s in sweeps if "ended" in s
    ]
    for start, end in sorted((end - wall, end) for end, wall in ends):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def sweep_time(results: Path) -> tuple[int, float, int]:
    """From ``sweep.json`` beside the runs: (most runs at a time, sweep wall time in seconds,
    number of invocations); (2, 0, 0) when no sweep was recorded."""
    path = results / "sweep.json"
    sweeps = json.loads(path.read_text())["sweeps"] if path.is_file() else []
    return max((s["jobs"] for s in sweeps), default=2), busy_seconds(sweeps), len(sweeps)


def sweep_line(runs: list[LabRunResult], results: Path) -> str:
    """Run time, sweep wall time and machine, from the runs' records and ``sweep.json``."""
    jobs, wall, invocations = sweep_time(results)
    total = sum(r.wall_s for r in runs)
    meta = runs[0].meta
    return (
        f"{total / 3600:.1f} CPU-hours of run time (one thread per run, {jobs} at a time); sweep "
        f"wall time {wall / 3600:.1f} h over {invocations} invocation(s), "
        "on two cores shared with other work (wall times vary). Machine: "
        f"{meta.get('machine', '?')}, torch {meta.get('torch', '?')}."
    )


def _seed_ranges(seeds: list[int]) -> str:
    """1, 2, 3, 5 -> '1-3, 5'."""
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def coverage_line(experiment: str, runs: list[LabRunResult], make: str) -> str:
    """How much of the planned sweep (every plan, seeds 1-5) the committed files hold, and
    which configurations lack which seeds: a verdict over fewer seeds says so here."""
    planned = lab_plan(experiment, list(PLANS[experiment]), list(DEFAULT_SEEDS))
    done = {(r.plan, r.config, r.seed) for r in runs}
    missing: dict[str, list[int]] = {}
    for run in planned:
        if (run.plan, run.config.name, run.seed) not in done:
            missing.setdefault(f"{run.plan}/{run.config.name}", []).append(run.seed)
    todo = sum(map(len, missing.values()))
    held = len(planned) - todo
    if not missing:
        return f"Coverage: all {len(planned)} planned runs (every plan, seeds 1-5) are committed."
    absent = "; ".join(f"{name} (seeds {_seed_ranges(s)})" for name, s in missing.items())
    per_run = statistics.fmean(r.wall_s for r in runs) if runs else float("nan")
    return (
        f"Coverage: {held} of the {len(planned)} planned runs (every plan, seeds 1-5) are "
        f"committed; not yet run: {absent}. `{make}` runs them (committed runs are skipped; at "
        f"the committed runs' mean of {per_run / 60:.0f} min per run, about "
        f"{todo * per_run / 2 / 3600:.1f} h on two cores) and rewrites this report; until then "
        "each verdict holds for the seeds it names."
    )

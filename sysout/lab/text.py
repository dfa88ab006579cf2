"""How the lab's reports write figures: spreads over seeds, markdown tables, the sweep's line."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from sysout.lab.runs import LabRunResult


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


def sweep_line(runs: list[LabRunResult], results: Path) -> str:
    """Run time, sweep wall time and machine, from the runs' records and ``sweep.json``."""
    path = results / "sweep.json"
    sweep = json.loads(path.read_text()) if path.is_file() else {"sweeps": [], "wall_s": 0.0}
    jobs = max((s["jobs"] for s in sweep["sweeps"]), default=2)
    total = sum(r.wall_s for r in runs)
    meta = runs[0].meta
    return (
        f"{total / 3600:.1f} CPU-hours of run time (one thread per run, {jobs} at a time); sweep "
        f"wall time {sweep['wall_s'] / 3600:.1f} h over {len(sweep['sweeps'])} invocation(s), "
        "on two cores shared with other work (wall times vary). Machine: "
        f"{meta.get('machine', '?')}, torch {meta.get('torch', '?')}."
    )

"""What every gpu-check step shares: its context, its report file, CSV writing, the registry's
fused variants. Imports no torch at module level (the orchestrator imports this too)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

PASSED, FAILED, SKIPPED, TIMEOUT = "passed", "failed", "skipped", "timeout"


@dataclass
class StepContext:
    """What the orchestrator tells a step: where to write, how long it has, dry run or not."""

    name: str
    out: Path  # the results folder (committed on a GPU: keep it small)
    scratch: Path  # run folders, checkpoints, full logs (never committed)
    dry_run: bool  # CPU: tiny shapes, kernels in the Triton interpreter
    budget_s: float  # the orchestrator kills the step after this many seconds
    workers: int = 0  # parallel processes for the correctness step (0: choose)
    science_steps: int | None = None  # override of the lab runs' trainer.max_steps
    lab_experiment: str | None = None  # the lab runs' experiment (default massive_lab_guo)
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)


class StepReport:
    """``<out>/<step>.json``, rewritten on every ``save`` so a killed step leaves its progress."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.path = ctx.out / f"{ctx.name}.json"
        self.data: dict[str, Any] = {
            "step": ctx.name,
            "status": None,
            "complete": False,
            "dry_run": ctx.dry_run,
            "budget_s": ctx.budget_s,
            "notes": [],
            "files": [],
        }

    def note(self, text: str) -> None:
        print(f"[{self.ctx.name}] {text}", flush=True)
        self.data["notes"].append(text)

    def add_file(self, path: Path) -> None:
        name = str(path.relative_to(self.ctx.out))
        if name not in self.data["files"]:
            self.data["files"].append(name)

    def save(self, **data: Any) -> None:
        self.data.update(data)
        self.data["elapsed_s"] = round(time.monotonic() - self.ctx.started, 2)
        write_json(self.path, self.data)

    def finish(self, status: str, **data: Any) -> None:
        self.save(status=status, complete=True, **data)


def _clean(value: Any) -> Any:
    """JSON without NaN/inf (strict parsers reject them): None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1))
    os.replace(tmp, path)  # a reader never sees half a file


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV; the columns are the union of the rows' keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in columns})


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return "" if value is None else value


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def fused_variants() -> tuple[list[str], list[str]]:
    """(fused, reference-only) variant names, from the registry: a variant runs fused when its
    class declares it (``fused``); the list follows whatever is registered when this runs."""
    from sysout.attention import build_variant, variant_names

    fused, plain = [], []
    for name in variant_names():
        try:
            runs_fused = bool(getattr(build_variant(name, 2, 64), "fused", False))
        except Exception:  # a variant that needs options: not checked fused here
            runs_fused = False
        (fused if runs_fused else plain).append(name)
    return fused, plain

"""Read the lab's committed results: one :class:`LabRunResult` per run, from the files
:mod:`sysout.lab.collect` wrote (``runs/<plan>/<config>_s<seed>.{json,csv,final.csv}``)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sysout.outliers.keys import PREFIX, layers_in, read_metric

ROOT = Path(__file__).resolve().parents[2]


def shown(path: Path) -> str:
    """A path as the report names it: relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def default_text_path() -> Path:
    shared = Path(os.environ.get("SYSOUT_SHARED_DIR", ROOT.parent / "shared"))
    return shared / "data" / "tinyshakespeare" / "input.txt"


@dataclass
class LabRunResult:
    """One run: its record, its figures per optimizer step, its final per-sequence positions."""

    meta: dict[str, Any]
    stats: dict[int, dict[str, float]] = field(default_factory=dict)  # probe figures by step
    val: dict[int, dict[str, float]] = field(default_factory=dict)  # validation by step
    final: list[dict[str, Any]] = field(default_factory=list)

    @property
    def plan(self) -> str:
        return str(self.meta["plan"])

    @property
    def config(self) -> str:
        return str(self.meta["config"])

    @property
    def variant(self) -> str:
        return str(self.meta["variant"])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def steps(self) -> int:
        return int(self.meta["steps"])

    @property
    def bos(self) -> bool:
        return bool(self.meta["bos"])

    @property
    def wall_s(self) -> float:
        return float(self.meta["wall_s"])

    def final_stats(self) -> dict[str, float]:
        return self.stats[max(self.stats)] if self.stats else {}

    def final_val(self) -> dict[str, float]:
        return self.val[max(self.val)] if self.val else {}

    def n_layer(self) -> int:
        return layers_in(self.final_stats())

    def metric(self, group: str, stat: str, layer: int | None = None, step: int | None = None):
        """A probe figure at ``step`` (default: the last probe); strict (MissingMetric)."""
        stats = self.final_stats() if step is None else self.stats[step]
        return read_metric(stats, group, stat, layer)

    def series(self, group: str, stat: str, layer: int | None = None) -> tuple[list[int], list]:
        """(steps, values) of a probe figure over training."""
        steps = sorted(self.stats)
        return steps, [read_metric(self.stats[s], group, stat, layer) for s in steps]

    def val_metric(self, key: str) -> float:
        val = self.final_val()
        if key not in val:
            raise KeyError(f"{self.plan}/{self.config}_s{self.seed}: no {key} in its validation")
        return val[key]


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def load_result(record: Path) -> LabRunResult:
    """A run from its ``<config>_s<seed>.json`` and the files beside it."""
    meta = json.loads(record.read_text())
    result = LabRunResult(meta)
    stem = record.with_suffix("")
    for row in _read_rows(stem.with_suffix(".csv")):
        step = int(row.pop("step"))
        values = {k: float(v) for k, v in row.items() if v not in ("", None)}
        probe = {k: v for k, v in values.items() if k.startswith(PREFIX + "/")}
        val = {k: v for k, v in values.items() if k.startswith("val/")}
        if probe:
            result.stats[step] = probe
        if val:
            result.val[step] = val
    final = stem.with_suffix(".final.csv")
    if final.is_file():
        result.final = [
            {k: (v if k == "argmax_class" else float(v)) for k, v in row.items()}
            for row in _read_rows(final)
        ]
    return result


def load_results(folder: Path) -> list[LabRunResult]:
    """Every run under ``<folder>/runs``, in plan, configuration, seed order."""
    records = sorted((folder / "runs").glob("*/*.json"))
    if not records:
        raise SystemExit(
            f"no lab results under {folder}/runs: run python -m sysout.lab.sweep first "
            "(it writes them as runs finish)"
        )
    runs = [load_result(r) for r in records]
    return sorted(runs, key=lambda r: (r.plan, r.config, r.seed))

"""Read the lab's runs: run record, validation losses from the CSV log, and the sink statistics
over training (from the probe's CSV columns, or measured on the step checkpoints)."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sysout.outliers import run_probe

ROOT = Path(__file__).resolve().parents[2]
# The probe's key that only the head-statistics probe logs: without it, measure checkpoints.
GROUP_KEY = "outliers/heads/layer_00/first_token_share_non_trigger"
VAL_KEYS = ("val/loss", "val/true_loss", "val/loss_gap", "val/loss_trigger", "val/loss_non_trigger")


def default_text_path() -> Path:
    shared = Path(os.environ.get("SYSOUT_SHARED_DIR", ROOT.parent / "shared"))
    return shared / "data" / "tinyshakespeare" / "input.txt"


@dataclass
class LabRunResult:
    folder: Path
    plan: str
    variant: str
    seed: int
    steps: int
    bos: bool
    wall_s: float
    val: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> val metrics
    stats: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> sink statistics
    source: str = ""  # "probe" (CSV) or "checkpoints"

    def final_stats(self) -> dict[str, float]:
        return self.stats[max(self.stats)] if self.stats else {}

    def final_val(self) -> dict[str, float]:
        return self.val[max(self.val)] if self.val else {}

    def n_layer(self) -> int:
        keys = self.final_stats()
        return len({k.split("/")[2] for k in keys if k.startswith("outliers/attention/layer_")})


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _floats(row: dict[str, str], keys) -> dict[str, float]:
    return {k: float(row[k]) for k in keys if row.get(k) not in (None, "")}


def _step_of(row: dict[str, str]) -> int:
    # Lightning's CSV "step" is the optimizer step minus one at validation; +1 = steps taken.
    return int(float(row["step"])) + 1 if row.get("step") else 0


def _probe_series(rows: list[dict[str, str]]) -> dict[int, dict[str, float]]:
    series: dict[int, dict[str, float]] = {}
    for row in rows:
        keys = [k for k in row if k.startswith("outliers/") and row[k] not in ("", None)]
        if any(k.startswith("outliers/attention/") for k in keys):
            # The probe logs at the optimizer step itself (0 = before training).
            series.setdefault(int(float(row["step"])), {}).update(_floats(row, keys))
    return series


def load_checkpoint_model(path: Path):
    """The GPT of a sysout checkpoint (weights-only or full)."""
    from sysout.model import build_gpt

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    model = build_gpt(hp["model"], hp["attention"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    return model.eval()


def measure_checkpoints(folder: Path, bos: bool, windows: int = 8) -> dict[int, dict[str, float]]:
    """Sink statistics at every step checkpoint of a run (checkpoints/steps/stepNNNNN.ckpt)."""
    from sysout.data.bigram_backcopy import BigramBackcopyDataModule

    series = {}
    files = sorted((folder / "checkpoints" / "steps").glob("step*.ckpt"))
    if not files:
        return series
    model = load_checkpoint_model(files[0])
    data = BigramBackcopyDataModule(
        str(default_text_path()), model.config.block_size, bos=bool(bos)
    )
    inputs = data.probe_inputs(windows)
    for path in files:
        step = int(re.sub(r"\D", "", path.stem))
        model = load_checkpoint_model(path)
        # The probe itself, so checkpoint figures are those the training runs logged.
        series[step] = run_probe(
            model, inputs.windows, query_groups=inputs.query_groups, decode=inputs.decode
        ).scalars()
    return series


def load_run(folder: Path, windows: int = 8) -> LabRunResult | None:
    record = folder / "run.json"
    if not record.is_file():
        return None
    info = json.loads(record.read_text())
    if info.get("returncode") != 0:
        return None
    rows = _read_csv(folder / "csv" / "metrics.csv")
    result = LabRunResult(
        folder,
        info["plan"],
        info["variant"],
        int(info["seed"]),
        int(info["steps"]),
        bool(info["bos"]),
        float(info["wall_s"]),
    )
    for row in rows:
        if row.get("val/loss"):
            result.val[_step_of(row)] = _floats(row, VAL_KEYS)
    if rows and GROUP_KEY in rows[0]:
        result.stats, result.source = _probe_series(rows), "probe"
    else:
        result.stats, result.source = (
            measure_checkpoints(folder, result.bos, windows),
            "checkpoints",
        )
    return result


def load_sweep(out: Path, windows: int = 8) -> list[LabRunResult]:
    runs = []
    for record in sorted(out.glob("*/*/run.json")):
        run = load_run(record.parent, windows)
        if run is not None:
            runs.append(run)
    return runs

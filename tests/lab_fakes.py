"""Finished lab runs without training, for the lab's pipeline tests: the probe's real key set
(from a tiny random Bigram-Backcopy model) with planted values, written as train.py leaves a run
folder (CSV log, saved config, run record)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import torch

from sysout.lab.collect import kept, probe_bigram_backcopy

VAL = {"val/loss": 1.8, "val/true_loss": 1.7, "val/loss_gap": 0.1}
VAL |= {"val/loss_trigger": 0.02, "val/loss_non_trigger": 2.0}
STEPS = (0, 100, 200)


def probe_scalars() -> dict[str, float]:
    """The figures the probe logs for a Bigram-Backcopy model that the lab keeps."""
    from sysout.model import build_gpt

    torch.manual_seed(0)
    model = build_gpt(
        {"n_layer": 3, "n_head": 1, "n_embd": 16, "block_size": 32, "vocab_size": 66},
        {"name": "softmax"},
    )
    report = probe_bigram_backcopy(model, bos=True, windows=4)
    return {k: v for k, v in report.scalars().items() if kept(k)}


def run_record(
    experiment: str, plan: str, config: str, seed: int, variant: str | None = None, bos: bool = True
) -> dict:
    """What the sweep records for one run (its variant is the config's name unless given)."""
    return {"experiment": experiment, "plan": plan, "config": config,
            "variant": variant or config, "seed": seed, "bos": bos}  # fmt: skip


def fake_run(
    out: Path,
    scalars: dict[str, float],
    record: dict,
    plant: Callable[[int], dict[str, float]],
) -> tuple[Path, dict]:
    """A finished run folder: ``scalars`` at every probe step, overridden by ``plant(step)``;
    validation (``VAL``) logged at step - 1 as Lightning does."""
    record = {"about": record["config"], "steps": STEPS[-1], "returncode": 0, "wall_s": 30.0,
              **record}  # fmt: skip
    folder = out / record["plan"] / f"{record['config']}_s{record['seed']}"
    (folder / "csv").mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(
        "model: {block_size: 32}\ndata: {batch_size: 4}\noptim: {lr: 0.001, name: adamw}\n"
        "trainer: {gradient_clip_val: null}\ncallbacks: {outliers: {probe_windows: 4}}\n"
    )
    rows = []
    for step in STEPS:
        rows.append({"step": step, **scalars, **plant(step)})
        if step:
            rows.append({"step": step - 1, **VAL})
    columns = ["step", *VAL, *scalars]
    with open(folder / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "run.json").write_text(json.dumps(record))
    return folder, record

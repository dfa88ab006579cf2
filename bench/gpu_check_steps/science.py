"""Step 5: Guo et al.'s Bigram-Backcopy setting at full scale, with its controls.

``python train.py experiment=massive_lab_guo`` (3 layers, 1 head, d = 256, batch 512, AdamW,
10k steps, Guo's parametrisation) for softmax and the controls (SGD lr 0.03, ReLU attention, and
kv_bias without BOS), all at once as separate processes (the model is far too small to fill a GPU
alone), each with the CSV logger. At the step's deadline the runs still going get SIGTERM (the
preemption callback stops them cleanly and the CSV is flushed), so a run that does not fit leaves
its trajectory up to the step it reached. A run whose config or variant is not in this checkout
is skipped with a note. Saved per run: the residual-peak trajectory (the probe's first-token
figures and the losses) as ``science_<run>.csv``. The CPU dry run trains the first run for a
handful of steps at tiny width and only composes the others' configs (``--cfg job``): each
``train.py`` process costs seconds of imports that two busy cores do not have.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import FAILED, PASSED, ROOT, SKIPPED, StepContext, StepReport, write_csv

EXPERIMENT = "massive_lab_guo"
# The dry run's stand-ins while massive_lab_guo is not in the checkout, nearest first.
STAND_INS = ["massive_lab", "sink_lab"]
# (name, overrides, what the run needs besides the experiment)
RUNS = [
    ("softmax", [], {}),
    ("sgd", ["optim=sgd", "optim.lr=0.03"], {"conf": "optim/sgd.yaml"}),
    ("relu", ["attention=relu"], {"conf": "attention/relu.yaml", "variant": "relu"}),
    ("kv_bias_nobos", ["attention=kv_bias", "data.bos=false"], {"conf": "attention/kv_bias.yaml"}),
]
# A handful of steps at tiny width: the machinery, not the science.
DRY_OVERRIDES = [
    "model.n_embd=32",
    "model.block_size=32",
    "data.batch_size=8",
    "data.val_sequences=8",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "callbacks.outliers.every_n_steps=2",
    "callbacks.outliers.probe_windows=2",
]
# Guo et al.'s committed trajectories, read from the one copy in the repository (its header cites
# BBM/figures/BBM/massive_dynamics_sgd_relu.pt in GuoTianYu2000/Active-Dormant-Attention): the
# norm of h_BOS after layer 0, at the steps the summary compares.
GUO_FILE = ROOT / "docs" / "results" / "massive-lab" / "guo2024-bos-norm.csv"
GUO_STEPS = (0, 600, 1000, 1500, 2000, 3000, 5000, 7000, 10000)


def _guo() -> tuple[dict[int, float], dict[str, tuple[float, float]]]:
    with open(GUO_FILE) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    by_step = {int(r["step"]): r for r in rows}
    adam = {s: round(float(by_step[s]["adam"]), 1) for s in GUO_STEPS}
    last = max(by_step)
    controls = {
        name: (round(float(by_step[0][col]), 1), round(float(by_step[last][col]), 1))
        for name, col in (("sgd", "sgd"), ("relu", "relu_attention"))
    }
    return adam, controls


GUO_ADAM, GUO_CONTROLS = _guo()  # (step 0, step 10k) for the controls
KEEP = re.compile(
    r"^step$|loss|first_token|residual|bos|activation/layer_\d+/(top1|ratio)$", re.IGNORECASE
)
# The layer-0 figure to set beside Guo's, most direct first: the probe's absolute BOS norm
# (named by sysout.outliers.keys where this checkout has it), else the BOS / median-token norm
# ratio (not comparable in absolute terms).
LAYER0 = [
    (re.compile(r"layer_00/(first_token|bos)_norm$"), "absolute"),
    (re.compile(r"layer_00/.*(first_token|bos).*norm(?!.*ratio)"), "absolute"),
    (re.compile(r"activation/layer_00/first_token_norm_ratio$"), "ratio"),
]
STOP_GRACE_S = {False: 20, True: 5}  # SIGTERM -> checkpoint, flush the CSV, exit (GPU, dry)


def _layer0_patterns() -> list[tuple[re.Pattern, str]]:
    try:
        from sysout.outliers.keys import metric_key
    except ImportError:  # a checkout before the probe's metric-name builder
        return LAYER0
    exact = re.escape(metric_key("residual", "first_token_norm", layer=0))
    return [(re.compile(f"^{exact}$"), "absolute"), *LAYER0]


def plan(ctx: StepContext, report: StepReport) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """The experiment and the runs that can run in this checkout (the others noted)."""
    from sysout.attention import variant_names

    conf = ROOT / "conf"
    wanted = ctx.lab_experiment or EXPERIMENT
    experiment: str | None = wanted
    if not (conf / "experiment" / f"{wanted}.yaml").exists():
        stand_in = next(
            (e for e in STAND_INS if (conf / "experiment" / f"{e}.yaml").exists()), None
        )
        if ctx.dry_run and stand_in:
            report.note(
                f"conf/experiment/{wanted}.yaml not here: the dry run uses "
                f"experiment={stand_in} as a stand-in"
            )
            experiment = stand_in
        else:
            report.note(
                f"SKIPPED: conf/experiment/{wanted}.yaml is not in this checkout (the nearest "
                f"on purpose: --lab-experiment {STAND_INS[0]} --science-steps N)"
            )
            experiment = None
    runs = []
    for name, overrides, needs in RUNS:
        if "conf" in needs and not (conf / needs["conf"]).exists():
            report.note(f"SKIPPED run {name}: conf/{needs['conf']} is not in this checkout")
        elif "variant" in needs and needs["variant"] not in variant_names():
            report.note(
                f"SKIPPED run {name}: attention variant {needs['variant']!r} not registered"
            )
        else:
            runs.append((name, overrides))
    return experiment, runs


def command(ctx: StepContext, experiment: str, overrides: list[str], run_dir: Path) -> list[str]:
    cmd = [sys.executable, str(ROOT / "train.py"), f"experiment={experiment}", *overrides]
    cmd += ["logger=csv", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
    if ctx.dry_run:
        cmd += ["trainer.accelerator=cpu", *DRY_OVERRIDES]
    else:
        cmd += ["trainer.accelerator=gpu", "trainer.devices=1"]
    if ctx.science_steps:
        cmd.append(f"trainer.max_steps={ctx.science_steps}")
    return cmd


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    found = sorted(run_dir.rglob("metrics.csv"))
    if not found:
        return []
    with found[-1].open(newline="") as f:
        return list(csv.DictReader(f))


def trajectory(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The kept columns, rows that hold at least one of them."""
    if not rows:
        return []
    keep = sorted((c for c in rows[0] if KEEP.search(c)), key=lambda c: c != "step")
    out = []
    for row in rows:
        kept = {c: row.get(c, "") for c in keep}
        if any(v != "" for c, v in kept.items() if c != "step"):
            out.append(kept)
    return out


def layer0_series(traj: list[dict[str, Any]]) -> tuple[str | None, str | None, dict[int, float]]:
    """(column, kind, {step: value}) of the figure to compare with Guo's."""
    columns = list(traj[0]) if traj else []
    for pattern, kind in _layer0_patterns():
        col = next((c for c in columns if pattern.search(c)), None)
        if col:
            series = {
                int(float(r["step"])): float(r[col]) for r in traj if r.get(col) not in ("", None)
            }
            return col, kind, series
    return None, None, {}


def at_anchors(series: dict[int, float]) -> dict[int, dict[str, float]]:
    """The logged value nearest each of Guo's steps that the run reached."""
    if not series:
        return {}
    last = max(series)
    out = {}
    for step in GUO_ADAM:
        if step <= last:
            near = min(series, key=lambda s: abs(s - step))
            out[step] = {"step": near, "value": series[near], "guo": GUO_ADAM[step]}
    return out


def run(ctx: StepContext) -> int:
    report = StepReport(ctx)
    missing = [m for m in ("hydra", "omegaconf") if importlib.util.find_spec(m) is None]
    if missing:
        report.note(
            f"SKIPPED: train.py needs {', '.join(missing)}, not installed here; carry "
            "their wheels (docs/gpu-check.md, 'On a lent GPU')"
        )
        report.finish(SKIPPED, runs=[])
        return 0
    shared = Path(os.environ.get("SYSOUT_SHARED_DIR", ROOT.parent / "shared"))
    text = shared / "data" / "tinyshakespeare" / "input.txt"
    if not text.exists():
        report.note(
            f"SKIPPED: the Bigram-Backcopy task reads {text}, which is not here; set "
            "SHARED= (docs/gpu-check.md)"
        )
        report.finish(SKIPPED, runs=[])
        return 0
    experiment, runs = plan(ctx, report)
    if experiment is None or not runs:
        report.finish(SKIPPED, runs=[])
        return 0

    procs = {}
    for i, (name, overrides) in enumerate(runs):
        run_dir = ctx.scratch / "science" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = command(ctx, experiment, overrides, run_dir)
        if ctx.dry_run and i > 0:
            cmd.append("--cfg=job")  # compose only: the overrides resolve, nothing trains
        log = (run_dir / "train.log").open("w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        # in this step's process group: the orchestrator's kill on a timeout reaches them too
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        procs[name] = (proc, run_dir, " ".join(cmd[1:]), time.monotonic())
    report.note(f"{len(procs)} runs of experiment={experiment} started together")
    report.save(experiment=experiment)

    grace_s = STOP_GRACE_S[ctx.dry_run]
    stop_at = time.monotonic() + ctx.remaining() - grace_s - 5
    while time.monotonic() < stop_at and any(p.poll() is None for p, *_ in procs.values()):
        time.sleep(1.0)
    stopped = [n for n, (p, *_) in procs.items() if p.poll() is None]
    for name in stopped:  # the preemption callback checkpoints and flushes on SIGTERM
        procs[name][0].send_signal(signal.SIGTERM)
    grace = time.monotonic() + grace_s
    while time.monotonic() < grace and any(p.poll() is None for p, *_ in procs.values()):
        time.sleep(0.5)
    for proc, *_ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    results = []
    for name, (proc, run_dir, cmd, started) in procs.items():
        traj = trajectory(read_metrics(run_dir))
        col, kind, series = layer0_series(traj)
        steps = [int(float(r["step"])) for r in traj if r.get("step") not in ("", None)]
        result = {
            "run": name,
            "command": cmd,
            "returncode": proc.returncode,
            "stopped_at_deadline": name in stopped,
            "wall_s": round(time.monotonic() - started, 1),
            "last_step": max(steps, default=None),
            "layer0_column": col,
            "layer0_kind": kind,
            "layer0_first": series[min(series)] if series else None,
            "layer0_last": series[max(series)] if series else None,
            "at_guo_steps": at_anchors(series),
        }
        composed_only = "--cfg=job" in cmd
        result["composed_only"] = composed_only
        result["ok"] = (proc.returncode == 0 and composed_only) or (
            bool(traj) and (proc.returncode == 0 or name in stopped)
        )
        if traj:
            path = ctx.out / f"science_{name}.csv"
            write_csv(path, traj)
            report.add_file(path)
        if not result["ok"] and name in stopped:
            report.note(f"run {name} stopped at the deadline before its first logged step")
        elif not result["ok"]:
            tail = (run_dir / "train.log").read_text(errors="replace")[-1500:]
            report.note(f"run {name} failed (rc {proc.returncode}); log tail:\n{tail}")
        elif name in stopped:
            report.note(f"run {name} stopped at the deadline at step {result['last_step']}")
        results.append(result)
    status = PASSED if all(r["ok"] for r in results) else FAILED
    report.finish(
        status, experiment=experiment, runs=results, guo_adam=GUO_ADAM, guo_controls=GUO_CONTROLS
    )
    return 0 if status == PASSED else 1

"""Run the CPU laboratory's plan: ``python -m sysout.lab.sweep [--out DIR] [--jobs 2]``.

Each run is ``train.py experiment=sink_lab`` in its own process on one CPU thread, with the CSV
logger, in ``<out>/<plan>/<variant>_s<seed>/``; ``--jobs`` run at once. A run whose ``run.json``
says it finished is skipped, so an interrupted sweep resumes where it stopped. Then
``python -m sysout.lab.report <out>`` writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sysout.attention import variant_names

ROOT = Path(__file__).resolve().parents[2]
NO_OP_VARIANTS = ("kv_bias", "softmax1", "sink_logit")  # a place to park besides the first token


@dataclass(frozen=True)
class LabRun:
    plan: str  # main (with BOS), nobos, longer
    variant: str
    seed: int
    steps: int
    bos: bool = True

    @property
    def name(self) -> str:
        return f"{self.plan}/{self.variant}_s{self.seed}"

    def overrides(self, out: Path) -> list[str]:
        return [
            "experiment=sink_lab",
            f"attention={self.variant}",
            f"seed={self.seed}",
            f"data.bos={str(self.bos).lower()}",
            f"trainer.max_steps={self.steps}",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            f"hydra.run.dir={out / self.name}",
        ]


def lab_plan(
    plans: list[str],
    variants: list[str],
    seeds: list[int],
    steps: int = 600,
    nobos_variants: list[str] | None = None,
    nobos_seeds: list[int] | None = None,
    longer_variants: list[str] | None = None,
    longer_steps: int = 1500,
) -> list[LabRun]:
    """The runs of the named plans: ``main`` every variant x seed with BOS; ``nobos`` the same
    without BOS (default: every variant, first seed); ``longer`` the no-op variants and softmax
    for ``longer_steps`` (first seed), to see whether the sink moves off BOS."""
    unknown = set(plans) - {"main", "nobos", "longer"}
    if unknown:
        raise SystemExit(f"unknown plan(s) {sorted(unknown)}: use main, nobos, longer")
    runs = []
    if "main" in plans:
        runs += [LabRun("main", v, s, steps) for v in variants for s in seeds]
    if "nobos" in plans:
        for v in nobos_variants or variants:
            runs += [LabRun("nobos", v, s, steps, bos=False) for s in nobos_seeds or seeds[:1]]
    if "longer" in plans:
        for v in longer_variants or ["softmax", *NO_OP_VARIANTS]:
            runs.append(LabRun("longer", v, seeds[0], longer_steps))
    return runs


def run_one(run: LabRun, out: Path, extra: list[str] | None = None, threads: int = 1) -> dict:
    folder = out / run.name
    record = folder / "run.json"
    if record.is_file() and json.loads(record.read_text()).get("returncode") == 0:
        return json.loads(record.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "train.py", *run.overrides(out), *(extra or [])]
    start = time.time()
    with open(folder / "console.log", "w") as console:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT)
    info = {
        "plan": run.plan,
        "variant": run.variant,
        "seed": run.seed,
        "steps": run.steps,
        "bos": run.bos,
        "returncode": done.returncode,
        "wall_s": round(time.time() - start, 1),
        "command": " ".join(cmd[1:]),
    }
    record.write_text(json.dumps(info, indent=1))
    status = "ok" if done.returncode == 0 else f"FAILED ({folder / 'console.log'})"
    print(f"{run.name:32s} {info['wall_s']:7.1f} s  {status}", flush=True)
    return info


def record_sweep(path: Path, wall_s: float, runs: int, failed: int) -> None:
    """Append this invocation to the sweep's history (a resumed or extended sweep adds up)."""
    history = json.loads(path.read_text()) if path.is_file() else {}
    if "sweeps" not in history:  # the first invocation, or a single-record file
        history = {"sweeps": [history] if history else []}
    entry = {"wall_s": round(wall_s, 1), "runs": runs, "failed": failed}
    history["sweeps"].append({**entry, "ended": time.strftime("%Y-%m-%d %H:%M:%S")})
    history["wall_s"] = round(sum(s["wall_s"] for s in history["sweeps"]), 1)
    path.write_text(json.dumps(history, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "lab" / "sink_lab")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--plans", default="main,nobos,longer")
    parser.add_argument("--variants", default=",".join(variant_names()))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--nobos-variants", default=None, help="default: --variants")
    parser.add_argument("--longer-variants", default=None, help="default: softmax + no-op ones")
    parser.add_argument("--longer-steps", type=int, default=1500)
    parser.add_argument(
        "--extra", action="append", default=[], help="a further train.py override (repeatable)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the runs and stop")
    args = parser.parse_args(argv)

    def names(text: str | None) -> list[str] | None:
        if text is None:
            return None
        chosen = [v for v in text.split(",") if v]
        bad = set(chosen) - set(variant_names())
        if bad:
            raise SystemExit(f"unknown variant(s) {sorted(bad)}; valid: {variant_names()}")
        return chosen

    runs = lab_plan(
        args.plans.split(","),
        names(args.variants),
        [int(s) for s in args.seeds.split(",")],
        args.steps,
        names(args.nobos_variants),
        None,
        names(args.longer_variants),
        args.longer_steps,
    )
    if args.dry_run:
        for run in runs:
            print(run.name, " ".join(run.overrides(args.out)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(runs)} runs, {args.jobs} at a time, into {args.out}", flush=True)
    # Longest first, so the pool does not end waiting on one long run.
    runs.sort(key=lambda r: -r.steps)
    start = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda r: run_one(r, args.out, args.extra), runs))
    failed = [r for r in results if r["returncode"] != 0]
    record_sweep(args.out / "sweep.json", time.time() - start, len(runs), len(failed))
    print(f"sweep done in {time.time() - start:.0f} s; {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

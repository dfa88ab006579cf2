"""Run the CPU laboratory's plans: ``python -m sysout.lab.sweep --experiment massive_lab``.

Each run is ``train.py experiment=<experiment>`` in its own process on one CPU thread, with the
CSV logger, in ``<out>/<plan>/<config>_s<seed>/``; ``--jobs`` run at once. As each run finishes,
its committed files are written under ``--results`` (:mod:`sysout.lab.collect`), so an
interrupted sweep loses nothing finished and resumes where it stopped: a run whose ``run.json``
says it finished is collected again, not retrained, and a run whose committed files were written
by the same command (another machine's sweep, a fresh clone) is skipped; ``--redo`` retrains both.
Then ``python -m sysout.lab.report <results>`` writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sysout.attention import variant_names
from sysout.lab.collect import collect_run
from sysout.lab.plans import DEFAULT_SEEDS, DEFAULT_STEPS, EXPERIMENTS, PLANS, LabRun, lab_plan
from sysout.lab.text import ENDED, busy_seconds

ROOT = Path(__file__).resolve().parents[2]


def _record(run: LabRun) -> dict:
    return {
        "experiment": run.experiment,
        "plan": run.plan,
        "config": run.config.name,
        "variant": run.config.variant,
        "about": run.config.about,
        "seed": run.seed,
        "steps": run.steps,
        "bos": run.config.bos,
    }


def _say(line: str) -> None:
    """One whole line per write: the pool's threads print beside each other."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _settings(overrides: list[str]) -> list[str]:
    """A run's overrides, less where it wrote (the same run on another machine)."""
    return [arg for arg in overrides if not arg.startswith("hydra.run.dir=")]


def committed(run: LabRun, out: Path, results: Path | None) -> dict | None:
    """The committed record of ``run`` when its files were written by the same command."""
    if results is None:
        return None
    path = results / "runs" / run.plan / f"{run.config.name}_s{run.seed}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    recorded = record.get("command", "").split()[1:]  # "train.py <overrides>"
    same = record.get("returncode") == 0 and _settings(recorded) == _settings(run.overrides(out))
    return record if same else None


def run_one(
    run: LabRun, out: Path, results: Path | None, threads: int = 1, redo: bool = False
) -> dict:
    """Train one run (unless it finished before), then collect its committed files."""
    folder = out / run.name
    record_path = folder / "run.json"
    done_before = None if redo else committed(run, out, results)
    if done_before is not None and not record_path.is_file():
        _say(f"{run.name:36s} {done_before['wall_s']:7.1f} s  committed before")
        return done_before
    before = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if before.get("returncode") == 0 and not redo:
        info = before
    else:
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "train.py", *run.overrides(out)]
        start = time.time()
        with open(folder / "console.log", "w") as console:
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT)
        info = {
            **_record(run),
            "returncode": done.returncode,
            "wall_s": round(time.time() - start, 1),
            "command": " ".join(cmd[1:]),
        }
        record_path.write_text(json.dumps(info, indent=1))
    status = "ok" if info["returncode"] == 0 else f"FAILED (see {folder / 'console.log'})"
    if info["returncode"] == 0 and results is not None:
        collect_run(folder, info, results)
    _say(f"{run.name:36s} {info['wall_s']:7.1f} s  {status}")
    return info


def record_sweep(path: Path, wall_s: float, runs: int, failed: int, jobs: int) -> None:
    """Append this invocation to the sweep's history (a resumed or extended sweep adds up)."""
    history = json.loads(path.read_text()) if path.is_file() else {"sweeps": []}
    entry = {"wall_s": round(wall_s, 1), "runs": runs, "failed": failed, "jobs": jobs}
    history["sweeps"].append({**entry, "ended": time.strftime(ENDED)})
    history["wall_s"] = round(busy_seconds(history["sweeps"]), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history, indent=1) + "\n")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    chosen = [v for v in text.split(",") if v]
    bad = set(chosen) - set(variant_names())
    if bad:
        raise SystemExit(f"unknown variant(s) {sorted(bad)}; valid: {variant_names()}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", choices=EXPERIMENTS, default="massive_lab")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/lab/<experiment>")
    parser.add_argument(
        "--results", type=Path, default=None, help="committed files; default docs/results/<exp>"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--plans", default=None, help="comma-separated; default: all")
    parser.add_argument("--variants", default=None, help="narrow the per-variant plans")
    parser.add_argument("--configs", default=None, help="run only these configuration names")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    parser.add_argument("--steps", type=int, default=None, help="default: the experiment's")
    parser.add_argument("--longer-steps", type=int, default=1500)
    parser.add_argument(
        "--extra", action="append", default=[], help="a further train.py override (repeatable)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the runs and stop")
    parser.add_argument(
        "--redo", action="store_true", help="retrain runs that finished or were committed before"
    )
    args = parser.parse_args(argv)
    exp = args.experiment
    out = args.out or ROOT / "outputs" / "lab" / exp
    results = args.results or ROOT / "docs" / "results" / exp.replace("_", "-")
    plans = args.plans.split(",") if args.plans else list(PLANS[exp])
    try:
        runs = lab_plan(
            exp,
            plans,
            [int(s) for s in args.seeds.split(",")],
            args.steps or DEFAULT_STEPS[exp],
            _names(args.variants),
            args.longer_steps,
            tuple(args.extra),
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.configs:
        wanted = set(args.configs.split(","))
        unknown = wanted - {r.config.name for r in runs}
        if unknown:
            raise SystemExit(f"no configuration(s) {sorted(unknown)} in plans {plans}")
        runs = [r for r in runs if r.config.name in wanted]
    if args.dry_run:
        for run in runs:
            print(run.name, " ".join(run.overrides(out)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(runs)} runs, {args.jobs} at a time, into {out}; results in {results}", flush=True)
    # Longest first, so the pool does not end on one long run; then seed by seed, so that an
    # interrupted sweep has every configuration at its first seeds.
    runs.sort(key=lambda r: (-r.steps, r.seed))
    start = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        infos = list(pool.map(lambda r: run_one(r, out, results, redo=args.redo), runs))
    failed = [i for i in infos if i["returncode"] != 0]
    record_sweep(results / "sweep.json", time.time() - start, len(runs), len(failed), args.jobs)
    print(f"sweep done in {time.time() - start:.0f} s; {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

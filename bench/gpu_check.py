"""One command that checks sysout on a GPU in under 8 minutes: ``make gpu-check``.

Steps (docs/gpu-check.md): 1 env (device, driver, versions), 2 correctness (every fused variant
against float64, every autotune config, the kernel self-check), 3 speed (bench/attention.py vs
SDPA flash and the eager reference), 4 throughput (bench/train_throughput.py: GPT-2 124M, bf16,
torch.compile), 5 science (Guo et al.'s Bigram-Backcopy runs), 6 the results folder
``benchmarks/results/<device>-<date>/`` (JSON + CSV + summary.md). Each step is a subprocess with
its own time limit; a failed or stopped step does not stop the others; the exit code is 0 only
when every step passed (or was skipped for a reason it states). On a machine without CUDA it is a
dry run of every step at tiny shapes, kernels in the Triton interpreter, written to
``outputs/gpu-check/`` (never committed: those figures are not results).

    python bench/gpu_check.py                     # GPU run (dry run on CPU)
    python bench/gpu_check.py --only correctness speed
    python bench/gpu_check.py --only science --budget science=540 --total-budget 560
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from gpu_check_steps import STEPS  # noqa: E402
from gpu_check_steps.common import (  # noqa: E402
    FAILED,
    PASSED,
    ROOT,
    SKIPPED,
    TIMEOUT,
    StepContext,
    read_json,
    write_json,
)
from gpu_check_steps.summary import write_summary  # noqa: E402

# Steps in one phase run at the same time: the correctness step's compiles keep the CPU busy
# while the lab's small models barely load the GPU, and neither of them is timed. The timed
# steps (speed, throughput) run alone. A dry run times nothing: all at once.
PHASES = [["env"], ["correctness", "science"], ["speed"], ["throughput"]]
DRY_PHASES = [["env"], ["correctness", "science", "speed", "throughput"]]
# Seconds per step, and in all (an H100 run must end within 8 minutes). A step gets the smaller
# of its budget and the time left, so the last one (throughput: three torch.compile runs) takes
# whatever the others left. Planned from compile counts and the bench's settings, not measured:
# no GPU has run this yet (docs/gpu-check.md).
BUDGETS = {"env": 30, "correctness": 180, "science": 180, "speed": 120, "throughput": 250}
TOTAL = 460  # + up to 5 s to stop a step at its limit, + the summary: under 480
DRY_BUDGETS = {"env": 30, "correctness": 100, "science": 100, "speed": 100, "throughput": 100}
DRY_TOTAL = 115
MIN_STEP_S = {"gpu": 20, "dry": 8}  # a step given less than this is skipped, not started
LOG_TAIL_BYTES = 200_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="results folder (default: see above)")
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU-style run even on a GPU")
    ap.add_argument("--only", nargs="+", choices=list(STEPS), help="run only these steps")
    ap.add_argument("--skip", nargs="+", choices=list(STEPS), default=[], help="leave these out")
    ap.add_argument("--total-budget", type=float, help="seconds for the whole run")
    ap.add_argument("--budget", nargs="+", default=[], metavar="STEP=S", help="a step's seconds")
    ap.add_argument("--workers", type=int, default=0, help="correctness worker processes")
    ap.add_argument("--science-steps", type=int, help="trainer.max_steps of the lab runs")
    ap.add_argument("--lab-experiment", help="the lab runs' experiment (default massive_lab_guo)")
    ap.add_argument("--scratch", type=Path, help="run folders and full logs (default: a tmp dir)")
    ap.add_argument(
        "--archive", type=Path, help="also write the results folder as this .tar.gz (for $OUT)"
    )
    # internal: one step, in its own process
    ap.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--step-budget", type=float, default=60.0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_step_here(args: argparse.Namespace) -> int:
    """The child side: run one step in this process."""
    import importlib

    module = importlib.import_module(f"gpu_check_steps.{STEPS[args.step]}")
    ctx = StepContext(
        name=args.step,
        out=args.out,
        scratch=args.scratch,
        dry_run=args.dry_run,
        budget_s=args.step_budget,
        workers=args.workers,
        science_steps=args.science_steps,
        lab_experiment=args.lab_experiment,
    )
    return int(module.run(ctx) or 0)


def child_env(dry_run: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(BENCH), env.get("PYTHONPATH", "")) if p
    )  # this checkout's sysout, installed or not
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("SYSOUT_ROOT", str(ROOT))
    if dry_run:
        env["TRITON_INTERPRET"] = "1"  # before any triton import in the child
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Launched:
    """A step's process, its log and its time limit."""

    def __init__(self, name: str, cmd: list[str], env: dict, log: Path, budget: float) -> None:
        self.name, self.log, self.budget = name, log, budget
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout stops its workers too
        )
        self.started = time.monotonic()
        self.timed_out = False

    def check(self) -> bool:
        """True once the step has ended (stopping it at its limit)."""
        if self.proc.poll() is not None:
            self._log_file.close()
            return True
        if time.monotonic() - self.started > self.budget + 5:  # a little grace to write files
            self.timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            self._log_file.close()
            return True
        return False


def launch(
    args: argparse.Namespace, name: str, out: Path, scratch: Path, budget: float, dry: bool
) -> Launched:
    log = scratch / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name]
    cmd += ["--out", str(out), "--scratch", str(scratch), "--step-budget", f"{budget:.0f}"]
    cmd += ["--workers", str(args.workers)] + (["--dry-run"] if dry else [])
    if args.science_steps:
        cmd += ["--science-steps", str(args.science_steps)]
    if args.lab_experiment:
        cmd += ["--lab-experiment", args.lab_experiment]
    return Launched(name, cmd, child_env(dry), log, budget)


def outcome(step: Launched, out: Path) -> dict:
    """The step's own report, or what its end says when it wrote none."""
    report = read_json(out / f"{step.name}.json") or {"step": step.name, "notes": []}
    report["returncode"] = step.proc.returncode
    report["wall_s"] = round(time.monotonic() - step.started, 1)
    report["log_tail"] = _tail(step.log, 3000)
    if step.timed_out:
        report["status"] = TIMEOUT
        report["notes"].append(f"stopped at its time limit ({step.budget:.0f} s)")
    elif report.get("status") is None or (step.proc.returncode and report["status"] == PASSED):
        report["status"] = FAILED
        report["notes"].append(f"exited with {step.proc.returncode} without a verdict")
    write_json(out / f"{step.name}.json", report)
    return report


def _tail(path: Path, size: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-size:].decode(errors="replace")


def results_dir(args: argparse.Namespace, env: dict, dry: bool) -> Path:
    if args.out:
        return args.out
    date = dt.date.today().isoformat()
    if dry:
        base = ROOT / "outputs" / "gpu-check" / f"cpu-dryrun-{date}"
    else:
        base = ROOT / "benchmarks" / "results" / f"{env['info']['device_slug']}-{date}"
    out, n = base, 1
    while out.exists() and any(out.iterdir()):  # a second run the same day: a new folder
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def budgets(args: argparse.Namespace, dry: bool) -> tuple[dict[str, float], float]:
    table = dict(DRY_BUDGETS if dry else BUDGETS)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in table or not seconds:
            raise SystemExit(f"--budget takes STEP=SECONDS with STEP in {list(table)}: {item}")
        table[name] = float(seconds)
    return table, args.total_budget or (DRY_TOTAL if dry else TOTAL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines as they happen, also in a pipe
    if args.step:
        return run_step_here(args)
    t0, started = time.monotonic(), dt.datetime.now().isoformat(timespec="seconds")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="sysout-gpu-check-"))
    wanted = [s for s in (args.only or list(STEPS)) if s not in args.skip]

    # Step 1 first, into the scratch folder: it says whether this is a dry run, and the device
    # names the results folder.
    pre = scratch / "env"
    env_step = launch(args, "env", pre, scratch, DRY_BUDGETS["env"], args.dry_run)
    while not env_step.check():
        time.sleep(0.2)
    env = outcome(env_step, pre)
    info = env.get("info") or {}
    dry = args.dry_run or not info.get("cuda_available", False)
    out = results_dir(args, {"info": {"device_slug": "unknown", **info}}, dry)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(pre / "env.json", out / "env.json")
    print(_tail(env_step.log, 2000), end="", flush=True)
    print(f"results: {out}\n", flush=True)

    table, total = budgets(args, dry)
    deadline = t0 + total
    reports = {"env": env}
    for phase in DRY_PHASES if dry else PHASES:
        running = []
        for name in (s for s in phase if s != "env"):
            if name not in wanted:
                reports[name] = {"step": name, "status": SKIPPED, "notes": ["not asked for"]}
                continue
            budget = min(table[name], deadline - time.monotonic() - 3)
            if budget < MIN_STEP_S["dry" if dry else "gpu"]:
                note = f"not started: {max(budget, 0):.0f} s left of the {total:.0f} s budget"
                reports[name] = {"step": name, "status": SKIPPED, "no_time": True, "notes": [note]}
                print(f"{name}: {note}", flush=True)
                continue
            print(f"[{time.monotonic() - t0:5.0f} s] {name}: started ({budget:.0f} s)", flush=True)
            running.append(launch(args, name, out, scratch, budget, dry))
        while running:
            time.sleep(0.5)
            for step in [s for s in running if s.check()]:
                running.remove(step)
                done = reports[step.name] = outcome(step, out)
                elapsed = time.monotonic() - t0
                print(f"[{elapsed:5.0f} s] {step.name}: {done['status']} ({done['wall_s']} s)")

    for name in STEPS:  # the logs' last part beside the results (full logs stay in scratch)
        log = scratch / "logs" / f"{name}.log"
        if log.exists():
            (out / "logs").mkdir(exist_ok=True)
            (out / "logs" / f"{name}.log").write_text(_tail(log, LOG_TAIL_BYTES))
    wall = time.monotonic() - t0
    reports = {n: reports[n] for n in STEPS if n in reports}  # the order
    bad = [n for n, r in reports.items() if r["status"] in (FAILED, TIMEOUT) or r.get("no_time")]
    meta = {
        "mode": "cpu-dry-run" if dry else "gpu",
        "started": started,
        "wall_s": round(wall, 1),
        "total_budget_s": total,
        "budgets_s": table,
        "phases": DRY_PHASES if dry else PHASES,
        "device": info.get("device"),
        "scratch": str(scratch),
        "passed": not bad,
        "steps": {
            n: {k: r.get(k) for k in ("status", "wall_s", "notes")} for n, r in reports.items()
        },
    }
    write_json(out / "gpu_check.json", meta)
    write_summary(out, reports, meta)
    verdicts = ", ".join(f"{n} {r['status']}" for n, r in reports.items())
    print(f"\n{'CPU DRY RUN' if dry else 'GPU run'} in {wall:.0f} s: {verdicts}")
    print(f"wrote {out}/summary.md" + ("" if not bad else f"; not passed: {', '.join(bad)}"))
    if args.archive:  # one file: a lent machine returns few files
        args.archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.archive, "w:gz") as tar:
            tar.add(out, arcname=out.name)
        print(f"wrote {args.archive}")
    print("\n" + (out / "summary.md").read_text())  # the end of the output is what comes back
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

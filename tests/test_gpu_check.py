"""``make gpu-check``: its CPU dry run runs every step and writes every file (docs/gpu-check.md).

The dry run is what CI can check of a command built for a GPU: each step at tiny shapes, the
kernels in the Triton interpreter. Beside it, the pieces that a dry run cannot reach: the
autotune-config walk (the interpreter has one config per kernel) and the tables' arithmetic.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check_steps import science, speed  # noqa: E402
from gpu_check_steps.autotune import ConfigCycler  # noqa: E402
from gpu_check_steps.common import fused_variants  # noqa: E402

STEP_FILES = {
    "env": ["env.json"],
    "correctness": ["correctness.json", "correctness.csv"],
    "speed": ["speed.json", "speed.csv", "attention.json"],
    "throughput": ["throughput.json", "throughput.csv", "train_throughput_softmax.json"],
    "science": ["science.json", "science_softmax.csv"],
}
DRY_RUN_LIMIT_S = 120  # the bound for the dry run on a CPU


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    base = tmp_path_factory.mktemp("gpu-check")
    out = base / "results"
    cmd = [sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(out)]
    cmd += ["--scratch", str(base / "scratch")]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    return out, proc, time.monotonic() - start


def test_dry_run_passes_every_step_and_writes_its_files(dry_run) -> None:
    out, proc, wall = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    meta = json.loads((out / "gpu_check.json").read_text())
    assert meta["mode"] == "cpu-dry-run" and meta["passed"]
    for step, files in STEP_FILES.items():
        report = json.loads((out / f"{step}.json").read_text())
        assert report["status"] == "passed", (step, report["notes"])
        assert report["dry_run"] or step == "env"
        for name in files:
            assert (out / name).stat().st_size > 0, (step, name)
        assert (out / "logs" / f"{step}.log").exists()
    summary = (out / "summary.md").read_text()
    assert "CPU DRY RUN" in summary and "not results" in summary
    for title in ("Correctness", "Kernel speed", "Training throughput", "Science"):
        assert title in summary
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 2**20  # small
    assert wall < DRY_RUN_LIMIT_S, f"dry run took {wall:.0f} s"


def test_dry_run_covers_the_registry(dry_run) -> None:
    """Every fused variant of the registry (not a hand list) is checked and timed."""
    out = dry_run[0]
    fused = set(fused_variants()[0])
    with (out / "correctness.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["variant"] for r in rows} == fused
    assert all(r["passed"] == "True" for r in rows)
    checks = json.loads((out / "correctness.json").read_text())["self_check"]
    assert {c["variant"] for c in checks if c["passed"]} == fused
    timed = json.loads((out / "speed.json").read_text())["rows"]
    assert {r["variant"] for r in timed if r["impl"] == "triton" and r.get("ms")} == fused
    trajectory = (out / "science_softmax.csv").read_text().splitlines()
    assert "step" in trajectory[0] and "first_token" in trajectory[0] and len(trajectory) > 2


def test_dry_run_results_stay_out_of_benchmarks(tmp_path) -> None:
    import gpu_check

    args = gpu_check.parse_args([])
    out = gpu_check.results_dir(args, {"info": {"device_slug": "cpu-dryrun"}}, dry=True)
    assert out.parent == ROOT / "outputs" / "gpu-check"
    gpu = gpu_check.results_dir(args, {"info": {"device_slug": "nvidia-h100"}}, dry=False)
    assert gpu.parent == ROOT / "benchmarks" / "results" and gpu.name.startswith("nvidia-h100-")


def test_make_target_runs_the_script() -> None:
    made = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0 and "bench/gpu_check.py" in made.stdout


def test_config_cycler_runs_each_autotune_config_in_turn() -> None:
    """The walk over autotune configs, on a two-config kernel (the interpreter's sysout kernels
    have one config each, so the dry run cannot show it)."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.autotune(
        configs=[triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})], key=["n"]
    )
    @triton.jit
    def fill(out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.zeros([BLOCK], dtype=tl.int32) + BLOCK, mask=offs < n)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cycler = ConfigCycler(tuners={"fill": fill})
    assert cycler.active
    seen = []
    cycler.start_case()
    index = 0
    while True:
        cycler.select(index)
        out = torch.zeros(64, dtype=torch.int32, device=device)
        fill[lambda meta: (64 // meta["BLOCK"],)](out, 64)
        seen.append((int(out[0]), cycler.label()))
        index += 1
        if index >= cycler.count():
            break
    assert [v for v, _ in seen] == [16, 32]
    assert "fill: 16 w4" in seen[0][1] and "fill: 32 w4" in seen[1][1]


def test_speed_table_ratios_within_one_run() -> None:
    def entry(variant: str, impl: str, fwd_ms: float) -> dict:
        timing = {
            "fwd": {"ms": fwd_ms, "tflops": 1.0},
            "fwd+bwd": {"ms": 3 * fwd_ms, "tflops": 1.0},
        }
        return {"variant": variant, "impl": impl, "B": 8, "H": 12, "T": 1024, "d": 64, **timing}

    results = [
        entry("softmax", "sdpa-flash", 1.0),
        entry("softmax", "triton", 1.25),
        entry("softmax", "reference", 5.0),
        {"variant": "sigmoid", "impl": "triton", "T": 1024, "error": "boom"},
    ]
    rows = {(r["variant"], r["impl"], r["mode"]): r for r in speed.table(results)}
    kernel = rows[("softmax", "triton", "fwd")]
    assert kernel["x_sdpa-flash_softmax"] == pytest.approx(1.25)
    assert kernel["reference_over_kernel"] == pytest.approx(4.0)
    assert rows[("sigmoid", "triton", "fwd+bwd")]["error"] == "boom"


def test_science_trajectory_and_guo_anchors() -> None:
    key = "outliers/activation/layer_00/first_token_norm"
    rows = [
        {"step": str(s), "train/loss": "1.0", key: str(24.0 + s / 100), "other": "x"}
        for s in (0, 500, 1000, 1500)
    ]
    rows.append({"step": "1600", "train/loss": "", key: "", "other": "y"})  # nothing kept: dropped
    traj = science.trajectory(rows)
    assert len(traj) == 4 and "other" not in traj[0]
    column, kind, series = science.layer0_series(traj)
    assert (column, kind) == (key, "absolute") and series[1000] == pytest.approx(34.0)
    anchors = science.at_anchors(series)
    assert set(anchors) == {0, 600, 1000, 1500}  # Guo's steps this run reached
    assert anchors[600]["step"] == 500 and anchors[1000]["guo"] == 34.4

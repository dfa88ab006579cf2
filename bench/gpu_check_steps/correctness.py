"""Step 2: every fused variant against its float64 reference, and the kernel self-check.

For each fused variant of the registry, dtype (bf16 and fp16 on a GPU; fp32 and fp16 in the CPU
interpreter, whose bf16 arithmetic is wrong) and head dim (64 and 128), the variant's
``fused_forward`` (output), its gradients (q, k, v, the block input x, the variant's parameters)
and its key mass (``fused_forward(..., return_key_mass=True)``) are compared with the variant's
own ``reference`` / ``attention_weights`` computed in float64 from the same rounded inputs, at
T = 128, 1024, 4096, in every autotune config of the kernels (``autotune.ConfigCycler``). Error =
max |kernel - reference| / max(1, max |reference|), the measure and tolerances of
tests/test_kernels.py. Then ``resolved_impl`` with the self-check on must keep the kernel.

Cases run in parallel worker processes (compiling is CPU-bound and the configs compile once per
case); rows are written to correctness.csv as cases finish.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from .common import FAILED, PASSED, StepContext, StepReport, fused_variants, write_csv

# max |err| / max(1, max |ref|), by kernel dtype: tests/test_kernels.py's TOL
TOLERANCE = {"fp32": 2e-5, "fp16": 5e-3, "bf16": 3e-2}
GPU = {"dtypes": ["bf16", "fp16"], "head_dims": [64, 128], "seq_lens": [128, 1024, 4096]}
# The CPU interpreter is slow: one length that crosses its 32 x 16 blocks, one dtype per variant
# taking turns (tests/test_kernels.py checks the kernels on CPU in depth; the dry run checks this
# step's machinery on every variant).
DRY = {"dtypes": ["fp32", "fp16"], "head_dims": [32], "seq_lens": [40]}
B, H = 2, 2  # B, H not 1: a size of 1 would compile other kernel specialisations than training's

_CYCLER = None  # one per worker process


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _randomise(variant) -> None:
    """Learned parameters away from their init (zeros would hide a wrong gradient path)."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in variant.modules():
            for pname, p in module.named_parameters(recurse=False):
                std = p.shape[-1] ** -0.5 if isinstance(module, torch.nn.Linear) else 0.5
                if pname != "bias" or not isinstance(module, torch.nn.Linear):
                    p.copy_(torch.randn(p.shape, generator=gen) * std)


def _err(got, want) -> float:
    if got is None or want is None:
        return float("inf") if (got is None) != (want is None) else 0.0
    want = want.double()
    err = (got.double() - want).abs().max().item()
    return err / max(1.0, want.abs().max().item()) if err == err else float("inf")


def _wait_for_memory(need_bytes: float, device) -> None:
    """Parallel workers share the GPU: wait (a little) for room before a large float64 case."""
    import torch

    if device.type != "cuda":
        return
    for _ in range(120):
        if torch.cuda.mem_get_info(device)[0] > need_bytes + 2 * 2**30:
            return
        time.sleep(0.5)


def check_job(name: str, dtype_name: str, head_dim: int, seq_lens: list[int]) -> dict[str, Any]:
    """One (variant, dtype, head dim): the self-check, then every T in every config."""
    import torch

    from sysout.attention import build_variant, set_kernel_self_check

    from .autotune import ConfigCycler

    global _CYCLER
    if _CYCLER is None:
        _CYCLER = ConfigCycler()
    cycler = _CYCLER
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype, tol = _dtype(dtype_name), TOLERANCE[dtype_name]
    t0 = time.monotonic()
    variant = build_variant(name, H, H * head_dim, impl="triton").to(device)
    _randomise(variant)
    cycler.start_case()

    # The self-check as training runs it ("on": also on the CPU interpreter).
    set_kernel_self_check("on")
    probe = torch.zeros(1, H, 16, head_dim, dtype=dtype, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verdict = variant.resolved_impl(probe)
    why = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    self_check = {"passed": verdict == "triton", "impl": verdict, "warning": " | ".join(why)}

    reference = copy.deepcopy(variant).double()
    params = [p for p in variant.parameters() if p.requires_grad]
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    pnames = [n for n, p in variant.named_parameters() if p.requires_grad]
    rows = []
    for T in seq_lens:
        _wait_for_memory(12 * B * H * T * T * 8, device)
        gen = torch.Generator().manual_seed(T)
        qkv = torch.randn(B, T, 3, H, head_dim, generator=gen).to(device, dtype)
        qkv.requires_grad_(True)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # token-major, as GPT-2's
        x = torch.randn(B, T, H * head_dim, generator=gen).to(device).requires_grad_(True)
        dy = torch.randn(B, H, T, head_dim, generator=gen).to(device, dtype)

        qkv64 = qkv.detach().double().requires_grad_(True)
        q64, k64, v64 = (qkv64[:, :, i].transpose(1, 2) for i in range(3))
        x64 = x.detach().double().requires_grad_(True)
        ro = reference.reference(q64, k64, v64, x64)
        ref_grads = torch.autograd.grad(
            ro, [qkv64, x64, *ref_params], dy.double(), allow_unused=True
        )
        with torch.no_grad():
            ref_mass = reference.attention_weights(q64, k64, x64).sum(dim=-2)
        ro = ro.detach()
        del q64, k64, v64

        index = 0
        while True:
            cycler.select(index)
            row: dict[str, Any] = {"variant": name, "dtype": dtype_name, "head_dim": head_dim}
            row.update(T=T, B=B, H=H, config_index=index, tolerance=tol)
            try:
                o = variant.fused_forward(q, k, v, x)
                grads = torch.autograd.grad(o, [qkv, x, *params], dy, allow_unused=True)
                with torch.no_grad():
                    mass = variant.fused_forward(q, k, v, x, return_key_mass=True)[1]
                errs = {"out": _err(o, ro), "key_mass": _err(mass, ref_mass)}
                for i, part in enumerate("qkv"):
                    errs[f"d{part}"] = _err(grads[0][:, :, i], ref_grads[0][:, :, i])
                errs["dx"] = _err(grads[1], ref_grads[1])
                for pname, g, rg in zip(pnames, grads[2:], ref_grads[2:]):
                    errs[f"d{pname}"] = _err(g, rg)
                worst = max(errs, key=errs.get)
                row.update({f"err_{k}": v for k, v in errs.items()})
                row.update(worst=worst, max_err=errs[worst], passed=errs[worst] <= tol)
            except Exception as exc:  # a compile or launch error fails this case, not the step
                row.update(passed=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            row["configs"] = cycler.label()
            rows.append(row)
            index += 1
            if index >= cycler.count():
                break
        del qkv, x, dy, ro, ref_grads, ref_mass
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "variant": name,
        "dtype": dtype_name,
        "head_dim": head_dim,
        "self_check": self_check,
        "rows": rows,
        "configs_walked": cycler.active,
        "seconds": round(time.monotonic() - t0, 1),
    }


def _workers(ctx: StepContext, jobs: int) -> int:
    if ctx.workers:
        return ctx.workers
    if ctx.dry_run:
        return 1  # no compiling to spread; a worker would only import torch again
    # compile on most cores, leaving a few for the science runs beside this step
    return max(1, min(jobs, 12, (os.cpu_count() or 2) - 4))


def _results(jobs: list[tuple], seq_lens: list[int], workers: int):
    """(job, result or exception) as the jobs finish; in this process when workers == 1."""
    if workers == 1:
        for job in jobs:
            try:
                yield job, check_job(*job, seq_lens)
            except Exception as exc:
                yield job, exc
        return
    # spawn: CUDA cannot be forked into a worker after the parent initialised it
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        futures = {pool.submit(check_job, *job, seq_lens): job for job in jobs}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except Exception as exc:  # the worker itself died
                yield futures[future], exc


def run(ctx: StepContext) -> int:
    report = StepReport(ctx)
    shape = DRY if ctx.dry_run else GPU
    fused, plain = fused_variants()
    if plain:
        report.note(f"reference-only variants, not checked here: {', '.join(plain)}")
    if ctx.dry_run:  # one dtype per variant, taking turns
        dtypes = shape["dtypes"]
        jobs = [
            (n, dtypes[i % len(dtypes)], d) for d in shape["head_dims"] for i, n in enumerate(fused)
        ]
    else:
        jobs = [(n, dt, d) for dt in shape["dtypes"] for d in shape["head_dims"] for n in fused]
    jobs.sort(key=lambda j: -j[2])  # d = 128 first: the slowest to compile
    workers = _workers(ctx, len(jobs))
    report.note(
        f"{len(jobs)} cases (variant x dtype x head dim) at T = {shape['seq_lens']}, B={B}, "
        f"H={H}, {workers} worker process(es)"
    )
    rows: list[dict] = []
    checks: list[dict] = []
    walked = True
    csv_path = ctx.out / "correctness.csv"
    report.add_file(csv_path)
    for (name, dt, d), result in _results(jobs, shape["seq_lens"], workers):
        if isinstance(result, Exception):  # the job or its worker died: record it, go on
            why = f"{type(result).__name__}: {str(result)[:300]}"
            checks.append({"variant": name, "dtype": dt, "head_dim": d, "passed": False})
            rows.append(
                {"variant": name, "dtype": dt, "head_dim": d, "passed": False, "error": why}
            )
        else:
            walked &= result["configs_walked"]
            checks.append({"variant": name, "dtype": dt, "head_dim": d, **result["self_check"]})
            rows += result["rows"]
            ok = all(r.get("passed") for r in result["rows"])
            print(f"  {name} {dt} d={d}: {'ok' if ok else 'MISMATCH'} ({result['seconds']} s)")
        write_csv(csv_path, rows)
        report.save(cases_done=len(checks), cases=len(jobs), self_check=checks)
    if not walked:
        report.note("the kernels are not triton.autotune objects: the autotuner's choice was run")
    failed_rows = [r for r in rows if not r.get("passed")]
    failed_checks = [c for c in checks if not c.get("passed")]
    for r in failed_rows[:20]:
        report.note(
            f"MISMATCH {r['variant']} {r['dtype']} d={r['head_dim']} T={r.get('T')}: "
            + (
                r.get("error")
                or f"{r['worst']} err {r['max_err']:.3g} > "
                f"{r['tolerance']:.3g} (configs {r.get('configs')})"
            )
        )
    for c in failed_checks:
        report.note(
            f"SELF-CHECK FAILED {c['variant']} {c['dtype']} d={c['head_dim']}: {c.get('warning')}"
        )
    status = FAILED if failed_rows or failed_checks else PASSED
    report.finish(
        status,
        cases_done=len(checks),
        cases=len(jobs),
        rows_checked=len(rows),
        rows_failed=len(failed_rows),
        self_check=checks,
        tolerance=TOLERANCE,
        shapes=shape,
    )
    return 0 if status == PASSED else 1

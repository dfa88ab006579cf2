"""Step 3: kernel speed through bench/attention.py, at the anchors' shape.

Every fused variant's kernel, forward and forward+backward, beside SDPA's flash backend (the
variants SDPA can express, softmax among them) and the variant's own eager reference: batch 8,
12 heads, d = 64, T = 1024 and 4096, causal, bf16. Ratios are taken inside this one run: the
kernel's time over SDPA-flash softmax's (the FlashAttention-2 anchor of SPEC section 6) and the
reference's time over the kernel's. The bench's batch-1 accuracy check is left out (--no-check):
the correctness step checks against float64, and a batch of 1 would compile other kernel
specialisations than the ones the correctness step has already compiled.
"""

from __future__ import annotations

from typing import Any

from .common import (
    FAILED,
    PASSED,
    StepContext,
    StepReport,
    fused_variants,
    read_json,
    write_csv,
)

MODES = ["fwd", "fwd+bwd"]


def bench_argv(ctx: StepContext, variants: list[str], raw: str) -> list[str]:
    argv = ["--variants", *variants, "--modes", *MODES, "--out", raw]
    if ctx.dry_run:
        return ["--smoke", *argv]
    return [
        *argv,
        *("--seq-lens", "1024", "4096", "--batch", "8", "--heads", "12", "--head-dim", "64"),
        *("--dtype", "bf16", "--no-flex", "--no-check", "--sdpa-backends", "flash"),
        *("--warmup", "10", "--rep", "50"),  # do_bench ms: dozens of calls even at T = 4096
    ]


def table(results: list[dict]) -> list[dict[str, Any]]:
    """One row per (variant, impl, T, mode) with ms, TFLOP/s and the in-run ratios."""
    ms = {
        (r["variant"], r["impl"], r["T"], m): r[m]["ms"]
        for r in results
        if "error" not in r
        for m in MODES
        if m in r
    }
    # smoke runs have one unnamed SDPA ("sdpa"); GPU runs name the backend
    sdpa = next((i for i in ("sdpa-flash", "sdpa") if any(k[1] == i for k in ms)), "sdpa-flash")
    rows = []
    for r in results:
        for m in MODES:
            row = {k: r.get(k) for k in ("variant", "impl", "B", "H", "T", "d")}
            row["mode"] = m
            if "error" in r or m not in r:
                row["error"] = r.get("error", "not measured")
                rows.append(row)
                continue
            row.update(ms=r[m]["ms"], tflops=r[m]["tflops"], peak_mib=r[m].get("peak_mib"))
            base = ms.get(("softmax", sdpa, r["T"], m))
            row[f"x_{sdpa}_softmax"] = r[m]["ms"] / base if base else None
            if r["impl"] == "triton":
                ref = ms.get((r["variant"], "reference", r["T"], m))
                row["reference_over_kernel"] = ref / r[m]["ms"] if ref else None
                own = ms.get((r["variant"], sdpa, r["T"], m))  # SDPA + epilogue, where it can
                row[f"x_{sdpa}_same_variant"] = r[m]["ms"] / own if own else None
            rows.append(row)
    return rows


def run(ctx: StepContext) -> int:
    import attention  # bench/attention.py

    report = StepReport(ctx)
    fused, plain = fused_variants()
    if plain:
        report.note(f"reference-only variants, no kernel to time: {', '.join(plain)}")
    raw = ctx.out / "attention.json"
    report.add_file(raw)
    report.save(bench_argv=bench_argv(ctx, fused, str(raw)))
    try:
        attention.main(bench_argv(ctx, fused, str(raw)))
    finally:  # stopped or not, tabulate what the bench wrote
        results = (read_json(raw) or {}).get("results", [])
        rows = table(results)
        write_csv(ctx.out / "speed.csv", rows)
        report.add_file(ctx.out / "speed.csv")
        report.save(rows=rows)
    broken = [r for r in rows if r["impl"] == "triton" and r.get("error")]
    others = [r for r in rows if r["impl"] != "triton" and r.get("error")]
    for r in broken:
        report.note(f"KERNEL FAILED {r['variant']} T={r['T']} {r['mode']}: {r['error']}")
    for r in others:
        report.note(f"{r['impl']} {r['variant']} T={r['T']} {r['mode']}: {r['error']}")
    status = FAILED if broken or not rows else PASSED
    report.finish(status, rows=rows)
    return 0 if status == PASSED else 1

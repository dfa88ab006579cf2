"""Step 4: GPT-2 124M training throughput through bench/train_throughput.py.

bf16 autocast, ``torch.compile`` (``--compile``: ``model.compile()``, as ``compile=true`` does),
the fused kernel, AdamW, batch 16 x 1024 tokens; softmax and two of the paper's remedies
(kv_bias, ca_scaling; the next fused variants of the registry when those are missing). Tokens/s
and MFU come from the training run's throughput callback; the outlier callback's overhead is its
probe's time spread over its default interval (``conf/callbacks/outliers.yaml``), in the same run.
One bench call per variant, softmax first: a variant that the time left cannot hold (judged by
the first one's time, compile included) is left out with a note instead of being cut off.
The CPU dry run uses the bench's --smoke (gpt2_tiny, reference attention, no compile).
"""

from __future__ import annotations

import time

from .common import (
    FAILED,
    PASSED,
    StepContext,
    StepReport,
    fused_variants,
    read_json,
    write_csv,
)

PREFERRED = ["softmax", "kv_bias", "ca_scaling"]
LLM_C_TOKENS_PER_SEC = 460e3  # GPT-2 124M per H100 (llm.c / modded-nanogpt; SPEC section 6)


def choose_variants(fused: list[str]) -> list[str]:
    chosen = [v for v in PREFERRED if v in fused]
    return (chosen + [v for v in fused if v not in chosen])[:3]


def bench_argv(ctx: StepContext, variant: str, raw: str) -> list[str]:
    argv = ["--variants", variant, "--out", raw]
    if ctx.dry_run:
        return ["--smoke", *argv]
    return [
        *argv,
        *("--model", "gpt2_small", "--impls", "triton", "--compile", "--batch", "16"),
        *("--steps", "10", "--warmup", "3", "--probe-repeats", "1"),
    ]


def run(ctx: StepContext) -> int:
    import train_throughput  # bench/train_throughput.py

    report = StepReport(ctx)
    variants = choose_variants(fused_variants()[0])
    if ctx.dry_run:
        report.note("dry run: gpt2_tiny on CPU, reference attention, no torch.compile")
    rows: list[dict] = []
    meta: dict = {}
    longest = 0.0
    for variant in variants:
        if longest and ctx.remaining() < 1.2 * longest:
            report.note(
                f"{variant} not measured: {ctx.remaining():.0f} s left, one variant took "
                f"{longest:.0f} s"
            )
            continue
        raw = ctx.out / f"train_throughput_{variant}.json"
        report.add_file(raw)
        started = time.monotonic()
        try:
            train_throughput.main(bench_argv(ctx, variant, str(raw)))
        except Exception as exc:  # one variant failing must not lose the others
            rows.append({"variant": variant, "error": f"{type(exc).__name__}: {exc}"})
        else:
            result = read_json(raw) or {}
            meta = {k: result.get(k) for k in ("device", "model", "batch", "compile", "torch")}
            rows += result.get("rows", [])
        longest = max(longest, time.monotonic() - started)
        for row in rows:
            tps = row.get("tokens_per_sec")
            row["x_llm_c_h100"] = tps / LLM_C_TOKENS_PER_SEC if tps else None
        write_csv(ctx.out / "throughput.csv", rows)
        report.add_file(ctx.out / "throughput.csv")
        report.save(rows=rows, **meta)
    failed = [r for r in rows if r.get("error") or not r.get("tokens_per_sec")]
    for r in failed:
        report.note(f"FAILED {r.get('variant')} {r.get('impl')}: {r.get('error')}")
    status = FAILED if failed or not rows else PASSED
    report.finish(status, rows=rows, variants=variants, **meta)
    return 0 if status == PASSED else 1

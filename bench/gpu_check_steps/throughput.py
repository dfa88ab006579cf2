"""Step 4: GPT-2 124M training throughput through bench/train_throughput.py.

bf16 autocast, ``torch.compile`` (``--compile``: ``model.compile()``, as ``compile=true`` does),
the fused kernel, AdamW, batch 16 x 1024 tokens; softmax and two of the paper's remedies
(kv_bias, ca_scaling; the next fused variants of the registry when those are missing). Tokens/s
and MFU come from the training run's throughput callback; the outlier callback's overhead is its
probe's time spread over its default interval (``conf/callbacks/outliers.yaml``), in the same run.
The CPU dry run uses the bench's --smoke (gpt2_tiny, reference attention, no compile).
"""

from __future__ import annotations

from .common import FAILED, PASSED, StepContext, StepReport, fused_variants, read_json, write_csv

PREFERRED = ["softmax", "kv_bias", "ca_scaling"]
LLM_C_TOKENS_PER_SEC = 460e3  # GPT-2 124M per H100 (llm.c / modded-nanogpt; SPEC section 6)


def choose_variants(fused: list[str]) -> list[str]:
    chosen = [v for v in PREFERRED if v in fused]
    return (chosen + [v for v in fused if v not in chosen])[:3]


def run(ctx: StepContext) -> int:
    import train_throughput  # bench/train_throughput.py

    report = StepReport(ctx)
    variants = choose_variants(fused_variants()[0])
    raw = ctx.out / "train_throughput.json"
    argv = ["--variants", ",".join(variants), "--out", str(raw)]
    if ctx.dry_run:
        argv = ["--smoke", *argv]
        report.note("dry run: gpt2_tiny on CPU, reference attention, no torch.compile")
    else:
        argv += ["--model", "gpt2_small", "--impls", "triton", "--compile"]
        argv += ["--batch", "16", "--steps", "10", "--warmup", "3"]
    report.save(bench_argv=argv, variants=variants)
    try:
        train_throughput.main(argv)
    finally:  # stopped or not, tabulate what the bench wrote
        result = read_json(raw) or {}
        rows = result.get("rows", [])
        for row in rows:
            tps = row.get("tokens_per_sec")
            row["x_llm_c_h100"] = tps / LLM_C_TOKENS_PER_SEC if tps else None
        write_csv(ctx.out / "throughput.csv", rows)
        for path in (raw, ctx.out / "throughput.csv"):
            report.add_file(path)
        report.save(rows=rows, model=result.get("model"), batch=result.get("batch"))
    failed = [r for r in rows if r.get("error") or not r.get("tokens_per_sec")]
    for r in failed:
        report.note(f"FAILED {r.get('variant')} {r.get('impl')}: {r.get('error')}")
    missing = [v for v in variants if v not in {r.get("variant") for r in rows}]
    if missing:
        report.note(f"not measured: {', '.join(missing)}")
    status = FAILED if failed or missing else PASSED
    report.finish(status, rows=rows)
    return 0 if status == PASSED else 1

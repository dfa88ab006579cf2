"""Step 6: ``summary.md``, one page from the steps' JSON reports (no torch needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# SPEC section 6 (H100 SXM, bf16, d = 64, causal, T = 1k): FlashAttention-2 = SDPA flash
SPEC_FA2_TFLOPS = {"fwd": 229.0, "fwd+bwd": 192.0}
GUO_STEPS = (0, 1000, 5000, 10000)


def _f(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None or value == "" else format(value, spec)


def _first_notes(report: dict, n: int = 2) -> str:
    notes = [str(x).splitlines()[0] for x in report.get("notes", [])]
    text = "; ".join(notes[:n]) + (f" (+{len(notes) - n} more)" if len(notes) > n else "")
    return text.replace("|", "/")


def _correctness(rep: dict) -> list[str]:
    import csv

    path = rep.get("_out") / "correctness.csv"
    if not path.exists():
        return ["No case finished."]
    rows = list(csv.DictReader(path.open()))
    cols = sorted({(r["dtype"], r["head_dim"]) for r in rows}, key=lambda c: (c[0], int(c[1])))
    checks = {(c["variant"], c["dtype"], str(c["head_dim"])): c for c in rep.get("self_check", [])}
    lines = [
        "Cell: largest error / tolerance over T, every autotune config, output, gradients and "
        "key mass (<= 1 passes); then the self-check's verdict.",
        "",
        "| variant | " + " | ".join(f"{d} d={h}" for d, h in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for variant in sorted({r["variant"] for r in rows}):
        cells = []
        for d, h in cols:
            case = [r for r in rows if (r["variant"], r["dtype"], r["head_dim"]) == (variant, d, h)]
            if not case:
                cells.append("-")
                continue
            worst = max(
                (float(r["max_err"]) / float(r["tolerance"]) if r.get("max_err") else 1e9)
                for r in case
            )
            ok = all(r["passed"] == "True" for r in case)
            check = checks.get((variant, d, h), {})
            verdict = "self-check ok" if check.get("passed") else "SELF-CHECK FAILED"
            cells.append(f"{'' if ok else 'FAIL '}{_f(worst, '.2g')} ({len(case)} runs), {verdict}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def _speed(rep: dict) -> list[str]:
    rows = [r for r in rep.get("rows", []) if not r.get("error")]
    if not rows:
        return ["Nothing measured."]
    ratio = next((k for r in rows for k in r if k.startswith("x_") and k.endswith("_softmax")), "")
    lines = [
        f"ms and TFLOP/s (SPEC 6 convention); `x SDPA` = time / SDPA ({ratio[2:-8]}) softmax's "
        "in this run; `ref/kernel` = eager reference's time / the kernel's.",
        "",
        "| variant | impl | T | fwd ms | fwd TF/s | fwd x SDPA | f+b ms | f+b TF/s | f+b x SDPA "
        "| f+b ref/kernel |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(r["variant"], r["impl"], r["T"], r["mode"]): r for r in rows}
    for variant, impl, T in sorted({(r["variant"], r["impl"], r["T"]) for r in rows}):
        if impl == "reference":
            continue  # in the ratio column
        fwd, both = (
            keyed.get((variant, impl, T, "fwd"), {}),
            keyed.get((variant, impl, T, "fwd+bwd"), {}),
        )
        lines.append(
            f"| {variant} | {impl} | {T} | {_f(fwd.get('ms'))} | {_f(fwd.get('tflops'))} | "
            f"{_f(fwd.get(ratio))} | {_f(both.get('ms'))} | {_f(both.get('tflops'))} | "
            f"{_f(both.get(ratio))} | {_f(both.get('reference_over_kernel'))} |"
        )
    base = {
        m: keyed.get(("softmax", "sdpa-flash", 1024, m), {}).get("tflops") for m in SPEC_FA2_TFLOPS
    }
    if any(base.values()):
        lines += [
            "",
            f"Anchor (SPEC 6, H100 SXM, T=1k): FlashAttention-2 ~{SPEC_FA2_TFLOPS['fwd']:.0f} "
            f"TF/s fwd, ~{SPEC_FA2_TFLOPS['fwd+bwd']:.0f} fwd+bwd; SDPA flash here: "
            f"{_f(base['fwd'])} and {_f(base['fwd+bwd'])}.",
        ]
    return lines


def _throughput(rep: dict) -> list[str]:
    rows = rep.get("rows", [])
    if not rows:
        return ["Nothing measured."]
    lines = [
        f"Model {rep.get('model')}, batch {rep.get('batch')} x its block size; tokens/s and MFU "
        "from the throughput callback; anchor: llm.c's GPT-2 124M ~460K tokens/s per H100.",
        "",
        "| variant | impl | tokens/s | MFU | x 460K | outlier probe overhead | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r.get('variant')} | {r.get('impl')} | {r['error'][:80]} | | | | |")
            continue
        lines.append(
            f"| {r['variant']} | {r['impl']} | {_f(r.get('tokens_per_sec'), '.0f')} | "
            f"{_f(r.get('mfu'), '.1%')} | {_f(r.get('x_llm_c_h100'), '.2f')} | "
            f"{_f(r.get('outlier_overhead'), '.2%')} every {r.get('outlier_interval')} | "
            f"{_f(r.get('peak_memory_gib'), '.1f')} |"
        )
    return lines


def _science(rep: dict) -> list[str]:
    runs = rep.get("runs", [])
    if not runs:
        return ["No run."]
    guo = rep.get("guo_adam", {})
    lines = [
        f"`experiment={rep.get('experiment')}`. Layer-0 BOS figure at Guo's steps (value @ the "
        "nearest logged step); Guo et al. (Adam): "
        + ", ".join(f"{s}: {guo.get(str(s))}" for s in GUO_STEPS)
        + "; SGD 24.3 -> 20.4, ReLU attention 23.4 -> 24.5.",
        "",
        "| run | last step | stopped at deadline | figure | "
        + " | ".join(f"step {s}" for s in GUO_STEPS)
        + " |",
        "|---|---|---|---|" + "---|" * len(GUO_STEPS),
    ]
    for r in runs:
        anchors = r.get("at_guo_steps", {})
        cells = [
            _f(anchors[str(s)]["value"]) + f" @{anchors[str(s)]['step']}"
            if str(s) in anchors
            else "-"
            for s in GUO_STEPS
        ]
        figure = (
            f"{r.get('layer0_column')} ({r.get('layer0_kind')})" if r.get("layer0_column") else "-"
        )
        last = "config only (dry run)" if r.get("composed_only") else r.get("last_step")
        lines.append(
            f"| {r['run']} | {last} | {r.get('stopped_at_deadline')} | "
            f"{figure} | " + " | ".join(cells) + " |"
        )
    return lines


SECTIONS = [
    ("correctness", "2. Correctness against float64", _correctness),
    ("speed", "3. Kernel speed (bench/attention.py)", _speed),
    ("throughput", "4. Training throughput (bench/train_throughput.py)", _throughput),
    ("science", "5. Science: Guo et al.'s Bigram-Backcopy", _science),
]


def write_summary(out: Path, reports: dict[str, dict], meta: dict) -> Path:
    info = reports.get("env", {}).get("info", {}) or {}
    dry = meta["mode"] != "gpu"
    lines = [f"# sysout gpu-check: {info.get('device', '?')}, {meta['started'][:10]}", ""]
    if dry:
        lines += [
            "**CPU DRY RUN**: tiny shapes, kernels in the Triton interpreter. These figures "
            "only show that every step runs; they are not results and are not committed.",
            "",
        ]
    pk = info.get("packages", {})
    lines += [
        f"Driver {info.get('driver')}, CUDA {info.get('torch_cuda')}, torch {info.get('torch')}, "
        f"Triton {pk.get('triton')}, Python {info.get('python')}, commit "
        f"{(info.get('git_commit') or 'unknown')[:10]}. Wall time {meta['wall_s']:.0f} s "
        f"(budget {meta['total_budget_s']:.0f} s). Verdict: "
        f"**{'all steps passed' if meta['passed'] else 'NOT all steps passed'}**.",
        "",
        "| step | status | s | budget | notes |",
        "|---|---|---|---|---|",
    ]
    for name, rep in reports.items():
        budget = meta["budgets_s"].get(name, "")
        lines.append(
            f"| {name} | {rep.get('status')} | {_f(rep.get('wall_s'), '.0f')} | {budget} | "
            f"{_first_notes(rep)} |"
        )
    for name, title, render in SECTIONS:
        rep = reports.get(name)
        if (
            not rep
            or rep.get("status") == "skipped"
            and not rep.get("rows")
            and not rep.get("runs")
        ):
            continue
        rep = {**rep, "_out": out}
        try:
            body = render(rep)
        except Exception as exc:  # a summary must never hide the files it summarises
            body = [f"(could not summarise: {type(exc).__name__}: {exc})"]
        lines += ["", f"## {title}", "", *body]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    lines += ["", "Files: " + ", ".join(f"`{f}`" for f in files + ["summary.md"]) + "."]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path

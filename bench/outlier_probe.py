"""Cost of the outlier probe relative to training, at the callback's default interval.

    python bench/outlier_probe.py                       # gpt2_small, CUDA if present
    python bench/outlier_probe.py --cpu-small --out bench/outlier_probe_cpu.json

overhead = probe_time / (interval x step_time), with step_time one optimizer step (forward +
backward over ``accumulate`` micro-batches of ``batch_size`` x block_size tokens, grad clipping,
AdamW) and probe_time what the callback spends per probe: the probe pass over the probe batch
(``probe_windows`` windows + the probe sentence) plus rendering its figures to PNG (W&B upload
is asynchronous and not counted). The step is measured at the batch given here and, since step
time is linear in tokens, also extrapolated to the paper's 491,520 tokens per step.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sysout.model import build_gpt  # noqa: E402
from sysout.outliers.options import ProbeOptions  # noqa: E402
from sysout.outliers.plots import render_png, report_figures  # noqa: E402
from sysout.outliers.probe import run_probe  # noqa: E402
from sysout.training.optim import OptimConfig, build_optimizer  # noqa: E402

PAPER_TOKENS_PER_STEP = 491_520  # 12 x 1024 x 40 (SPEC section 4)
TARGET = 0.02  # the overhead budget: 2% of training time


def callback_defaults() -> dict:
    """The callback's settings; those it takes from the probe group (``${probe.windows}``) are
    the probe's own defaults (sysout.outliers.options)."""
    cfg = OmegaConf.to_container(
        OmegaConf.load(ROOT / "conf" / "callbacks" / "outliers.yaml").outliers, resolve=False
    )
    cfg["probe_windows"] = ProbeOptions().windows
    return cfg


def parse_args() -> argparse.Namespace:
    defaults = callback_defaults()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="gpt2_small", help="a conf/model/*.yaml name")
    p.add_argument("--attention", default="softmax", help="a conf/attention/*.yaml name")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch-size", type=int, default=12, help="micro-batch (windows)")
    p.add_argument("--accumulate", type=int, default=40, help="micro-batches per optimizer step")
    p.add_argument("--block-size", type=int, default=None, help="override the model's")
    p.add_argument("--interval", type=int, default=defaults["every_n_steps"])
    p.add_argument("--probe-windows", type=int, default=defaults["probe_windows"])
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    p.add_argument("--probes", type=int, default=3, help="timed probes")
    p.add_argument("--probe-warmup", type=int, default=1, help="untimed probes first")
    p.add_argument("--no-figures", action="store_true", help="leave figure rendering out")
    p.add_argument(
        "--cpu-small",
        action="store_true",
        help="CPU in a few minutes: batch 1, accumulation 1, 1 step, 1 probe (no warm-up)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()
    if args.cpu_small:
        args.device, args.batch_size, args.accumulate = "cpu", 1, 1
        args.steps, args.probes, args.probe_warmup = 1, 1, 0
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Wall times of ``repeats`` calls after ``warmup`` untimed calls (kernel compilation,
    allocator and optimizer-state set-up)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    model_cfg = OmegaConf.to_container(
        OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml")
    )
    if args.block_size:
        model_cfg["block_size"] = args.block_size
    attention_cfg = OmegaConf.to_container(
        OmegaConf.load(ROOT / "conf" / "attention" / f"{args.attention}.yaml")
    )
    torch.manual_seed(0)
    model = build_gpt(model_cfg, attention_cfg).to(device)
    block = model.config.block_size
    vocab = 50257
    # Training numerics: bf16 autocast on CUDA (as precision=bf16-mixed), fp32 on CPU.
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    optimizer = build_optimizer(model, OptimConfig())
    gen = torch.Generator().manual_seed(1)
    micro = []
    for _ in range(args.accumulate):
        chunk = torch.randint(0, vocab, (args.batch_size, block + 1), generator=gen)
        micro.append((chunk[:, :-1].contiguous().to(device), chunk[:, 1:].contiguous().to(device)))

    def train_step() -> None:
        model.train()
        for x, y in micro:
            with autocast:
                _, loss = model(x, y)
            (loss / args.accumulate).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    probe_batch = torch.randint(0, vocab, (args.probe_windows, block), generator=gen)
    sentence = list(range(464, 464 + 9))  # ~ the probe sentence's length (9 tokens)
    report_holder = {}

    def probe() -> None:
        with autocast:
            report_holder["r"] = run_probe(model, probe_batch, sentence, step=0)

    def figures() -> None:
        for fig in report_figures(report_holder["r"]).values():
            render_png(fig)

    step_times = timed(train_step, args.steps, device)
    probe_times = timed(probe, args.probes, device, args.probe_warmup)
    figure_times = [0.0] if args.no_figures else timed(figures, args.probes, device)

    step = statistics.median(step_times)
    probe_s = statistics.median(probe_times)
    figure_s = statistics.median(figure_times)
    total = probe_s + figure_s
    tokens = args.batch_size * args.accumulate * block
    overhead = total / (args.interval * step)
    paper_step = step * PAPER_TOKENS_PER_STEP / tokens
    overhead_paper = total / (args.interval * paper_step)
    min_interval = math.ceil(total / (TARGET * step))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "model": args.model,
        "attention": args.attention,
        "block_size": block,
        "tokens_per_step": tokens,
        "batch_size": args.batch_size,
        "accumulate": args.accumulate,
        "probe_windows": args.probe_windows,
        "probe_tokens": args.probe_windows * block + len(sentence),
        "interval": args.interval,
        "step_seconds": step,
        "probe_seconds": probe_s,
        "figure_seconds": figure_s,
        "probe_total_seconds": total,
        "overhead": overhead,
        "paper_tokens_per_step": PAPER_TOKENS_PER_STEP,
        "paper_step_seconds_extrapolated": paper_step,
        "overhead_at_paper_batch": overhead_paper,
        "min_interval_for_2pct_at_this_batch": min_interval,
        "step_times": step_times,
        "probe_times": probe_times,
        "figure_times": figure_times,
    }
    rows = [
        ("device", f"{result['device']} ({result['threads']} threads)"),
        ("model / attention", f"{args.model} / {args.attention}, block {block}"),
        (
            "optimizer step",
            f"{step:.3f} s for {tokens:,} tokens ({args.batch_size} x {args.accumulate} x {block})",
        ),
        ("probe pass", f"{probe_s:.3f} s ({args.probe_windows} windows + sentence)"),
        ("figures (PNG)", f"{figure_s:.3f} s"),
        ("probe total", f"{total:.3f} s = {total / step:.2f} optimizer steps"),
        ("interval", f"every {args.interval} steps"),
        ("overhead, this batch", f"{100 * overhead:.3f} %"),
        (
            "overhead, paper batch",
            f"{100 * overhead_paper:.5f} % (step extrapolated to {paper_step:.1f} s)",
        ),
        ("min interval for 2%", f"{min_interval} steps at this batch"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

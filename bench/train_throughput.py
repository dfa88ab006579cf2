"""Training throughput of GPT-2 per attention variant and implementation, on one device.

For each (variant, impl) it times optimizer steps of the paper's recipe (AdamW, bf16 autocast on
GPU, gradient clipping) and reports tokens/s and MFU (model FLOPs 6N + 12 L C T per token against
the device's bf16 dense peak) as the training run's throughput callback
(``sysout.callbacks.ThroughputCallback``) computes them, beside the bench's own step time, and
peak memory. The outlier callback's cost is measured by timing the probe itself (under bf16
autocast, as the callback probes under bf16-mixed) and spreading it over its interval:
overhead = probe time / (interval x step time). Needs no Hydra/OmegaConf (plain YAML), so it runs
on a GPU image that has only torch, triton and lightning.

    python bench/train_throughput.py                          # gpt2_small, every variant, CUDA
    python bench/train_throughput.py --smoke                  # tiny model on CPU, to check it runs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled

from sysout.attention import variant_names  # noqa: E402
from sysout.callbacks.throughput import ThroughputCallback, peak_flops_for  # noqa: E402
from sysout.model import build_gpt, flops_per_token  # noqa: E402
from sysout.training.optim import OptimConfig, build_optimizer  # noqa: E402


def load_yaml(*parts: str) -> dict:
    """A config file of conf/ as a plain dict (these files use no interpolation)."""
    return yaml.safe_load((ROOT / "conf" / Path(*parts)).read_text()) or {}


class _Recorder:
    """Collects what the throughput callback logs."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.metrics.update({k: float(v) for k, v in metrics.items()})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, x, y, accumulate: int, autocast: bool) -> None:
    for _ in range(accumulate):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(x, y)
        (loss / accumulate).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(args, variant: str, impl: str, device: torch.device) -> dict:
    model_cfg = load_yaml("model", f"{args.model}.yaml")
    attention_cfg = load_yaml("attention", f"{variant}.yaml")
    attention_cfg["impl"] = impl
    torch.manual_seed(0)
    model = build_gpt(model_cfg, attention_cfg).to(device)
    if args.compile:
        model.compile()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4, warmup_steps=0))
    t = model.config.block_size if args.seq_len is None else args.seq_len
    x = torch.randint(0, 50257, (args.batch, t), device=device)
    y = torch.roll(x, -1, dims=1)
    autocast = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        train_step(model, optimizer, x, y, args.accumulate, autocast)
    sync(device)
    # The training run's throughput callback, driven step by step as Lightning would (it reads
    # trainer.global_step, trainer.world_size and the batch), one window over the timed steps.
    recorder = _Recorder()
    trainer = SimpleNamespace(global_step=0, world_size=1, loggers=[recorder])
    module = SimpleNamespace(model=model, device=device)
    callback = ThroughputCallback(
        peak_flops=args.peak_flops, window=max(2, args.steps), log_every_n_steps=args.steps
    )
    callback.on_train_start(trainer, module)
    batch = (x.repeat(args.accumulate, 1),)  # the tokens of one optimizer step
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        train_step(model, optimizer, x, y, args.accumulate, autocast)
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, batch, step - 1)
    sync(device)
    step_time = (time.perf_counter() - start) / args.steps
    tokens_per_step = args.batch * t * args.accumulate
    peak = args.peak_flops or peak_flops_for(device)
    # The callback counts FLOPs at the model's block size; the bench's own figure below at t.
    tokens_per_sec = recorder.metrics.get("throughput/device_tokens_per_sec")
    mfu = recorder.metrics.get("throughput/device_mfu")
    bench_tokens_per_sec = tokens_per_step / step_time
    bench_mfu = bench_tokens_per_sec * flops_per_token(model, t) / peak if peak else None
    if tokens_per_sec is None:  # a window of one step: the callback has no rate yet
        tokens_per_sec, mfu = bench_tokens_per_sec, bench_mfu

    probe_time = None
    if args.outlier_interval:
        from sysout.outliers.probe import run_probe

        probe_batch = x[: args.probe_windows]
        sentence = x[0, :16]
        # the callback probes under the trainer's precision: bf16 autocast for bf16-mixed
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            run_probe(model, probe_batch, sentence)  # warm-up
            sync(device)
            start = time.perf_counter()
            for _ in range(args.probe_repeats):
                run_probe(model, probe_batch, sentence)
            sync(device)
        probe_time = (time.perf_counter() - start) / args.probe_repeats
    overhead = probe_time / (args.outlier_interval * step_time) if probe_time else None
    row = {
        "variant": variant,
        "impl": impl,
        "tokens_per_step": tokens_per_step,
        "step_time_s": step_time,
        "tokens_per_sec": tokens_per_sec,
        "mfu": mfu,
        "source": "ThroughputCallback"
        if "throughput/device_tokens_per_sec" in recorder.metrics
        else "bench step time",
        "bench_tokens_per_sec": bench_tokens_per_sec,
        "bench_mfu": bench_mfu,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
        "probe_time_s": probe_time,
        "outlier_interval": args.outlier_interval,
        "outlier_overhead": overhead,
        "tokens_per_sec_with_outliers": tokens_per_sec / (1 + overhead) if overhead else None,
    }
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2_small")
    parser.add_argument("--variants", default=",".join(variant_names()))
    parser.add_argument("--impls", default="triton,reference")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-flops", type=float, default=None)
    parser.add_argument(
        "--outlier-interval",
        type=int,
        default=None,
        help="optimizer steps between probes (default: the callback's config)",
    )
    parser.add_argument("--probe-windows", type=int, default=None)
    parser.add_argument("--probe-repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, reference only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    callback_cfg = load_yaml("callbacks", "outliers.yaml")
    outlier_cfg = callback_cfg.get("outliers", callback_cfg)  # the file nests it under its name
    if args.outlier_interval is None:
        args.outlier_interval = int(outlier_cfg.get("every_n_steps", 250))
    if args.probe_windows is None:  # the callback reads the probe group: its default windows
        from sysout.outliers.options import ProbeOptions

        args.probe_windows = ProbeOptions().windows
    if args.smoke:
        args.model, args.impls, args.batch, args.steps, args.warmup = (
            "gpt2_tiny",
            "reference",
            2,
            2,
            1,
        )
        args.probe_repeats = 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )

    out = Path(
        args.out
        or ROOT / "benchmarks" / "results" / f"train_throughput-{name.replace(' ', '_')}.json"
    )
    if args.smoke and args.out is None:
        out = Path("/tmp/train_throughput-smoke.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "device": name,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__ if device.type == "cuda" else None,
        "model": args.model,
        "batch": args.batch,
        "accumulate": args.accumulate,
        "compile": args.compile,
        "smoke": args.smoke,
        "rows": [],
    }
    rows = result["rows"]
    for variant in args.variants.split(","):
        for impl in args.impls.split(","):
            try:
                rows.append(measure(args, variant, impl, device))
            except Exception as err:  # one broken entry must not lose the others
                rows.append(
                    {"variant": variant, "impl": impl, "error": f"{type(err).__name__}: {err}"}
                )
            r = rows[-1]
            # after every row: a run stopped by a time limit keeps what it measured
            out.write_text(json.dumps(result, indent=1))
            if "error" in r:
                print(f"{variant:16s} {impl:9s} {r['error']}", flush=True)
                continue
            print(
                f"{variant:16s} {impl:9s} tok/s {fmt(r['tokens_per_sec'], '10.0f')}  "
                f"MFU {fmt(r['mfu'], '6.1%')}  mem {fmt(r['peak_memory_gib'], '6.2f')} GiB  "
                f"probe every {args.outlier_interval}: {fmt(r['outlier_overhead'], '.2%')}",
                flush=True,
            )

    result["complete"] = True
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Benchmark the fused attention kernels against PyTorch SDPA, FlexAttention and plain PyTorch.

For every registered attention variant (``sysout.attention.variant_names()``, each built with
``build_variant`` and run with its own ``kernel_arguments``) and sequence length, times forward,
backward and forward+backward of each implementation that can express the variant, and reports
TFLOP/s with the SPEC section 6 convention (causal forward = 4 B H T^2 d / 2; backward 2.5x, both
3.5x) and the peak memory of each entry. Before timing, each implementation is checked once
against the variant's PyTorch reference in float32 at batch 1 (max abs error of the output and
gradients).

    python bench/attention.py                       # GPT-2 shapes on the current GPU
    python bench/attention.py --variants softmax sink_logit --seq-lens 1024
    python bench/attention.py --smoke               # tiny CPU run through the Triton interpreter
    python bench/attention.py --batch 8 --seq-lens 1024 4096 --sdpa-backends flash  # gpu-check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

# --smoke runs the kernels in the Triton interpreter, which must be chosen before triton loads.
if __name__ == "__main__" and "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sysout.attention import (  # noqa: E402
    AttentionVariant,
    build_variant,
    get_variant_class,
    variant_names,
)

Tensor = torch.Tensor
Impl = Callable[[AttentionVariant, Tensor, Tensor, Tensor, Tensor], Tensor]


# ------------------------------------------------------------------------------------------
# Variants come from the registry: their parameters, kernel switches and references
# ------------------------------------------------------------------------------------------
def make_variant(name: str, H: int, D: int, device) -> AttentionVariant:
    """The registered variant with non-trivial learned parameters (N(0, 0.5))."""
    variant = build_variant(name, H, H * D, impl="triton").to(device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in variant.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return variant


def fused(variant: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
    """This repository's Triton kernels, with the variant's own switches and epilogue."""
    return variant.fused_forward(q, k, v, x)


def reference(variant: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
    """The variant's PyTorch reference (what attention.impl=reference runs)."""
    return variant.reference(q, k, v, x)


def _scaled(o: Tensor, scale: Tensor | None) -> Tensor:
    if scale is None:
        return o
    return o * (scale[..., None] if scale.dim() == 3 else scale).to(o.dtype)


# ------------------------------------------------------------------------------------------
# SDPA (per backend) and FlexAttention, for the variants they can express
# ------------------------------------------------------------------------------------------
def sdpa_expresses(args: dict) -> bool:
    """SDPA plus an elementwise epilogue: a plain softmax with at most an output scale."""
    return set(args) <= {"out_scale"}


def sdpa_impl(backend) -> Impl:
    def run(variant, q, k, v, x):
        args = variant.kernel_arguments(x)
        if backend is None:  # smoke mode: whatever SDPA picks
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel([backend]):
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return variant.finish_output(_scaled(o, args.get("out_scale")), x)

    return run


def flex_expresses(args: dict) -> bool:
    """Flex: the kv slot as an extra key, sinks and the context slot through its LSE."""
    return set(args) <= {"out_scale", "sink_logit", "extra_key", "extra_value", "extra_slot"}


class Flex:
    """FlexAttention: causal block mask; the kv slot as an extra key at position 0 with its own
    mask; sinks and the context slot by renormalising with the returned LSE."""

    def __init__(self) -> None:
        from torch.nn.attention import flex_attention as fa

        self.fa = fa
        self.flex = torch.compile(fa.flex_attention, dynamic=False)
        self.masks: dict = {}

    def _mask(self, T: int, extra: bool, device):
        key = (T, extra)
        if key not in self.masks:
            if extra:  # key 0 is the extra slot, real key j sits at j + 1
                mod = lambda b, h, qi, kj: (kj == 0) | (kj - 1 <= qi)
            else:
                mod = lambda b, h, qi, kj: kj <= qi
            self.masks[key] = self.fa.create_block_mask(
                mod, None, None, T, T + int(extra), device=device
            )
        return self.masks[key]

    def _with_lse(self, q, k, v, mask):
        if hasattr(self.fa, "AuxRequest"):
            o, aux = self.flex(q, k, v, block_mask=mask, return_aux=self.fa.AuxRequest(lse=True))
            return o, aux.lse
        return self.flex(q, k, v, block_mask=mask, return_lse=True)

    def __call__(self, variant, q, k, v, x):
        B, H, T, D = q.shape
        args = variant.kernel_arguments(x)
        scale = args.get("out_scale")
        ek, ev, sink = args.get("extra_key"), args.get("extra_value"), args.get("sink_logit")
        if ek is not None and args.get("extra_slot", "kv") == "kv":
            k2 = torch.cat([ek[None, :, None, :].expand(B, H, 1, D).to(k.dtype), k], dim=2)
            v2 = torch.cat([ev[None, :, None, :].expand(B, H, 1, D).to(v.dtype), v], dim=2)
            o = self.flex(q, k2, v2, block_mask=self._mask(T, True, q.device))
        elif ek is not None or sink is not None:
            o, lse = self._with_lse(q, k, v, self._mask(T, False, q.device))  # natural log
            if ek is not None:  # context slot: + sigmoid(e - LSE) v'
                e = torch.einsum("bhtd,hd->bht", q.float(), ek.float()) / math.sqrt(D)
                p0 = torch.sigmoid(e - lse)
                o = o + (p0[..., None] * ev.float()[None, :, None, :]).to(o.dtype)
            else:  # a sink z: renormalise by sum / (sum + e^z)
                o = o * torch.sigmoid(lse - sink.float()[None, :, None])[..., None].to(o.dtype)
        else:
            o = self.flex(q, k, v, block_mask=self._mask(T, False, q.device))
        return variant.finish_output(_scaled(o, scale), x)


# ------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------
def causal_fwd_flops(B: int, H: int, T: int, D: int) -> float:
    return 4.0 * B * H * T * T * D / 2


FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def timer(args) -> Callable[[Callable, list[Tensor]], float]:
    """Milliseconds per call: triton.testing.do_bench on CUDA, a wall clock on CPU (smoke)."""
    if args.smoke:

        def cpu_time(fn, grads):
            fn()
            t0 = time.perf_counter()
            for _ in range(args.rep_smoke):
                for t in grads:
                    t.grad = None
                fn()
            return (time.perf_counter() - t0) * 1e3 / args.rep_smoke

        return cpu_time
    import triton.testing

    return lambda fn, grads: triton.testing.do_bench(
        fn, warmup=args.warmup, rep=args.rep, grad_to_none=grads
    )


def peak_memory(fn: Callable, device) -> float | None:
    """Peak memory (MiB) allocated while fn runs, above what was allocated before."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def make_inputs(B, H, T, D, device, dtype):
    # q, k, v as views of one [B, T, 3, H, d] projection output, like a GPT-2 block makes them
    qkv = torch.randn(B, T, 3, H, D, device=device, dtype=dtype).requires_grad_(True)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    return qkv, q, k, v


def check(variant: AttentionVariant, impl: Impl, T: int, device, dtype) -> dict:
    """Max abs error of output and q/k/v/x and parameter gradients against the variant's
    reference run in float32 on the same inputs, batch 1."""
    H, D = variant.n_head, variant.head_dim
    torch.manual_seed(0)
    qkv, q, k, v = make_inputs(1, H, T, D, device, dtype)
    x = torch.randn(1, T, H * D, device=device, requires_grad=True)
    leaves = [qkv, x, *variant.parameters()]
    o = impl(variant, q, k, v, x)
    dy = torch.randn_like(o)
    grads = torch.autograd.grad(o, leaves, dy, allow_unused=True)
    qkv32 = qkv.detach().float().requires_grad_(True)
    q32, k32, v32 = (qkv32[:, :, i].transpose(1, 2) for i in range(3))
    ro = variant.reference(q32, k32, v32, x)
    ref_grads = torch.autograd.grad(ro, [qkv32, *leaves[1:]], dy.float(), allow_unused=True)
    err = lambda a, b: (a.float() - b.float()).abs().max().item()
    pairs = [(g, r) for g, r in zip(grads, ref_grads) if g is not None and r is not None]
    return {
        "max_err_out": err(o, ro),
        "max_err_grad": max((err(g, r) for g, r in pairs), default=float("nan")),
    }


def bench_entry(args, name, impl_name, impl, B, H, T, D, device, dtype) -> dict:
    entry = {"variant": name, "impl": impl_name, "B": B, "H": H, "T": T, "d": D}
    measure = timer(args)
    flops = causal_fwd_flops(B, H, T, D)
    try:
        variant = make_variant(name, H, D, device)
        qkv, q, k, v = make_inputs(B, H, T, D, device, dtype)
        # x is the block input: variants that scale or gate compute their factor from it. It
        # stays float32, as the residual stream does under bf16 autocast (a half x would meet
        # the float32 weights of the scale / gate projections).
        x = torch.randn(B, T, H * D, device=device, requires_grad=True)
        leaves = [qkv, x, *variant.parameters()]
        dy = torch.randn(B, H, T, D, device=device, dtype=dtype)
        fwd = lambda: impl(variant, q, k, v, x)
        for mode in args.modes:
            if mode == "fwd":
                run = lambda: fwd()
            elif mode == "bwd":
                o = fwd()
                run = lambda o=o: o.backward(dy, retain_graph=True)
            else:
                run = lambda: fwd().backward(dy)
            ms = measure(run, leaves)
            entry[mode] = {
                "ms": ms,
                "tflops": flops * FLOP_FACTOR[mode] / (ms * 1e-3) / 1e12,
                "peak_mib": peak_memory(run, device),
            }
            for t in leaves:
                t.grad = None
        if args.check:
            # After the timing: the kernels' autotune key leaves out the batch, so a batch-1
            # check run first would choose the configs the timed (batch B) runs use.
            entry.update(check(variant, impl, T, device, dtype))
    except torch.cuda.OutOfMemoryError:
        entry["error"] = "out of memory"
    except Exception as exc:  # keep going: one impl failing must not stop the table
        entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


SDPA_BACKENDS = ("flash", "cudnn", "efficient")


def implementations(args, name: str, flex: Flex | None, device) -> list[tuple[str, Impl]]:
    # A reference-only variant (traits.fused false) has no kernel and no kernel switches: only
    # its reference is timed.
    is_fused = get_variant_class(name).traits.fused
    impls: list[tuple[str, Impl]] = [("triton", fused)] if is_fused else []
    probe = make_variant(name, 1, 16, device)
    kernel_args = probe.kernel_arguments(torch.zeros(1, 1, 16, device=device)) if is_fused else None
    if kernel_args is not None and not args.no_sdpa and sdpa_expresses(kernel_args):
        if args.smoke:
            impls.append(("sdpa", sdpa_impl(None)))
        else:
            from torch.nn.attention import SDPBackend

            backends = {
                "flash": SDPBackend.FLASH_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION,
            }
            for label in args.sdpa_backends:
                impls.append((f"sdpa-{label}", sdpa_impl(backends[label])))
    if kernel_args is not None and flex is not None and flex_expresses(kernel_args):
        impls.append(("flex", flex))
    if not args.no_reference:
        impls.append(("reference", reference))
    return impls


def print_table(results: list[dict], modes: list[str]) -> None:
    head = f"{'variant':16s} {'impl':15s} {'T':>5s}"
    for m in modes:
        head += f" {m + ' TF/s':>12s} {m + ' MiB':>12s}"
    head += f" {'err out':>9s} {'err grad':>9s}"
    print(head)
    print("-" * len(head))
    for r in results:
        line = f"{r['variant']:16s} {r['impl']:15s} {r['T']:5d}"
        if "error" in r:
            print(f"{line} {r['error']}")
            continue
        for m in modes:
            e = r.get(m, {})
            mem = e.get("peak_mib")
            line += f" {e.get('tflops', float('nan')):12.4g}"
            line += f" {mem:12.0f}" if mem is not None else f" {'-':>12s}"
        for key in ("max_err_out", "max_err_grad"):
            line += f" {r.get(key, float('nan')):9.2e}"
        print(line)


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def device_slug(device) -> str:
    if device.type != "cuda":
        return "cpu-smoke"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = variant_names()
    ap.add_argument("--variants", nargs="+", default=names, choices=names)
    ap.add_argument("--seq-lens", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--tokens", type=int, default=65536, help="batch = tokens // T")
    ap.add_argument("--batch", type=int, default=None, help="one batch for every T (not --tokens)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument(
        "--modes", nargs="+", default=["fwd", "bwd", "fwd+bwd"], choices=["fwd", "bwd", "fwd+bwd"]
    )
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetitions (ms)")
    ap.add_argument("--no-sdpa", action="store_true", help="skip torch SDPA backends")
    ap.add_argument(
        "--sdpa-backends", nargs="+", default=list(SDPA_BACKENDS), choices=SDPA_BACKENDS
    )
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the plain PyTorch reference (T x T memory)",
    )
    ap.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip the batch-1 accuracy check against the reference",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/attention-<device>.json)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CPU run in the Triton interpreter (fp32, no SDPA backend choice)",
    )
    args = ap.parse_args(argv)

    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            ap.error("--smoke needs TRITON_INTERPRET=1 before triton is imported (run as a script)")
        device = torch.device("cpu")
        args.seq_lens, args.tokens, args.heads, args.head_dim = [33], 66, 2, 32
        args.batch = None
        args.dtype, args.no_flex, args.rep_smoke = "fp32", True, 1
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device: use --smoke for a CPU check")
        device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    flex = None if args.no_flex else Flex()

    out = args.out or Path("benchmarks/results") / f"attention-{device_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "dtype": args.dtype,
        "flops_convention": "causal fwd = 4 B H T^2 d / 2; bwd 2.5x; fwd+bwd 3.5x",
        "smoke": args.smoke,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    results: list[dict] = []
    for T in args.seq_lens:
        B = args.batch or max(1, args.tokens // T)
        for name in args.variants:
            for impl_name, impl in implementations(args, name, flex, device):
                entry = bench_entry(
                    args, name, impl_name, impl, B, args.heads, T, args.head_dim, device, dtype
                )
                results.append(entry)
                print(f"  {name} {impl_name} T={T}: " + (entry.get("error") or "ok"), flush=True)
                # after every entry: a run stopped by a time limit keeps what it measured
                out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    print_table(results, args.modes)
    out.write_text(json.dumps({"meta": {**meta, "complete": True}, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

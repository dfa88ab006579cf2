"""Benchmark the fused attention kernels against PyTorch SDPA, FlexAttention and plain PyTorch.

For every attention variant (softmax, value_bias, context_bias, kv_bias, ca_scaling, sigmoid,
sink_logit, softmax1, gated, clipped_softmax) and sequence length, times forward, backward and
forward+backward of each implementation that can express the variant, and reports TFLOP/s with
the SPEC section 6 convention (causal forward = 4 B H T^2 d / 2; backward 2.5x, both 3.5x) and the
peak memory of each entry. Before timing, each implementation is checked once against the plain
PyTorch reference at batch 1 (max abs error of the output and of the q/k/v gradients).

    python bench/attention.py                       # GPT-2 shapes on the current GPU
    python bench/attention.py --variants softmax sink_logit --seq-lens 1024
    python bench/attention.py --smoke               # tiny CPU run through the Triton interpreter
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
import triton  # noqa: E402

from sysout.kernels import fused_attention  # noqa: E402

Tensor = torch.Tensor
Params = dict[str, Tensor]

VARIANTS = [
    "softmax",
    "value_bias",
    "context_bias",
    "kv_bias",
    "ca_scaling",
    "sigmoid",
    "sink_logit",
    "softmax1",
    "gated",
    "clipped_softmax",
]
CLIP_ALPHA = 4.0  # clipped softmax: zeta = 1, gamma = -alpha / T


# ------------------------------------------------------------------------------------------
# Variant parameters (the learned tensors attention sees; projections stay outside)
# ------------------------------------------------------------------------------------------
def make_params(name: str, B: int, H: int, T: int, D: int, device, dtype) -> Params:
    def p(*shape, fn=lambda x: x * 0.5):
        return fn(torch.randn(*shape, device=device, dtype=torch.float32)).to(dtype)

    gate = lambda x: torch.sigmoid(x)
    params: Params = {
        "value_bias": lambda: {"ev": p(H, D)},
        "context_bias": lambda: {"ek": p(H, D), "ev": p(H, D)},
        "kv_bias": lambda: {"ek": p(H, D), "ev": p(H, D)},
        "ca_scaling": lambda: {"scale": p(B, H, T, fn=lambda x: 2 * gate(x))},
        "sink_logit": lambda: {"sink": p(H)},
        "softmax1": lambda: {},
        "gated": lambda: {"scale": p(B, H, T, D, fn=gate)},
    }.get(name, dict)()
    for t in params.values():
        t.requires_grad_(True)
    return params


# ------------------------------------------------------------------------------------------
# Fused (this repository's Triton kernels)
# ------------------------------------------------------------------------------------------
def fused(name: str, q: Tensor, k: Tensor, v: Tensor, P: Params) -> Tensor:
    T = q.shape[2]
    if name == "value_bias":  # o = softmax(s) v + v': the bias is outside the kernel
        return fused_attention(q, k, v) + P["ev"][None, :, None, :]
    kwargs = {
        "softmax": {},
        "context_bias": {
            "extra_key": P.get("ek"),
            "extra_value": P.get("ev"),
            "extra_slot": "context",
        },
        "kv_bias": {"extra_key": P.get("ek"), "extra_value": P.get("ev"), "extra_slot": "kv"},
        "ca_scaling": {"out_scale": P.get("scale")},
        "gated": {"out_scale": P.get("scale")},
        "sigmoid": {"mode": "sigmoid"},
        "sink_logit": {"sink_logit": P.get("sink")},
        "softmax1": {"sink_logit": torch.zeros(q.shape[1], device=q.device, dtype=q.dtype)},
        "clipped_softmax": {"clip": (1.0, -CLIP_ALPHA / T)},
    }[name]
    return fused_attention(q, k, v, **kwargs)


# ------------------------------------------------------------------------------------------
# Plain PyTorch references (materialise T x T; softmax in fp32 as autocast would)
# ------------------------------------------------------------------------------------------
def _scores(q: Tensor, k: Tensor) -> Tensor:
    T, D = q.shape[2], q.shape[3]
    s = (q @ k.transpose(-1, -2)).float() / math.sqrt(D)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return s.masked_fill(~causal, float("-inf"))


def _extra_logit(q: Tensor, ek: Tensor) -> Tensor:
    return torch.einsum("bhtd,hd->bht", q.float(), ek.float())[..., None] / math.sqrt(q.shape[3])


def _softmax_v(s: Tensor, v: Tensor) -> Tensor:
    return torch.softmax(s, dim=-1).to(v.dtype) @ v


def _with_front_column(s: Tensor, col: Tensor) -> Tensor:
    return torch.softmax(torch.cat([col, s], dim=-1), dim=-1)


def ref_softmax(q, k, v, P):
    return _softmax_v(_scores(q, k), v)


def ref_value_bias(q, k, v, P):
    return _softmax_v(_scores(q, k), v) + P["ev"][None, :, None, :]


def ref_context_bias(q, k, v, P):
    s, e = _scores(q, k), _extra_logit(q, P["ek"])
    p0 = _with_front_column(s, e)[..., :1]
    return _softmax_v(s, v) + (p0 * P["ev"].float()[None, :, None, :]).to(v.dtype)


def ref_kv_bias(q, k, v, P):
    s, e = _scores(q, k), _extra_logit(q, P["ek"])
    w = _with_front_column(s, e).to(v.dtype)
    return w[..., 1:] @ v + w[..., :1] * P["ev"][None, :, None, :]


def ref_ca_scaling(q, k, v, P):
    return P["scale"][..., None] * _softmax_v(_scores(q, k), v)


def ref_gated(q, k, v, P):
    return P["scale"] * _softmax_v(_scores(q, k), v)


def ref_sigmoid(q, k, v, P):
    T = q.shape[2]
    return torch.sigmoid(_scores(q, k) - math.log(T)).to(v.dtype) @ v  # exp(-inf) -> 0


def ref_sink_logit(q, k, v, P):
    s = _scores(q, k)
    z = P["sink"].float()[None, :, None, None].expand(*s.shape[:3], 1)
    return _with_front_column(s, z)[..., 1:].to(v.dtype) @ v


def ref_softmax1(q, k, v, P):
    return ref_sink_logit(q, k, v, {"sink": torch.zeros(q.shape[1], device=q.device)})


def ref_clipped_softmax(q, k, v, P):
    T = q.shape[2]
    zeta, gamma = 1.0, -CLIP_ALPHA / T
    s = _scores(q, k)
    p = torch.clamp((zeta - gamma) * torch.softmax(s, dim=-1) + gamma, 0, 1)
    return p.masked_fill(s == float("-inf"), 0).to(v.dtype) @ v


REFERENCES: dict[str, Callable] = {
    "softmax": ref_softmax,
    "value_bias": ref_value_bias,
    "context_bias": ref_context_bias,
    "kv_bias": ref_kv_bias,
    "ca_scaling": ref_ca_scaling,
    "sigmoid": ref_sigmoid,
    "sink_logit": ref_sink_logit,
    "softmax1": ref_softmax1,
    "gated": ref_gated,
    "clipped_softmax": ref_clipped_softmax,
}


# ------------------------------------------------------------------------------------------
# SDPA (per backend) and FlexAttention, for the variants they can express
# ------------------------------------------------------------------------------------------
SDPA_VARIANTS = {"softmax", "value_bias", "ca_scaling", "gated"}  # SDPA + an elementwise op


def _epilogue(name: str, o: Tensor, P: Params) -> Tensor:
    if name == "value_bias":
        return o + P["ev"][None, :, None, :]
    if name == "ca_scaling":
        return P["scale"][..., None] * o
    if name == "gated":
        return P["scale"] * o
    return o


def sdpa_impl(backend) -> Callable:
    def run(name, q, k, v, P):
        if backend is None:  # smoke mode: whatever SDPA picks
            return _epilogue(name, F.scaled_dot_product_attention(q, k, v, is_causal=True), P)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([backend]):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return _epilogue(name, o, P)

    return run


FLEX_VARIANTS = {
    "softmax",
    "value_bias",
    "ca_scaling",
    "gated",
    "kv_bias",
    "context_bias",
    "sink_logit",
    "softmax1",
}


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

    def __call__(self, name, q, k, v, P):
        B, H, T, D = q.shape
        if name == "kv_bias":
            k2 = torch.cat([P["ek"][None, :, None, :].expand(B, H, 1, D).to(k.dtype), k], dim=2)
            v2 = torch.cat([P["ev"][None, :, None, :].expand(B, H, 1, D).to(v.dtype), v], dim=2)
            return self.flex(q, k2, v2, block_mask=self._mask(T, True, q.device))
        mask = self._mask(T, False, q.device)
        if name in ("sink_logit", "softmax1", "context_bias"):
            o, lse = self._with_lse(q, k, v, mask)  # lse: natural log over the real keys
            if name == "context_bias":
                p0 = torch.sigmoid(_extra_logit(q, P["ek"])[..., 0] - lse)
                return o + (p0[..., None] * P["ev"].float()[None, :, None, :]).to(o.dtype)
            z = P["sink"].float() if name == "sink_logit" else torch.zeros(H, device=q.device)
            return o * torch.sigmoid(lse - z[None, :, None])[..., None].to(o.dtype)
        return _epilogue(name, self.flex(q, k, v, block_mask=mask), P)


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


def check(name: str, impl: Callable, H, T, D, device, dtype) -> dict:
    """Max abs error of output and input gradients against the plain reference, batch 1."""
    torch.manual_seed(0)
    qkv, q, k, v = make_inputs(1, H, T, D, device, dtype)
    P = make_params(name, 1, H, T, D, device, dtype)
    leaves = [qkv, *P.values()]
    o = impl(name, q, k, v, P)
    dy = torch.randn_like(o)
    grads = torch.autograd.grad(o, leaves, dy, allow_unused=True)
    ro = REFERENCES[name](q, k, v, P)
    ref_grads = torch.autograd.grad(ro, leaves, dy, allow_unused=True)
    err = lambda a, b: (a.float() - b.float()).abs().max().item()
    return {
        "max_err_out": err(o, ro),
        "max_err_grad": max(
            err(g, r) for g, r in zip(grads, ref_grads) if g is not None and r is not None
        ),
    }


def bench_entry(args, name, impl_name, impl, B, H, T, D, device, dtype) -> dict:
    entry = {"variant": name, "impl": impl_name, "B": B, "H": H, "T": T, "d": D}
    measure = timer(args)
    flops = causal_fwd_flops(B, H, T, D)
    try:
        if args.check:
            entry.update(check(name, impl, H, T, D, device, dtype))
        qkv, q, k, v = make_inputs(B, H, T, D, device, dtype)
        P = make_params(name, B, H, T, D, device, dtype)
        leaves = [qkv, *P.values()]
        dy = torch.randn(B, H, T, D, device=device, dtype=dtype)
        fwd = lambda: impl(name, q, k, v, P)
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
    except torch.cuda.OutOfMemoryError:
        entry["error"] = "out of memory"
    except Exception as exc:  # keep going: one impl failing must not stop the table
        entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def implementations(args, name: str, flex: Flex | None) -> list[tuple[str, Callable]]:
    impls: list[tuple[str, Callable]] = [("triton", lambda n, q, k, v, P: fused(n, q, k, v, P))]
    if not args.no_sdpa and name in SDPA_VARIANTS:
        if args.smoke:
            impls.append(("sdpa", sdpa_impl(None)))
        else:
            from torch.nn.attention import SDPBackend

            for label, backend in (
                ("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION),
            ):
                impls.append((label, sdpa_impl(backend)))
    if flex is not None and name in FLEX_VARIANTS:
        impls.append(("flex", flex))
    if not args.no_reference:
        impls.append(("torch", lambda n, q, k, v, P: REFERENCES[n](q, k, v, P)))
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


def device_slug(device) -> str:
    if device.type != "cuda":
        return "cpu-smoke"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--seq-lens", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--tokens", type=int, default=65536, help="batch = tokens // T")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument(
        "--modes", nargs="+", default=["fwd", "bwd", "fwd+bwd"], choices=["fwd", "bwd", "fwd+bwd"]
    )
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetitions (ms)")
    ap.add_argument("--no-sdpa", action="store_true", help="skip torch SDPA backends")
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
        args.dtype, args.no_flex, args.rep_smoke = "fp32", True, 1
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device: use --smoke for a CPU check")
        device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    flex = None if args.no_flex else Flex()

    results = []
    for T in args.seq_lens:
        B = max(1, args.tokens // T)
        for name in args.variants:
            for impl_name, impl in implementations(args, name, flex):
                entry = bench_entry(
                    args, name, impl_name, impl, B, args.heads, T, args.head_dim, device, dtype
                )
                results.append(entry)
                print(f"  {name} {impl_name} T={T}: " + (entry.get("error") or "ok"), flush=True)

    print_table(results, args.modes)
    out = args.out or Path("benchmarks/results") / f"attention-{device_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "flops_convention": "causal fwd = 4 B H T^2 d / 2; bwd 2.5x; fwd+bwd 3.5x",
        "smoke": args.smoke,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

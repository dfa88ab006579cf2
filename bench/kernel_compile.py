"""Compile facts of the attention kernels for an H100 (sm_90), read without a GPU.

Triton compiles for a CUDA target on any machine (ptxas and cuobjdump ship with it), so the cost
of each kernel can be read ahead of a GPU: registers, spill bytes, shared memory, whether the
matmuls are Hopper ``wgmma``, the matmuls (``dot`` ops) in each loop of the Triton IR and, from
the SASS, the instructions and special-function operations (MUFU) in each loop body. Every
kernel of the sysout family that a registered fused variant uses (its switches, read from its
own ``kernel_arguments``: forward, backward, key-mass pass) is compiled in each autotune config
kept for bf16 at d = 64 and 128, beside the Triton tutorial's forward and backward
(``bench/tutorial_attention.py``) compiled the same way.

    python bench/kernel_compile.py     # writes benchmarks/results/kernel_compile-sm90.json
    python bench/kernel_compile.py --head-dims 64 --only fwd --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernel_compile.py compiles for a GPU target: unset TRITON_INTERPRET")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # what a launch on a GPU does today
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import tutorial_attention as tutorial  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sysout.attention import build_variant, get_variant_class, variants_with  # noqa: E402
from sysout.kernels._plans import SCALARS_FP32, sysout_cases  # noqa: E402
from sysout.kernels.flash_attention import kernel_spec  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BIN = Path(get_ptxas(90).path).parent


@dataclass
class Case:
    """One compilation: a kernel, its compile-time switches and launch config."""

    family: str  # "sysout" or "tutorial"
    kernel: str
    variant: str
    fn: object  # a triton JITFunction
    constexprs: dict
    num_warps: int
    num_stages: int
    head_dim: int
    fp32_ptrs: set = field(default_factory=set)
    scalars_fp32: set = field(default_factory=lambda: set(SCALARS_FP32))
    variants: tuple = ()  # the registered variants that run this specialisation

    def signature(self) -> tuple[dict, dict]:
        """Triton signature for bf16 tensors, and the 16-divisibility hints a launch with
        aligned tensors and strides (GPT-2 shapes) would give."""
        sig, attrs = {}, {}
        for i, name in enumerate(self.fn.arg_names):
            if name in self.constexprs:
                sig[name] = "constexpr"
            elif name in self.scalars_fp32:
                sig[name] = "fp32"
            elif name in ("B", "H", "T") or name.startswith("stride"):
                sig[name] = "i32"
                if name not in ("B", "H"):  # 12 heads: not a multiple of 16
                    attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[name] = "*fp32" if name in self.fp32_ptrs else "*bf16"
                attrs[(i,)] = [["tt.divisibility", 16]]
        return sig, attrs

    def label(self) -> dict:
        cfg = {k: v for k, v in self.constexprs.items() if k.startswith("BLOCK")}
        return {
            "family": self.family,
            "kernel": self.kernel,
            "variant": self.variant,
            **({"variants": list(self.variants)} if self.variants else {}),
            "head_dim": self.head_dim,
            "config": {**cfg, "num_warps": self.num_warps, "num_stages": self.num_stages},
        }


# ------------------------------------------------------------------------------------------
# Reading the compiled artefacts
# ------------------------------------------------------------------------------------------
_PTXAS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?"
    r"Used (\d+) registers",
    re.S,
)
_SASS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def ptxas_usage(ptx: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        log = subprocess.run(
            [get_ptxas(90).path, "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.o")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    stack, spill_st, spill_ld, regs = (int(x) for x in _PTXAS.search(log).groups())
    return {"registers": regs, "spill_store_bytes": spill_st, "spill_load_bytes": spill_ld,
            "stack_bytes": stack}  # fmt: skip


def sass_instructions(cubin: bytes) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) of every instruction."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run(
            [str(BIN / "cuobjdump"), "-sass", str(path)], capture_output=True, text=True, check=True
        ).stdout
    return [(int(a, 16), op, rest) for a, _, op, rest in _SASS.findall(text)]


def sass_loops(instrs: list[tuple[int, str, str]]) -> list[dict]:
    """Loop bodies: each backward branch and the instructions from its target to it."""
    loops = []
    for addr, op, rest in instrs:
        m = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) < addr:  # (a branch to itself ends the kernel: no loop)
            lo = int(m.group(1), 16)
            body = [(o, r) for a, o, r in instrs if lo <= a <= addr]
            ops = Counter(o.split(".")[0] for o, _ in body)
            loops.append(
                {
                    "instructions": len(body),
                    "hgmma": ops["HGMMA"],
                    "mufu": ops["MUFU"],
                    "mufu_kinds": dict(Counter(o for o, _ in body if o.startswith("MUFU"))),
                    "isetp_64bit": sum(
                        o.startswith("ISETP") and ".U64" in o or ".64" in o
                        for o, _ in body
                        if o.startswith("ISETP")
                    ),  # fmt: skip
                    "atomics": ops["RED"] + ops["ATOM"] + ops["REDG"] + ops["ATOMG"],
                    "local_memory": ops["LDL"] + ops["STL"],
                    "_range": (lo, addr),
                }
            )
    loops.sort(key=lambda x: x["_range"])
    for loop in loops:
        del loop["_range"]
    return loops


def ir_loop_dots(ttgir: str) -> list[int]:
    """Matmuls in each outermost scf.for of the Triton GPU IR, in program order."""
    counts, depth, current = [], 0, None
    for line in ttgir.splitlines():
        if current is None and "scf.for" in line:
            current, depth = 0, 0
        if current is not None:
            current += len(re.findall(r"\bttng\.warp_group_dot\b|\btt\.dot\b", line))
            depth += line.count("{") - line.count("}")
            if depth <= 0 and ("}" in line or "scf.for" not in line):
                counts.append(current)
                current = None
    return counts


def compile_case(case: Case) -> dict:
    sig, attrs = case.signature()
    consts = {k: v for k, v in case.constexprs.items()}
    out = case.label()
    try:
        src = ASTSource(case.fn, sig, constexprs=consts, attrs=attrs)
        opts = {"num_warps": case.num_warps, "num_stages": case.num_stages}
        compiled = triton.compile(src, target=TARGET, options=opts)
    except Exception as exc:  # a config that does not compile is a finding, not a crash
        out["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
        return out
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    instrs = sass_instructions(compiled.asm["cubin"])
    ops = Counter(op.split(".")[0] for _, op, _ in instrs)
    out.update(ptxas_usage(ptx))
    out.update(
        {
            "shared_bytes": compiled.metadata.shared,
            "wgmma_ptx": ptx.count("wgmma.mma_async"),
            "hgmma_sass": ops["HGMMA"],
            "mma_sync_sass": ops["HMMA"],
            "tma": "cp.async.bulk.tensor" in ptx,
            "cp_async": "cp.async.cg" in ptx or "cp.async.ca" in ptx,
            "instructions": len(instrs),
            "dots_per_loop": ir_loop_dots(ttgir),
            "loops": sass_loops(instrs),
        }
    )
    return out


_CASES: list[Case] = []


def _compile_index(i: int) -> dict:
    return compile_case(_CASES[i])


# ------------------------------------------------------------------------------------------
# What to compile
# ------------------------------------------------------------------------------------------
def registry_specs(head_dim: int) -> dict:
    """The kernel switches of every registered fused variant with its default options, from its
    own ``kernel_arguments`` (so a new variant is compiled without an edit here)."""
    B, H, T = 1, 2, 8
    specs = {}
    for name in variants_with(fused=True):
        options = {"block_size": 1024} if get_variant_class(name).traits.uses_block_size else {}
        variant = build_variant(name, H, H * head_dim, impl="reference", **options)
        with torch.no_grad():
            arguments = variant.kernel_arguments(torch.zeros(B, T, H * head_dim))
        specs[name] = kernel_spec((B, H, T, head_dim), **arguments)
    return specs


def tutorial_cases(head_dim: int) -> list[Case]:
    fwd_ptrs = {"M"}
    cases = [
        Case("tutorial", "fwd", "softmax", tutorial.tutorial_fwd_kernel,
             {"HEAD_DIM": head_dim, "BLOCK_M": bm, "BLOCK_N": bn}, w, s, head_dim, fwd_ptrs)
        for bm, bn, w, s in tutorial.FWD_CONFIGS
        if bn <= head_dim
    ]  # fmt: skip
    cases.append(
        Case("tutorial", "bwd", "softmax", tutorial.tutorial_bwd_kernel,
             {"HEAD_DIM": head_dim, **tutorial.BWD_META}, tutorial.BWD_LAUNCH["num_warps"],
             tutorial.BWD_LAUNCH["num_stages"], head_dim, {"M", "D"})
    )  # fmt: skip
    return cases


def summarise(results: list[dict]) -> dict:
    """The figures the issue asks about: spills, forward loops vs the tutorial, matmuls."""
    ok = [r for r in results if "error" not in r]
    spilling = [
        {**{k: r[k] for k in ("family", "kernel", "variant", "head_dim", "config")},
         "spill_store_bytes": r["spill_store_bytes"], "spill_load_bytes": r["spill_load_bytes"]}
        for r in ok
        if r["spill_store_bytes"] or r["spill_load_bytes"]
    ]  # fmt: skip

    def key(r):
        c = r["config"]
        return r["head_dim"], c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"]

    tut = {key(r): r for r in ok if r["family"] == "tutorial" and r["kernel"] == "fwd"}
    fwd_vs_tutorial = []
    for r in ok:
        if (r["family"], r["kernel"], r["variant"]) != ("sysout", "fwd", "softmax"):
            continue
        t = tut.get(key(r))
        if t is None or len(r["loops"]) != len(t["loops"]):
            continue
        # Two loops: keys left of the diagonal (unmasked), then the diagonal block. When
        # BLOCK_M == BLOCK_N the diagonal is one step and the compiler unrolls it: one loop.
        names = ["unmasked", "diagonal"] if len(r["loops"]) == 2 else ["unmasked"]
        entry = {"head_dim": r["head_dim"], "config": r["config"]}
        for name, ours, theirs in zip(names, r["loops"], t["loops"]):
            entry[name] = {
                "ours": ours["instructions"],
                "tutorial": theirs["instructions"],
                "ratio": round(ours["instructions"] / theirs["instructions"], 3),
            }
        fwd_vs_tutorial.append(entry)
    dots = {}
    for r in ok:
        if r["kernel"] in ("bwd", "bwd_kv", "bwd_q"):
            name = f"{r['family']}:{r['kernel']}:{r['variant']}"
            dots.setdefault(name, sorted(set(r["dots_per_loop"]), reverse=True))
    return {
        "compiled": len(ok),
        "errors": [r for r in results if "error" in r],
        "spilling": spilling,
        "forward_main_loops_vs_tutorial": fwd_vs_tutorial,
        "backward_dots_per_loop": dots,
        "max_registers": max((r["registers"] for r in ok), default=None),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--only", nargs="*", default=None, help="kernel names to compile (e.g. fwd)")
    ap.add_argument("--no-tutorial", action="store_true")
    ap.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/kernel_compile-sm90.json"))
    args = ap.parse_args(argv)

    cases: list[Case] = []
    for d in args.head_dims:
        cases += [Case(**c) for c in sysout_cases(d, registry_specs(d))]
        if not args.no_tutorial:
            cases += tutorial_cases(d)
    if args.only:
        cases = [c for c in cases if c.kernel in args.only]
    print(f"compiling {len(cases)} kernels for sm_90 with {args.jobs} jobs", flush=True)
    _CASES[:] = cases  # forked workers find them by index (JIT functions do not pickle)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        results = []
        for r in pool.map(_compile_index, range(len(cases))):
            results.append(r)
            cfg = " ".join(f"{k}={v}" for k, v in r["config"].items())
            brief = r.get("error") or (
                f"regs={r['registers']} spill={r['spill_store_bytes']} "
                f"smem={r['shared_bytes']} loops={[x['instructions'] for x in r['loops']]} "
                f"dots={r['dots_per_loop']}"
            )
            print(f"{r['family']:8s} {r['kernel']:11s} {r['variant']:15s} d={r['head_dim']:<3d} "
                  f"{cfg}: {brief}", flush=True)  # fmt: skip

    ptxas_version = (
        subprocess.run([get_ptxas(90).path, "--version"], capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    meta = {
        "target": "cuda sm_90a (H100), compiled on a CPU machine, never run",
        "dtype": "bf16",
        "triton": triton.__version__,
        "ptxas": ptxas_version,
        "python": platform.python_version(),
        "head_dims": args.head_dims,
        "notes": "loops: SASS bodies between a backward branch and its target, in address "
        "order; dots_per_loop: matmuls per outermost scf.for of the Triton GPU IR",
    }
    summary = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": meta, "summary": summary, "kernels": results}, indent=1)
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Every specialisation the launchers compile for a set of calls, to read compile facts without
a GPU.

``bench/kernel_compile.py`` passes one :class:`~sysout.kernels._launch._Spec` per registered
fused variant (built by ``kernel_spec`` from the variant's own ``kernel_arguments``: this
package does not import the registry) and compiles each distinct (kernel, switches) for sm_90 in
every autotune config kept for bf16 at the head dim. The switches come from the launchers' own
helpers (``fwd_passes``, ``fwd_switches``, ``runs_preprocess``, ``pre_switches``), as a training
step on a GPU would set them: bf16 inputs (the fast sigmoid, tf32 dots) and an output scale
that needs its gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

from ._backward import attn_bwd_kernel, attn_bwd_preprocess_kernel
from ._common import PRE_BLOCK_M, _prune, bwd_configs, delta_configs, fwd_configs, mass_configs
from ._forward import attn_fwd_kernel
from ._launch import (
    _CONTEXT,
    _HEAD,
    _KV,
    _NO_SCALE,
    _Spec,
    fwd_passes,
    fwd_switches,
    pre_switches,
    runs_preprocess,
)
from ._modes import BY_ID
from ._passes import attn_clip_delta_kernel, attn_key_mass_kernel

SCALARS_FP32 = ("qk_scale", "sm_scale", "log2_tk", "clip_a", "clip_g")
_FP32_PTRS = {
    "LSE", "E", "Sink", "EK", "EV", "Delta", "DE", "DQ", "PartEK", "PartEV", "DScale", "Mass"
}  # fmt: skip
_KERNELS = ("fwd", "bwd_pre", "bwd", "key_mass", "clip_delta")  # the order of the results
_PRE_CONFIG = SimpleNamespace(kwargs={"BLOCK_M": PRE_BLOCK_M}, num_warps=4, num_stages=3)


def launches(spec: _Spec) -> Iterator[tuple[str, object, dict, object]]:
    """(kernel name, JIT function, switches, configs) of each launch of a training step (forward,
    backward) and of the key mass for this call."""
    store_raw = spec.scale != _NO_SCALE  # a learned scale needs its gradient
    scores = {"FAST_SIGMOID": True}  # bf16 on CUDA
    for mode, stats_only in fwd_passes(spec):
        switches = {**fwd_switches(spec, stats_only, store_raw), "MODE": mode, **scores}
        yield "fwd", attn_fwd_kernel.fn, switches, fwd_configs
    if runs_preprocess(spec):
        switches = pre_switches(spec, store_raw, store_raw)
        yield "bwd_pre", attn_bwd_preprocess_kernel, switches, [_PRE_CONFIG]
    yield "bwd", attn_bwd_kernel.fn, {"MODE": spec.mode, **scores}, bwd_configs
    yield "key_mass", attn_key_mass_kernel.fn, {"MODE": spec.mode, **scores}, mass_configs
    if spec.lse_first:
        yield "clip_delta", attn_clip_delta_kernel.fn, {}, delta_configs


def label(spec: _Spec, switches: dict) -> str:
    """A specialisation's name from what it computes: the mode, then the switches it has."""
    name = BY_ID[spec.mode]
    if switches.get("HAS_SINK"):
        name += "+sink"
    name += {_KV: "+kv", _CONTEXT: "+context"}.get(switches.get("EXTRA"), "")
    if switches.get("SCALE", _NO_SCALE) != _NO_SCALE:
        name += "+scale_head" if switches["SCALE"] == _HEAD else "+scale_channel"
    return name + (":stats" if switches.get("STATS_ONLY") else "")


def sysout_cases(head_dim: int, specs: dict[str, _Spec]) -> list[dict]:
    """Keyword arguments of ``bench/kernel_compile.Case`` for every distinct specialisation the
    calls in ``specs`` (named by the variants that make them) compile at head_dim."""
    found: dict[tuple, dict] = {}
    for variant, spec in specs.items():
        for kernel, fn, switches, configs in launches(spec):
            consts = {**switches, "HEAD_DIM": head_dim, "DOT_PREC": "tf32"}
            consts = {k: v for k, v in consts.items() if k in fn.arg_names}
            key = (kernel, tuple(sorted(consts.items())))
            if key in found:
                found[key]["variants"].append(variant)
                continue
            mode = switches.get("MODE", spec.mode)
            bf16 = SimpleNamespace(dtype="torch.bfloat16")
            kept = configs if isinstance(configs, list) else _prune(
                configs(), {"Q": bf16, "HEAD_DIM": head_dim, "MODE": mode}
            )  # fmt: skip
            found[key] = {"kernel": kernel, "name": label(spec, switches), "fn": fn,
                          "consts": consts, "configs": kept, "variants": [variant]}  # fmt: skip
    out = []
    for entry in sorted(found.values(), key=lambda e: _KERNELS.index(e["kernel"])):
        for cfg in entry["configs"]:
            out.append(
                {
                    "family": "sysout",
                    "kernel": entry["kernel"],
                    "variant": entry["name"],
                    "variants": tuple(entry["variants"]),
                    "fn": entry["fn"],
                    "constexprs": {**entry["consts"], **cfg.kwargs},
                    "num_warps": cfg.num_warps,
                    "num_stages": cfg.num_stages,
                    "head_dim": head_dim,
                    "fp32_ptrs": _FP32_PTRS,
                }
            )
    return out

"""Every specialisation the launchers compile, for reading compile facts without a GPU.

``bench/kernel_compile.py`` compiles each entry for sm_90: one per (kernel, variant switches,
autotune config kept for bf16 at the head dim). Keep this list in step with the launchers in
``flash_attention.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

from ._backward import attn_bwd_kernel, attn_bwd_preprocess_kernel
from ._common import PRE_BLOCK_M, _prune, bwd_configs, delta_configs, fwd_configs, mass_configs
from ._forward import attn_fwd_kernel
from ._passes import attn_clip_delta_kernel, attn_key_mass_kernel

SCALARS_FP32 = ("qk_scale", "sm_scale", "log2_tk", "clip_a", "clip_g")
_FP32_PTRS = {
    "LSE", "E", "Sink", "EK", "EV", "Delta", "DE", "DQ", "PartEK", "PartEV", "DScale", "Mass"
}  # fmt: skip

# The forward's switches per variant (value_bias is softmax plus a PyTorch epilogue).
_FWD = {
    "softmax": {},
    "sink": {"HAS_SINK": True},
    "kv_bias": {"EXTRA": 1},
    "context_bias": {"EXTRA": 2},
    "ca_scaling": {"SCALE": 1, "STORE_RAW": True},
    "gated": {"SCALE": 2, "STORE_RAW": True},
    "sigmoid": {"MODE": 1},
    "clip_stats": {"STATS_ONLY": True},
    "clip": {"MODE": 2},
}
_FWD_DEFAULT = {"MODE": 0, "HAS_SINK": False, "EXTRA": 0, "SCALE": 0, "STORE_RAW": False,
                "STATS_ONLY": False, "SCALE_POS": True, "FAST_SIGMOID": True}  # fmt: skip
_PRE = {
    "softmax": {},
    "kv_bias": {"EXTRA": 1},
    "context_bias": {"EXTRA": 2},
    "ca_scaling": {"SCALE": 1, "SAVED_RAW": True, "SCALE_GRAD": True},
    "gated": {"SCALE": 2, "SAVED_RAW": True, "SCALE_GRAD": True},
    "clip": {"MODE": 2},
}
_PRE_DEFAULT = {"MODE": 0, "EXTRA": 0, "SCALE": 0, "SAVED_RAW": False, "SCALE_GRAD": False}
_BWD = {"softmax": {"MODE": 0}, "sigmoid": {"MODE": 1}, "clip": {"MODE": 2}}


def _kept(configs, head_dim: int, mode: int):
    bf16 = SimpleNamespace(dtype="torch.bfloat16")
    return _prune(configs, {"Q": bf16, "HEAD_DIM": head_dim, "MODE": mode})


def _entries(kernel, fn, switches, default, configs, head_dim, prec=True):
    for variant, sw in switches.items():
        mode = {**default, **sw}.get("MODE", 0)
        for cfg in configs if isinstance(configs, list) else _kept(configs(), head_dim, mode):
            consts = {**default, **sw, "HEAD_DIM": head_dim, **cfg.kwargs}
            if prec:
                consts["DOT_PREC"] = "tf32"
            consts = {k: v for k, v in consts.items() if k in fn.arg_names}
            yield {
                "family": "sysout",
                "kernel": kernel,
                "variant": variant,
                "fn": fn,
                "constexprs": consts,
                "num_warps": cfg.num_warps,
                "num_stages": cfg.num_stages,
                "head_dim": head_dim,
                "fp32_ptrs": _FP32_PTRS,
            }


def sysout_cases(head_dim: int) -> list[dict]:
    """Keyword arguments of ``bench/kernel_compile.Case`` for every specialisation at head_dim."""
    pre = [SimpleNamespace(kwargs={"BLOCK_M": PRE_BLOCK_M}, num_warps=4, num_stages=3)]
    bwd_sw = {k: {**v, "FAST_SIGMOID": True} for k, v in _BWD.items()}
    out = []
    out += _entries("fwd", attn_fwd_kernel.fn, _FWD, _FWD_DEFAULT, fwd_configs, head_dim)
    out += _entries("bwd_pre", attn_bwd_preprocess_kernel, _PRE, _PRE_DEFAULT, pre, head_dim,
                    prec=False)  # fmt: skip
    out += _entries("bwd", attn_bwd_kernel.fn, bwd_sw, {}, bwd_configs, head_dim)
    out += _entries("key_mass", attn_key_mass_kernel.fn, bwd_sw, {}, mass_configs, head_dim)
    clip = {"clip": {"MODE": 2}}  # (the delta kernel has no MODE: it is the clip's own pass)
    out += _entries("clip_delta", attn_clip_delta_kernel.fn, clip, {}, delta_configs, head_dim)
    return out

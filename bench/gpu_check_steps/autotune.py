"""Run the sysout kernels in each of their autotune configs in turn, without benchmarking.

The correctness step must check what training may run: the autotuner picks a config by timing,
so any config can end up in use. Timing every config for every case would also cost minutes of
GPU time (and parallel checks would time each other). Instead each ``triton.autotune`` object
found in ``sysout.kernels`` is made to keep only the config ``index % len(pruned)`` of its pruned
list (the configs it would have timed for this head dim, mode and dtype), with no timing and no
disk cache of timings, so the check walks every config while compiling each once. Where the
kernels are not ``triton.autotune`` objects any more, nothing is patched and the autotuner's own
choice runs (``active`` is False; the step says so).
"""

from __future__ import annotations

import sys
from typing import Any


def config_label(config: Any) -> str:
    kw = getattr(config, "kwargs", {}) or {}
    blocks = "x".join(str(v) for k, v in sorted(kw.items()) if k.startswith("BLOCK"))
    return f"{blocks} w{getattr(config, 'num_warps', '?')} s{getattr(config, 'num_stages', '?')}"


def sysout_autotuners() -> dict[str, Any]:
    """Every ``triton.runtime.autotuner.Autotuner`` defined in a loaded ``sysout.kernels`` module,
    by kernel name."""
    import sysout.kernels.flash_attention  # noqa: F401  (loads the kernel modules)

    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return {}
    found: dict[str, Any] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("sysout.kernels") or module is None:
            continue
        for obj in vars(module).values():
            if isinstance(obj, Autotuner):
                fn = getattr(obj, "base_fn", None) or getattr(obj, "fn", None)
                found[getattr(fn, "__name__", repr(obj))] = obj
    return found


class ConfigCycler:
    """``select(i)`` makes every sysout autotuner run its i-th pruned config (modulo its count)."""

    def __init__(self, tuners: dict[str, Any] | None = None) -> None:
        self.index = 0
        self.sizes: dict[str, int] = {}  # kernel -> configs it had to choose from (this case)
        self.chosen: dict[str, str] = {}  # kernel -> label of the config it ran (this index)
        self.tuners = sysout_autotuners() if tuners is None else tuners
        self.active = bool(self.tuners) and all(
            hasattr(t, a) for t in self.tuners.values() for a in ("prune_configs", "cache")
        )
        if self.active:
            for name, tuner in self.tuners.items():
                self._patch(name, tuner)

    def _patch(self, name: str, tuner: Any) -> None:
        original = tuner.prune_configs

        def prune(kwargs: dict, _original=original, _name=name) -> list:
            pruned = list(_original(kwargs))
            self.sizes[_name] = max(self.sizes.get(_name, 0), len(pruned))
            pick = pruned[self.index % len(pruned)]
            self.chosen[_name] = config_label(pick)
            return [pick]

        tuner.prune_configs = prune  # the instance attribute shadows the method
        tuner._bench = lambda *args, config, **meta: [0.0, 0.0, 0.0]  # one config: no timing
        tuner.cache_results = False  # never write these non-timings to Triton's disk cache

    def start_case(self) -> None:
        """A new (variant, dtype, head dim): forget the config counts of the last one."""
        self.sizes.clear()
        self.select(0)

    def select(self, index: int) -> None:
        self.index = index
        self.chosen = {}
        for tuner in self.tuners.values():
            tuner.cache.clear()  # choose again on the next launch

    def count(self) -> int:
        """Configs to walk for the case run so far: the longest pruned list seen."""
        return max(self.sizes.values(), default=1)

    def label(self) -> str:
        if not self.active:
            return "autotuner's choice"
        if not self.chosen:
            return "single config (interpreter)"
        return "; ".join(f"{k}: {v}" for k, v in sorted(self.chosen.items()))

"""Static INT8 of every op: Bondarenko et al. 2023's W8A8 setting (SPEC section 5).

Their ``QuantizedOPTForCausalLM`` (``quant_setup=fp32_head``) quantizes the output of every op,
so the residual stream, where massive activations live, is on an 8-bit grid too. Here, through
the model's adapter (sysout's GPT and every Hugging Face family), with the estimators of
:mod:`sysout.compress.static_ops`:

- weights (symmetric, per tensor, MSE grid): every projection but the LM head, every norm's
  gamma, and every embedding table (applied to the looked-up rows, which is the same thing, so
  a table tied to the LM head keeps the head in full precision);
- activations (asymmetric, static, EMA of per-batch percentiles), each a named quantizer:
  ``embedding`` (what block 0 receives: the embeddings, summed), ``norm`` (every norm's output),
  ``linear`` (every projection's output; a projection followed by the MLP's activation module is
  quantized after the activation, ``act``, as their fused ``fc1_act``), ``mlp_product`` (a gated
  MLP's ``act(gate) * up``, the down-projection's input), ``context`` (every head's output, the
  attention output projection's input), ``softmax_in`` / ``softmax_out`` (the scores and
  probabilities, where reachable: transformers' eager attention, whose
  ``torch.nn.functional.softmax`` call is intercepted; masked scores are left out of the range
  and unchanged, where their quantizer sits before the mask), ``residual`` (the mid-block sum
  where the block is sequential, set through the attention output to ``q(h + a) - h``, exact up
  to float rounding; and the block output);
- the LM head stays in full precision (their ``fp32_head``).

Ranges: every quantizer is active while ``num_batches`` calibration batches (their 4 training
batches) run, estimating as it goes; then the ranges are fixed. Not reached, and said so in the
record: the softmax of sysout's attention variants (computed in their own function or fused
kernel), and a post-LN block's sums before its norms (OPT-350m).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sysout.adapters import (
    ModelAdapter,
    adapter_for,
    hidden_states_argument,
    replace_hidden_states,
)
from sysout.adapters.hf import HFCausalLMAdapter

from .layers import (
    WeightSnapshot,
    check_batches,
    projection_input,
    select_targets,
    transform_weights,
    with_projection_input,
)
from .quantize import check_bits
from .static_ops import (
    DEFAULT_MOMENTUM,
    DEFAULT_PERCENTILE,
    GRID_CANDIDATES,
    GRID_MARGIN,
    ActQuantizer,
    fake_quant_symmetric,
    mse_weight_range,
)

KINDS = (
    "embedding",
    "norm",
    "linear",
    "act",
    "mlp_product",
    "context",
    "softmax_in",
    "softmax_out",
    "residual",
)


@dataclass(frozen=True)
class StaticInt8Config:
    """Bits, estimators and how many calibration batches estimate the ranges."""

    w_bits: int = 8
    a_bits: int = 8
    percentile: float = DEFAULT_PERCENTILE
    momentum: float = DEFAULT_MOMENTUM
    num_batches: int = 4
    candidates: int = GRID_CANDIDATES
    margin: float = GRID_MARGIN

    def __post_init__(self) -> None:
        check_bits(self.w_bits)
        check_bits(self.a_bits)
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile!r}")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if int(self.num_batches) < 1:
            raise ValueError(f"num_batches must be >= 1, got {self.num_batches!r}")


@dataclass
class StaticInt8Record:
    """What :func:`static_int8` quantized: activation quantizers by name, weight ranges by name,
    and what it could not reach."""

    config: StaticInt8Config
    quantizers: dict[str, ActQuantizer] = field(default_factory=dict)
    weights: dict[str, tuple[float, float]] = field(default_factory=dict)
    not_reached: list[str] = field(default_factory=list)
    batches: int = 0

    def count(self, kind: str) -> int:
        return sum(q.kind == kind for q in self.quantizers.values())

    def summary(self) -> dict[str, Any]:
        widest = max(
            self.quantizers.values(), key=lambda q: (q.hi or 0) - (q.lo or 0), default=None
        )
        return {
            "name": f"W{self.config.w_bits}A{self.config.a_bits}_static (every op)",
            "calibration_batches": self.batches,
            "percentile": self.config.percentile,
            "momentum": self.config.momentum,
            "activations": {k: self.count(k) for k in KINDS},
            "n_weights": len(self.weights),
            "widest_range": None if widest is None else [widest.name, widest.lo, widest.hi],
            "not_reached": list(self.not_reached),
        }


class _SoftmaxTap:
    """Stands in for ``torch.nn.functional.softmax`` while installed: inside an attention
    module's forward (``active`` set by its hooks) it quantizes the scores and probabilities;
    everywhere else it is the original function."""

    def __init__(self) -> None:
        self.original = F.softmax
        self.active: tuple[ActQuantizer, ActQuantizer, list[int]] | None = None

    def __call__(self, input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None):
        if self.active is None:
            return self.original(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)
        q_in, q_out, calls = self.active
        calls[0] += 1
        valid = input > torch.finfo(input.dtype).min / 2  # masked scores carry dtype.min
        probs = self.original(q_in(input, valid), dim=dim, _stacklevel=_stacklevel, dtype=dtype)
        return q_out(probs)


def _output_hook(fn: Callable[[Tensor], Tensor]):
    def hook(_m: nn.Module, _args: Any, out: Any) -> Any:
        if isinstance(out, (tuple, list)):
            return type(out)((fn(out[0]), *out[1:]))
        return fn(out)

    return hook


def _input_hook(fn: Callable[[Tensor], Tensor]):
    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return with_projection_input(args, kwargs, fn(projection_input(args, kwargs)))

    return hook


class _Installer:
    """Registers the quantizers of :func:`static_int8` on one model (module docstring)."""

    def __init__(
        self, ad: ModelAdapter, cfg: StaticInt8Config, rec: StaticInt8Record, edits: WeightSnapshot
    ) -> None:
        self.ad, self.cfg, self.rec, self.edits = ad, cfg, rec, edits
        self.softmax_calls: dict[str, list[int]] = {}

    def act(self, name: str, kind: str) -> ActQuantizer:
        c = self.cfg
        q = ActQuantizer(name, kind, c.a_bits, c.percentile, c.momentum)
        self.rec.quantizers[name] = q
        return q

    def on_output(self, module: nn.Module, name: str, kind: str) -> None:
        self.edits.handles.append(module.register_forward_hook(_output_hook(self.act(name, kind))))

    def on_input(self, module: nn.Module, name: str, kind: str) -> None:
        hook = _input_hook(self.act(name, kind))
        self.edits.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def weight_range(self, name: str, weight: Tensor) -> tuple[float, float]:
        c = self.cfg
        self.rec.weights[name] = mse_weight_range(weight, c.w_bits, c.candidates, c.margin)
        return self.rec.weights[name]

    def install(self, tap: _SoftmaxTap | None) -> None:
        ad, model = self.ad, self.ad.model
        for name, emb in model.named_modules():  # the tables: on the weight grid, per lookup
            if isinstance(emb, nn.Embedding):
                neg, pos = self.weight_range(name, emb.weight)
                fn = lambda y, n=neg, p=pos: fake_quant_symmetric(y, n, p, self.cfg.w_bits)
                self.edits.handles.append(emb.register_forward_hook(_output_hook(fn)))
        blocks = ad.blocks()
        embedding = self.act("embedding", "embedding")

        def embed(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return replace_hidden_states(
                args, kwargs, embedding(hidden_states_argument(args, kwargs))
            )

        self.edits.handles.append(blocks[0].register_forward_pre_hook(embed, with_kwargs=True))
        fused: set[int] = set()
        for i in range(len(blocks)):
            fused |= self._block(i, tap)
        for name, mod in ad.projections():  # the LM head is left out
            if id(mod) not in fused:
                self.on_output(mod, name, "linear")
        final = ad.final_norm()
        if final is not None:
            self.on_output(final, "final_norm", "norm")
        if not ad.output_is_residual:  # its "residual" quantizers see the final norm's output
            self.rec.not_reached.append("the MLP residual sum before a post-LN block's norm")

    def _block(self, i: int, tap: _SoftmaxTap | None) -> set[int]:
        """Block ``i``'s quantizers; returns the projections quantized after their activation."""
        p = self.ad.parts(i)
        fused: set[int] = set()
        for role in ("attn_norm", "mlp_norm"):
            norm = getattr(p, role)
            if norm is not None:
                self.on_output(norm, f"{i}.{role}", "norm")
        if p.act is not None:  # fc1 + activation is one quantized op, as their fc1_act
            feeds_act = p.gate_proj if p.gate_proj is not None else p.up_proj
            if feeds_act is not None:
                fused.add(id(feeds_act))
            self.on_output(p.act, f"{i}.act", "act")
        if p.gate_proj is not None or p.act is None:
            self.on_input(p.down_proj, f"{i}.mlp_product", "mlp_product")
        if p.attn_out_proj is not None:
            self.on_input(p.attn_out_proj, f"{i}.context", "context")
        else:
            self.rec.not_reached.append(f"{i}.context (no attention output projection named)")
        if tap is not None:
            self._softmax(i, p.attn, tap)
        if self.ad.attention_residual:
            self._mid_residual(i, p.block, p.attn)
        self.on_output(p.block, f"{i}.residual", "residual")
        return fused

    def _softmax(self, i: int, attn: nn.Module, tap: _SoftmaxTap) -> None:
        q_in, q_out = (
            self.act(f"{i}.softmax_in", "softmax_in"),
            self.act(f"{i}.softmax_out", "softmax_out"),
        )
        calls = self.softmax_calls.setdefault(str(i), [0])

        def enter(_m: nn.Module, _a: Any) -> None:
            tap.active = (q_in, q_out, calls)

        def leave(_m: nn.Module, _a: Any, _o: Any) -> None:
            tap.active = None

        self.edits.handles += [
            attn.register_forward_pre_hook(enter),
            attn.register_forward_hook(leave),
        ]

    def _mid_residual(self, i: int, block: nn.Module, attn: nn.Module) -> None:
        q = self.act(f"{i}.attn_residual", "residual")
        seen: dict[str, Tensor] = {}

        def keep(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["h"] = hidden_states_argument(args, kwargs)

        def add(a: Tensor) -> Tensor:
            h = seen["h"]
            return q(h + a) - h  # the block then adds h back: its sum is q(h + a)

        self.edits.handles += [
            block.register_forward_pre_hook(keep, with_kwargs=True),
            attn.register_forward_hook(_output_hook(add)),
        ]


@contextmanager
def static_int8(
    model: nn.Module | ModelAdapter,
    calibration: Sequence[Tensor] | Tensor | None,
    config: StaticInt8Config | None = None,
) -> Iterator[StaticInt8Record]:
    """Quantize every op of ``model`` (module docstring) inside the block: weights on their
    MSE grids, activations with ranges estimated on the first ``config.num_batches``
    calibration batches (LongTensor [B, T]). Weights restored bit for bit, hooks removed and
    ``torch.nn.functional.softmax`` and the attention implementation put back on exit."""
    config = config or StaticInt8Config()
    batches = check_batches(calibration, "static INT8 quantization")[: int(config.num_batches)]
    ad = adapter_for(model)
    rec = StaticInt8Record(config=config, batches=len(batches))
    tap, impl = None, None
    if isinstance(ad, HFCausalLMAdapter):
        impl = getattr(ad.config, "_attn_implementation", None)
        ad.ensure_eager()  # the eager attention calls softmax where the tap can see it
        tap = _SoftmaxTap()
    else:
        rec.not_reached.append("softmax (computed inside the attention variant)")
    with WeightSnapshot() as edits:
        try:
            if tap is not None:
                F.softmax = tap
            installer = _Installer(ad, config, rec, edits)
            installer.install(tap)
            _quantize_weights(ad, installer, edits)
            with ad.eval_mode():
                for idx in batches:
                    ad.logits(idx.to(ad.device()))
            for q in rec.quantizers.values():
                q.estimating = False
            _drop_unreached(rec, installer)
            yield rec
        finally:
            if tap is not None:
                F.softmax = tap.original
                tap.active = None
            if impl is not None and getattr(ad.config, "_attn_implementation", impl) != impl:
                ad.model.set_attn_implementation(impl)  # as it was (SDPA is not bit-equal)


def _quantize_weights(ad: ModelAdapter, installer: _Installer, edits: WeightSnapshot) -> None:
    bits = installer.cfg.w_bits
    targets = select_targets(ad)  # every projection but the LM head (and what is tied to it)

    def grid(name: str) -> Callable[[Tensor], Tensor]:
        def fn(w: Tensor) -> Tensor:
            neg, pos = installer.weight_range(name, w)
            return fake_quant_symmetric(w, neg, pos, bits)

        return fn

    for name, mod in targets.weights:
        transform_weights([(name, mod)], grid(name), edits)
    with torch.no_grad():
        for name, norm in ad.norms().items():
            gamma = getattr(norm, "weight", None)
            if isinstance(gamma, Tensor):
                edits.save(gamma)
                gamma.copy_(grid(f"{name}.weight")(gamma))


def _drop_unreached(rec: StaticInt8Record, installer: _Installer) -> None:
    """Quantizers no calibration batch reached (a softmax the attention never called) are
    named in ``not_reached`` and dropped; an attention that called softmax more than once per
    forward is refused (its two quantizers would mix several tensors)."""
    for layer, (calls,) in installer.softmax_calls.items():
        if calls not in (0, rec.batches):
            raise RuntimeError(
                f"layer {layer}'s attention called torch.nn.functional.softmax {calls} times in "
                f"{rec.batches} forward passes: its softmax quantizers cannot be placed"
            )
    for name, q in list(rec.quantizers.items()):
        if q.batches == 0:
            rec.not_reached.append(name)
            del rec.quantizers[name]
            q.bypass = True  # its hook stays until exit, as a no-op

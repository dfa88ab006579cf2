"""The contract every attention variant fulfils, and the registry that finds them by name.

A variant receives per-head queries, keys and values ``[B, H, T, d]`` plus the attention block's
input ``x [B, T, C]`` (some variants compute a scaling factor or gate from it) and returns the
per-head output ``o [B, H, T, d]`` that goes into the output projection ``c_proj``.

Each variant provides two things:
- ``reference``: an exact PyTorch implementation (SDPA where exact, explicit scores otherwise);
- ``attention_weights``: the weights ``P [B, H, T, T]`` its formula applies to the real values,
  which is what the outlier probe measures (sigmoid and sink variants do not sum to one);
and declares what its formula is once, on the class: ``traits = VariantTraits(...)``. A variant
is reference-only unless its traits say ``fused=True``; it then returns its kernel switches
from ``kernel_arguments`` and ``impl="triton"`` routes through
:func:`sysout.kernels.fused_attention`. Tests, the kernels' compile plan and the lab read the
traits through :func:`variants_with`; nothing keeps its own list of variant names.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

IMPLEMENTATIONS = ("auto", "reference", "triton")
SELF_CHECK_MODES = ("auto", "on", "off")
_log = logging.getLogger(__name__)

# Verdicts of the kernel self-check, one per (variant and options, dtype, head dim, device).
_VERDICTS: dict[tuple, bool] = {}
_SELF_CHECK: list[str] = [os.environ.get("SYSOUT_KERNEL_SELF_CHECK", "auto")]
# max |kernel - reference| / max(1, max |reference|) allowed per tensor, by kernel dtype
_SELF_CHECK_TOL = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def set_kernel_self_check(mode: str) -> None:
    """When the fused kernel is compared with the reference before it is trusted: ``"auto"``
    (default; the first use of each case on a CUDA device), ``"on"`` (every device the kernel
    runs on, the CPU interpreter included) or ``"off"``. The environment variable
    ``SYSOUT_KERNEL_SELF_CHECK`` sets the initial mode. Clears earlier verdicts."""
    if mode not in SELF_CHECK_MODES:
        raise ValueError(f"kernel self-check mode {mode!r} is not one of {SELF_CHECK_MODES}")
    _SELF_CHECK[0] = mode
    _VERDICTS.clear()


@dataclass(frozen=True)
class VariantTraits:
    """What a variant's formula is, declared once on its class.

    - ``normalised``: each query's weights over the real keys sum to 1, or to 1 together with
      a slot (``has_slot``). False where row sums are free (sigmoid, clipped softmax).
    - ``has_slot``: a place to park attention besides the tokens (kv_bias's extra key/value
      slot, the sink logit of sink_logit and softmax1): the real keys' weights sum below 1.
    - ``fused``: the fused Triton kernel computes exactly this formula from
      ``kernel_arguments``. False (the default) keeps the variant on its PyTorch reference and
      makes ``impl="triton"`` an error.
    - ``uses_block_size``: the formula is fixed at the training length, so the model passes
      its ``block_size`` as an option (clipped softmax's gamma = -alpha / T).
    """

    normalised: bool
    has_slot: bool = False
    fused: bool = False
    uses_block_size: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"VariantTraits.{f.name} must be a bool")


TRAIT_NAMES = tuple(f.name for f in fields(VariantTraits))
_REGISTRY: dict[str, type[AttentionVariant]] = {}


def _defined_in(cls: type, attribute: str) -> type:
    return next(c for c in cls.__mro__ if attribute in vars(c))


def register_variant(cls: type[AttentionVariant]) -> type[AttentionVariant]:
    """Class decorator: make a variant constructible by its ``name``.

    Refuses a class without its own traits, and a fused class whose ``kernel_arguments`` come
    from above the class that defines its weights (a subclass that changes the formula but
    would still run its parent's kernel)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    if cls.name in _REGISTRY:
        raise ValueError(f"attention variant {cls.name!r} registered twice")
    if not isinstance(cls.traits, VariantTraits):
        raise TypeError(f"{cls.__name__} must declare `traits = VariantTraits(normalised=...)`")
    if cls.traits.fused:
        kernel = _defined_in(cls, "kernel_arguments")
        weights = _defined_in(cls, "attention_weights")
        if kernel is AttentionVariant or not issubclass(kernel, weights):
            raise TypeError(
                f"{cls.__name__} declares fused=True, but its kernel_arguments come from "
                f"{kernel.__name__} and its attention_weights from {weights.__name__}: define "
                "kernel_arguments for this formula, or declare fused=False"
            )
    _REGISTRY[cls.name] = cls
    return cls


def variant_names() -> list[str]:
    return sorted(_REGISTRY)


def variants_with(**traits: bool) -> list[str]:
    """The registered variants whose traits have the given values, sorted by name, e.g.
    ``variants_with(has_slot=True)`` or ``variants_with(fused=True, normalised=False)``."""
    unknown = set(traits) - set(TRAIT_NAMES)
    if unknown:
        raise ValueError(f"unknown variant trait(s) {sorted(unknown)}; traits: {TRAIT_NAMES}")
    return [
        name
        for name in variant_names()
        if all(getattr(_REGISTRY[name].traits, k) == v for k, v in traits.items())
    ]


def get_variant_class(name: str) -> type[AttentionVariant]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown attention variant {name!r}; valid variants: {', '.join(variant_names())}"
        ) from None


def causal_mask(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """Boolean [t_q, t_k] mask, True where query i may see key j (j <= i, aligned at the end)."""
    offset = t_k - t_q
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=offset)


def upcast(t: Tensor) -> Tensor:
    """float32 for half types; float64 stays float64 (tests compare in double precision)."""
    return t if t.dtype == torch.float64 else t.float()


def causal_scores(q: Tensor, k: Tensor) -> Tensor:
    """Scaled scores s = q k^T / sqrt(d) in at least float32, masked entries at -inf."""
    s = torch.matmul(upcast(q), upcast(k).transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
    return s.masked_fill(~mask, float("-inf"))


class AttentionVariant(nn.Module):
    """Base class: subclasses set ``name`` and ``traits`` and implement ``reference`` and
    ``attention_weights`` (and ``kernel_arguments`` when their traits say ``fused``)."""

    name: ClassVar[str] = ""
    #: Declared by every registered class; the base declares none (see register_variant).
    traits: ClassVar[VariantTraits | None] = None

    def __init__(self, n_head: int, n_embd: int, impl: str = "auto") -> None:
        super().__init__()
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"attention.impl={impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        if impl == "triton" and not (self.traits and self.traits.fused):
            raise ValueError(
                f"attention variant {self.name!r} has no fused kernel path (reference only): "
                "use attention.impl=auto or attention.impl=reference"
            )
        self.n_head = n_head
        self.n_embd = n_embd
        self.head_dim = n_embd // n_head
        self.impl = impl

    @property
    def fused(self) -> bool:
        """Whether the fused kernel can run this variant (its class's ``traits.fused``)."""
        return bool(self.traits and self.traits.fused)

    # --- what subclasses provide -------------------------------------------------------------
    def reference(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def attention_weights(self, q: Tensor, k: Tensor, x: Tensor) -> Tensor:
        """P [B, H, T, T] in at least float32: the weight of value j in the output of query i."""
        raise NotImplementedError

    def kernel_arguments(self, x: Tensor) -> dict[str, Any]:
        """Keyword arguments of :func:`sysout.kernels.fused_attention` for this variant (only
        fused variants have them: ``{}`` means plain softmax and must be said explicitly)."""
        raise NotImplementedError(f"attention variant {self.name!r} has no fused kernel path")

    def options(self) -> dict[str, Any]:
        """The constructor options that make this instance what it is (beyond n_head, n_embd,
        impl): ``build_variant(name, n_head, n_embd, **v.options())`` rebuilds it. They key
        the kernel self-check's verdicts and appear in the module's repr."""
        return {}

    def no_weight_decay(self) -> set[str]:
        """Names of this variant's own matrix parameters that nanoGPT's rule (decay every
        parameter of dim >= 2) must not decay: learned per-head biases (default: none)."""
        return set()

    def finish_output(self, o: Tensor, x: Tensor) -> Tensor:
        """A cheap term the kernel leaves to PyTorch (default: none)."""
        return o

    # --- dispatch ----------------------------------------------------------------------------
    def resolved_impl(self, q: Tensor) -> str:
        """``"triton"`` or ``"reference"`` for inputs like q. ``auto`` takes the kernel on CUDA
        when triton is installed; a kernel that fails its self-check is replaced by the
        reference (with a warning) under ``auto`` and ``triton`` alike."""
        if self.impl == "reference":
            return "reference"
        if self.impl == "auto":
            # sysout.kernels imports triton only when a kernel runs: this works without triton.
            from sysout.kernels import SUPPORTED_HEAD_DIMS, triton_available

            fusable = q.is_cuda and self.fused and self.head_dim in SUPPORTED_HEAD_DIMS
            if not (fusable and triton_available()):
                return "reference"
        return "triton" if self._kernel_trusted(q) else "reference"

    # --- trust, but verify ---------------------------------------------------------------------
    def _self_check_key(self, q: Tensor) -> tuple:
        options = tuple(sorted(self.options().items()))
        return (self.name, options, q.dtype, self.head_dim, q.device.type, q.device.index)

    def _kernel_trusted(self, q: Tensor) -> bool:
        """Compare the kernel with the reference the first time this case runs (see
        :func:`set_kernel_self_check`); remember the verdict for the process."""
        mode = _SELF_CHECK[0]
        if mode == "off" or (mode == "auto" and not q.is_cuda) or not self.fused:
            return True
        key = self._self_check_key(q)
        if key not in _VERDICTS:
            if torch.compiler.is_compiling():
                return True  # cannot run a check while tracing; eager runs check first
            from sysout.kernels import kernel_supported

            if not kernel_supported(q):
                return True  # nothing to check: fused_forward explains what is missing
            _VERDICTS[key] = self._self_check(q)
        return _VERDICTS[key]

    def _self_check(self, q: Tensor) -> bool:
        """Kernel vs reference on a small random problem: output and gradients wrt q, k, v, x
        and the variant's parameters, within the tolerance of q's dtype. False (after one
        warning) on a mismatch or an error."""
        dtype, device = q.dtype, q.device
        # An odd length past one block on a GPU; short in the (slow) interpreter.
        B, T = 2, (150 if q.is_cuda else 37)
        gen = torch.Generator().manual_seed(20240613)  # leaves the global RNG untouched
        rand = lambda *shape: torch.randn(*shape, generator=gen).to(device)
        qkv = [rand(B, self.n_head, T, self.head_dim).to(dtype) for _ in range(3)]
        x = rand(B, T, self.n_embd)
        dy = rand(B, self.n_head, T, self.head_dim).to(dtype)
        params = [p for p in self.parameters() if p.requires_grad]
        results = []
        try:
            with torch.autocast(device.type, enabled=False), torch.enable_grad():
                for fused in (True, False):
                    # the reference runs in float32 on the same (rounded) inputs
                    leaves = [t.clone() if fused else t.float() for t in qkv]
                    leaves = [t.requires_grad_(True) for t in leaves] + [
                        x.clone().requires_grad_(True)
                    ]
                    run = self.fused_forward if fused else self.reference
                    out = run(*leaves)
                    grads = torch.autograd.grad(
                        out, leaves + params, dy.to(out.dtype), allow_unused=True
                    )
                    results.append([out, *grads])
        except Exception as err:  # a compile error, an unsupported case, a launch failure
            self._distrust(q, f"{type(err).__name__}: {str(err).strip()[:300]}")
            return False
        names = ["output", "dq", "dk", "dv", "dx"] + [f"d{n}" for n, p in self.named_parameters()
                                                       if p.requires_grad]  # fmt: skip
        tol = _SELF_CHECK_TOL.get(dtype, 6e-2)
        for name, got, want in zip(names, *results):
            if got is None or want is None:
                if (got is None) != (want is None):
                    self._distrust(q, f"{name}: gradient missing on one side")
                    return False
                continue
            want = want.double()
            err = (got.double() - want).abs().max().item()
            scale = max(1.0, want.abs().max().item())
            if not err <= tol * scale:  # also catches NaN
                self._distrust(q, f"{name}: max abs error {err:.3g} > {tol * scale:.3g}")
                return False
        return True

    def _distrust(self, q: Tensor, why: str) -> None:
        message = (
            f"sysout: the fused Triton kernel for attention variant {self.name!r} "
            f"({q.dtype}, head dim {self.head_dim}, {q.device}) disagrees with the reference "
            f"({why}); using the PyTorch reference for this case from now on. Set "
            "SYSOUT_KERNEL_SELF_CHECK=off (or set_kernel_self_check('off')) to skip this check."
        )
        _log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        if self.resolved_impl(q) == "reference":
            return self.reference(q, k, v, x)
        return self.fused_forward(q, k, v, x)

    def fused_forward(
        self, q: Tensor, k: Tensor, v: Tensor, x: Tensor, return_key_mass: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run through the Triton kernel; optionally also return per-key mass [B, H, T]."""
        from sysout.kernels import fused_attention, kernel_supported, triton_available

        if not self.fused:
            raise ValueError(f"attention variant {self.name!r} has no fused kernel path")
        if not triton_available():
            raise RuntimeError(
                "attention.impl=triton needs the `triton` package, which is not installed here "
                "(it ships for Linux only); use attention.impl=auto or attention.impl=reference"
            )
        if not kernel_supported(q):
            raise RuntimeError(
                "attention.impl=triton needs a CUDA tensor (or TRITON_INTERPRET=1 on CPU); "
                "use attention.impl=reference or auto on this machine"
            )
        out = fused_attention(q, k, v, return_key_mass=return_key_mass, **self.kernel_arguments(x))
        if return_key_mass:
            o, mass = out
            return self.finish_output(o, x), mass
        return self.finish_output(out, x)

    def key_mass(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """Attention mass per key [B, H, T] = sum over queries of P, in at least float32.

        The fused kernel computes it in linear memory; the reference materialises the weights
        [1, H, T, T] of one sample at a time."""
        if self.fused and self.resolved_impl(q) == "triton":
            return upcast(self.fused_forward(q, k, v, x, return_key_mass=True)[1])
        return torch.cat(
            [
                self.attention_weights(q[i : i + 1], k[i : i + 1], x[i : i + 1]).sum(dim=-2)
                for i in range(q.shape[0])
            ]
        )

    def extra_repr(self) -> str:
        options = "".join(f", {k}={v}" for k, v in self.options().items())
        return f"n_head={self.n_head}, head_dim={self.head_dim}, impl={self.impl}{options}"

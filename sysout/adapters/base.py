"""What every analysis needs to know about a causal LM, whatever library built it.

A :class:`ModelAdapter` names, for one architecture family, the pieces that the outlier probe,
the lifecycle analysis, the compression methods and the mitigation probes act on: the blocks,
the residual stream entering and leaving each block, the attention and MLP outputs, the
down-projection (its input and its weight as ``[out, in]``), the up/gate projections and the
activation, the pre-attention / pre-MLP / final norms with their gamma, the per-head q/k/v, the
attention weights (or a sysout variant's own key mass), the projection layers and the tokenizer.

Analyses never walk a model's attributes themselves: they call an adapter (found with
:func:`adapter_for`), so a new architecture is one small adapter class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class StopForward(Exception):
    """Raised by a hook to end a forward pass early once nothing later is needed."""


@dataclass(frozen=True)
class BlockParts:
    """The modules of one transformer block that analyses hook.

    ``attn``'s output (first element when a tuple) is the attention output added to the
    residual; ``down_proj``'s output is the MLP output (its input the activation output);
    ``up_proj`` / ``gate_proj`` / ``act`` are the MLP's other stages (``gate_proj`` is None
    without a gated MLP, ``act`` None when the activation is a function, not a module);
    ``attn_norm`` / ``mlp_norm`` are the pre-attention and pre-MLP norms (``mlp_norm`` is None
    when attention and MLP read the same norm, as in Phi's parallel block). ``attn_out_proj`` is
    the attention's output projection: its input is the per-head output (softmax(s) v) of every
    head, concatenated (None when the family does not name it).
    """

    block: nn.Module
    attn: nn.Module
    down_proj: nn.Module
    up_proj: nn.Module | None
    gate_proj: nn.Module | None
    act: nn.Module | None
    attn_norm: nn.Module | None
    mlp_norm: nn.Module | None
    attn_out_proj: nn.Module | None = None


@dataclass
class AttentionCapture:
    """One attention layer's per-head tensors in one forward pass.

    ``q``, ``k``, ``v`` are [B, H, T, d] (keys and values repeated to the query heads under
    grouped-query attention; before rotary embeddings, which do not change norms).
    ``weights()`` gives the weights applied to the values [B, H, Tq, Tk] (at least float32);
    ``key_mass()`` the per-head mass [B, H, Tk] = sum over queries of those weights, by the
    cheapest exact path the model has (a sysout variant's fused kernel, linear memory).
    ``out_proj`` is the attention's output projection W_O (what the heads' values write into
    the residual stream through), None where the adapter does not name it.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    weights: Callable[[], Tensor]
    key_mass: Callable[[], Tensor]
    out_proj: nn.Module | None = None


def linear_weight(module: nn.Module) -> Tensor:
    """The weight of a projection as ``[out, in]``: ``nn.Linear`` as stored, a Hugging Face
    ``Conv1D`` (GPT-2) transposed (a view: in-place edits reach the parameter)."""
    w = module.weight
    return w.t() if is_conv1d(module) else w


def is_conv1d(module: nn.Module) -> bool:
    """A transformers ``Conv1D`` (y = x W + b with W [in, out]), recognised without importing
    transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_projection(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a transformers ``Conv1D``: the layers compression acts on."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def first_tensor(out: Any) -> Tensor:
    """A module's main output: the tensor itself, or the first element of a tuple/list."""
    return out[0] if isinstance(out, (tuple, list)) else out


def hidden_states_argument(args: tuple, kwargs: dict) -> Tensor:
    """The residual stream a block receives (first positional or ``hidden_states``/``x``)."""
    if args:
        return args[0]
    for key in ("hidden_states", "x"):
        if key in kwargs:
            return kwargs[key]
    raise TypeError("cannot find the block's hidden states among its arguments")


def replace_hidden_states(args: tuple, kwargs: dict, new: Tensor) -> tuple[tuple, dict]:
    """(args, kwargs) with the block's hidden states replaced by ``new``."""
    if args:
        return (new, *args[1:]), kwargs
    for key in ("hidden_states", "x"):
        if key in kwargs:
            return args, {**kwargs, key: new}
    raise TypeError("cannot find the block's hidden states among its arguments")


class ModelAdapter:
    """Base class: one subclass per architecture family, registered with :func:`register_adapter`.

    Subclasses set ``family`` and ``description`` and implement :meth:`matches`,
    :meth:`blocks`, :meth:`parts`, :meth:`final_norm`, :meth:`capture_attention` and
    :meth:`logits`; the rest has defaults.
    """

    family: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # --- what subclasses provide ---------------------------------------------------------
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def parts(self, index: int) -> BlockParts:
        raise NotImplementedError

    def final_norm(self) -> nn.Module | None:
        raise NotImplementedError

    def capture_attention(
        self, index: int, callback: Callable[[AttentionCapture], None]
    ) -> list[RemovableHandle]:
        """Hooks that call ``callback`` with layer ``index``'s :class:`AttentionCapture`."""
        raise NotImplementedError

    def logits(self, idx: Tensor) -> Tensor:
        """Logits [B, T, V] of token ids [B, T]."""
        raise NotImplementedError

    # --- defaults -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """What the model is (a variant name, a hub name), for reports."""
        return type(self.model).__name__

    @property
    def prefix_tokens(self) -> int:
        """Learned positions the model prepends to every sequence (sink / register tokens): the
        residual stream has this many more positions than the token ids."""
        return 0

    @property
    def max_length(self) -> int | None:
        """The longest sequence the model accepts (block size / position table), if known."""
        return None

    @property
    def attention_residual(self) -> bool:
        """True when every block adds its attention's (first) output to the block's input before
        the MLP reads it (a sequential block: the mid-block residual sum is that input plus the
        attention output). False for parallel blocks (Phi, GPT-NeoX with
        ``use_parallel_residual``), whose only residual sum is the block output."""
        return False

    @property
    def output_is_residual(self) -> bool:
        """True when a block's output is its residual sum (False: a post-LN block, OPT-350m,
        ends in a norm)."""
        return True

    def output_head(self) -> nn.Module | None:
        """The LM head (left out of compression by default)."""
        return None

    def decode(self, token_id: int) -> str:
        """A token's string; ``<id>`` when the adapter has no tokenizer."""
        return f"<{token_id}>"

    def encode(self, text: str) -> list[int]:
        raise RuntimeError(f"the {self.family} adapter has no tokenizer")

    def num_layers(self) -> int:
        return len(self.blocks())

    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def block_index(self) -> dict[int, int]:
        """``id(module) -> block index`` for every module inside a block."""
        return {id(m): i for i, b in enumerate(self.blocks()) for m in b.modules()}

    def projections(self, include_head: bool = False) -> list[tuple[str, nn.Module]]:
        """Every Linear / Conv1D with its qualified name, in model order (the LM head only
        when ``include_head``)."""
        head = self.output_head()
        return [
            (n, m)
            for n, m in self.model.named_modules()
            if is_projection(m) and (include_head or m is not head)
        ]

    def norms(self) -> dict[str, nn.Module]:
        """``"<layer>.attn_norm" / "<layer>.mlp_norm" / "final_norm" -> norm module``."""
        out: dict[str, nn.Module] = {}
        for i in range(self.num_layers()):
            p = self.parts(i)
            for role in ("attn_norm", "mlp_norm"):
                mod = getattr(p, role)
                if mod is not None:
                    out[f"{i}.{role}"] = mod
        final = self.final_norm()
        if final is not None:
            out["final_norm"] = final
        return out

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Eval mode and no grad inside; every module's training flag restored on exit."""
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for m, mode in modes.items():
                m.training = mode

    def run(self, idx: Tensor, stop_after: nn.Module | None = None) -> None:
        """A forward pass of ``idx`` (hooks fire), ended early after ``stop_after`` if given."""
        handle = None
        if stop_after is not None:

            def stop(_m: nn.Module, _a: Any, _o: Any) -> None:
                raise StopForward

            handle = stop_after.register_forward_hook(stop)
        try:
            self.logits(idx.to(self.device()))
        except StopForward:
            pass
        finally:
            if handle is not None:
                handle.remove()


_ADAPTERS: list[type[ModelAdapter]] = []


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make :func:`adapter_for` consider this family."""
    if not cls.family:
        raise TypeError(f"{cls.__name__} needs a class attribute `family`")
    if any(a.family == cls.family for a in _ADAPTERS):
        raise ValueError(f"model adapter family {cls.family!r} registered twice")
    _ADAPTERS.append(cls)
    return cls


def supported_families() -> list[str]:
    return [f"{a.family} ({a.description})" if a.description else a.family for a in _ADAPTERS]


def adapter_for(model: nn.Module | ModelAdapter) -> ModelAdapter:
    """The adapter of ``model`` (an adapter is returned as it is); a clear error naming the
    supported families when none matches."""
    if isinstance(model, ModelAdapter):
        return model
    core = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    for cls in _ADAPTERS:
        if cls.matches(core):
            return cls(core)
    raise TypeError(
        f"no sysout adapter for {type(core).__name__}; supported architectures: "
        + ", ".join(supported_families())
    )

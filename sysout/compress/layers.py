"""What every compression method shares: which projection layers it edits, how it puts them back,
and how it runs calibration batches. Everything goes through the model's adapter
(:func:`sysout.adapters.adapter_for`), so sysout's GPT and Hugging Face models (GPT-2's
``Conv1D`` included) are handled alike.

A projection's weight is always read and written through :func:`sysout.adapters.linear_weight`,
the ``[out, in]`` view, so "per output channel" and "per output row" mean the same thing for an
``nn.Linear`` (stored ``[out, in]``) and a ``Conv1D`` (stored ``[in, out]``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sysout.adapters import ModelAdapter, adapter_for, linear_weight


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """True when qualified module ``name`` matches one of ``patterns``: equal, a dotted suffix
    (``c_proj`` matches ``transformer.h.0.mlp.c_proj``) or an ``fnmatch`` glob
    (``transformer.h.*.mlp.c_proj``)."""
    return any(
        name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in patterns
    )


@dataclass
class Targets:
    """The projections a method acts on.

    ``inputs``: every selected projection (their inputs get activation quantizers / calibration);
    ``weights``: the subset whose weight may be edited, each shared (tied) Parameter once;
    ``skipped``: names left alone (the LM head unless included, and ``skip`` patterns).
    """

    inputs: list[tuple[str, nn.Module]]
    weights: list[tuple[str, nn.Module]]
    skipped: list[str]


def select_targets(
    model: nn.Module | ModelAdapter, skip: Iterable[str] = (), include_head: bool = False
) -> Targets:
    """The model's projections (``adapter.projections``) minus the LM head and ``skip``.

    A weight Parameter is editable only when no skipped projection also uses it: GPT-2 ties the
    LM head to the token embedding, so leaving the head out protects the embedding too.
    """
    adapter = adapter_for(model)
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    inputs: list[tuple[str, nn.Module]] = []
    skipped: list[tuple[str, nn.Module]] = []
    for name, mod in adapter.projections(include_head=True):
        head = mod is adapter.output_head()
        (skipped if (head and not include_head) or name_matches(name, skip) else inputs).append(
            (name, mod)
        )
    protected = {id(m.weight) for _, m in skipped}
    seen: set[int] = set()
    weights = []
    for name, mod in inputs:
        pid = id(mod.weight)
        if pid not in protected and pid not in seen:
            seen.add(pid)
            weights.append((name, mod))
    return Targets(inputs, weights, [n for n, _ in skipped])


class WeightSnapshot:
    """Exact copies of Parameters (each stored once by identity) for bit-for-bit restoring, and
    the hooks an edit installed. As a context manager, everything is undone on exit (also on an
    exception): hooks removed, weights restored."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[Tensor, Tensor]] = {}
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> WeightSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.restore()

    def save(self, param: Tensor) -> None:
        if id(param) not in self._saved:
            self._saved[id(param)] = (param, param.detach().clone())

    def __len__(self) -> int:
        return len(self._saved)

    @torch.no_grad()
    def restore(self) -> None:
        for param, copy in self._saved.values():
            param.copy_(copy)
        self._saved.clear()


@torch.no_grad()
def set_weight(module: nn.Module, new_out_in: Tensor, snapshot: WeightSnapshot) -> None:
    """Write ``new_out_in`` ([out, in]) into ``module``'s weight after saving the original."""
    snapshot.save(module.weight)
    linear_weight(module).copy_(new_out_in)


def transform_weights(
    modules: Sequence[tuple[str, nn.Module]],
    transform: Callable[[Tensor], Tensor],
    snapshot: WeightSnapshot,
) -> list[str]:
    """``set_weight(module, transform([out, in] weight))`` for each (name, module); the names."""
    for _, module in modules:
        set_weight(module, transform(linear_weight(module)), snapshot)
    return [name for name, _ in modules]


def projection_input(args: tuple, kwargs: dict) -> Tensor | None:
    """A projection's input from a forward pre-hook's arguments (``input`` / ``x`` by name)."""
    if args:
        return args[0]
    for key in ("input", "x"):
        if key in kwargs:
            return kwargs[key]
    return None


def with_projection_input(args: tuple, kwargs: dict, new: Tensor) -> tuple[tuple, dict]:
    """Pre-hook return value that hands ``new`` to the projection instead of its input."""
    if args:
        return (new, *args[1:]), kwargs
    for key in ("input", "x"):
        if key in kwargs:
            return args, {**kwargs, key: new}
    return args, kwargs


def check_batches(batches: Sequence[Tensor] | Tensor | None, what: str) -> list[Tensor]:
    """Calibration batches as a list of LongTensor [B, T]; a clear error otherwise."""
    if isinstance(batches, Tensor):
        batches = [batches]
    if batches is None or len(batches) == 0:
        raise ValueError(f"{what} needs calibration batches (a list of LongTensor [B, T])")
    for b in batches:
        if not isinstance(b, Tensor) or b.dim() != 2 or b.dtype != torch.long:
            got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise TypeError(f"{what}: calibration batches must be LongTensor [B, T], got {got}")
    return list(batches)


def run_batches(
    adapter: ModelAdapter, batches: Iterable[Tensor], stop_after: nn.Module | None = None
) -> None:
    """Each batch through the model (eval mode, no grad; hooks fire), ended after ``stop_after``
    when nothing later is needed."""
    with adapter.eval_mode():
        for idx in batches:
            adapter.run(idx, stop_after=stop_after)

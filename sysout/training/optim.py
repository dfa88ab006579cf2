"""The optimiser: nanoGPT's recipe (AdamW, decay on matmul weights only, warmup + cosine) by
default; SGD with momentum, decay on every parameter and a constant rate as options (Guo et al.'s
Bigram-Backcopy runs)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sysout.attention import AttentionVariant

OPTIMIZERS = ("adamw", "sgd")
# Which parameters take weight decay: nanoGPT's matrices (2-D and up, minus those a variant
# exempts) or every parameter (Guo et al. hand model.parameters() to the optimizer).
DECAY_PARAMS = ("matrices", "all")
# Learning-rate schedule after the linear warmup: cosine to min_lr, or constant at lr.
SCHEDULES = ("cosine", "constant")


@dataclass
class OptimConfig:
    name: str = "adamw"  # one of OPTIMIZERS
    lr: float = 6e-4
    min_lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    eps: float = 1e-8  # AdamW
    momentum: float = 0.9  # SGD (heavy ball, PyTorch's convention)
    weight_decay: float = 0.1
    decay_params: str = "matrices"  # one of DECAY_PARAMS
    schedule: str = "cosine"  # one of SCHEDULES
    warmup_steps: int = 2000
    decay_steps: int | None = None  # cosine length; None = the trainer's max_steps

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for key, allowed in (
            ("name", OPTIMIZERS),
            ("decay_params", DECAY_PARAMS),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"optim.{key} must be one of {allowed}, got {getattr(self, key)!r}"
                )
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"optim: need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(
                f"optim: need weight_decay >= 0 and 0 <= momentum < 1 "
                f"(weight_decay={self.weight_decay}, momentum={self.momentum})"
            )


# Wrappers that FSDP and activation checkpointing insert into parameter names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def decayed_names(model: nn.Module, which: str = "matrices") -> set[str]:
    """Names of the parameters that take weight decay.

    ``matrices`` (nanoGPT): 2-D and up (matmul weights, embeddings) except those an attention
    variant exempts (:meth:`~sysout.attention.AttentionVariant.no_weight_decay`); never vectors
    (LayerNorm gains, biases, sink logits). ``all``: every parameter. Decide on the unwrapped
    model: FSDP flattens parameters to 1-D shards, after which their shape no longer tells."""
    if which not in DECAY_PARAMS:
        raise ValueError(f"optim.decay_params must be one of {DECAY_PARAMS}, got {which!r}")
    if which == "all":
        return {plain_name(n) for n, _ in model.named_parameters()}
    exempt = {
        plain_name(f"{prefix}.{name}" if prefix else name)
        for prefix, module in model.named_modules()
        if isinstance(module, AttentionVariant)
        for name in module.no_weight_decay()
    }
    return {plain_name(n) for n, p in model.named_parameters() if p.dim() >= 2} - exempt


def parameter_groups(
    model: nn.Module, weight_decay: float, decay: set[str] | None = None
) -> list[dict]:
    """AdamW groups: ``decay`` (default :func:`decayed_names` of ``model``) with weight decay."""
    decay_names = decayed_names(model) if decay is None else decay
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied weights appear once
        if not p.requires_grad:
            continue
        (decay if plain_name(name) in decay_names else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, decay: set[str] | None = None
) -> torch.optim.Optimizer:
    """AdamW or SGD (``cfg.name``) over :func:`parameter_groups`; ``decay`` defaults to
    :func:`decayed_names` of ``cfg.decay_params``."""
    decay = decayed_names(model, cfg.decay_params) if decay is None else decay
    groups = parameter_groups(model, cfg.weight_decay, decay)
    fused = all(p.is_cuda for p in model.parameters()) or None
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def lr_factor(step: int, cfg: OptimConfig, decay_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step``: linear warmup, then cosine to
    min_lr (``schedule=cosine``) or 1 (``schedule=constant``)."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return 1.0
    if step >= decay_steps:
        return cfg.min_lr / cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return (cfg.min_lr + cosine * (cfg.lr - cfg.min_lr)) / cfg.lr

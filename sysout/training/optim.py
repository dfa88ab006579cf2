"""nanoGPT's optimiser recipe: AdamW with decay on matmul weights only, warmup + cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float = 6e-4
    min_lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 2000
    decay_steps: int | None = None  # cosine length; None = the trainer's max_steps

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"optim: need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")


# Wrappers that FSDP and activation checkpointing insert into parameter names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def decayed_names(model: nn.Module) -> set[str]:
    """Names of the parameters that take weight decay: 2-D ones (matmul weights, embeddings)
    except those marked ``_no_weight_decay`` (learned attention biases); never vectors
    (LayerNorm gains, biases, sink logits). Decide on the unwrapped model: FSDP flattens
    parameters to 1-D shards, after which their shape no longer tells."""
    return {
        plain_name(n)
        for n, p in model.named_parameters()
        if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)
    }


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


def build_adamw(
    model: nn.Module, cfg: OptimConfig, decay: set[str] | None = None
) -> torch.optim.AdamW:
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay, decay),
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        fused=fused or None,
    )


def lr_factor(step: int, cfg: OptimConfig, decay_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step``: linear warmup, cosine to min_lr."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if step >= decay_steps:
        return cfg.min_lr / cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return (cfg.min_lr + cosine * (cfg.lr - cfg.min_lr)) / cfg.lr

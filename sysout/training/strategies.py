"""Distributed strategies that need Python objects Hydra YAML cannot name directly."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy

from sysout.model.gpt import Block


def fsdp_strategy(
    sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = False, **kwargs: Any
) -> FSDPStrategy:
    """FSDP that shards at transformer-block granularity (each Block is one FSDP unit)."""
    return FSDPStrategy(
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block} if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type="full",  # checkpoints stay loadable on one device and by evaluate.py
        **kwargs,
    )

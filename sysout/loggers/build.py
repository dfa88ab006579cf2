"""Build the loggers of the ``logger`` config group, and close them: one place for train and
evaluate."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import hydra
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _is_wandb(name: str, entry: Any) -> bool:
    return name == "wandb" or "wandb" in str(entry.get("_target_", "")).lower()


def build_loggers(
    group: DictConfig | Mapping[str, Any] | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Logger]:
    """Instantiate every ``_target_`` entry of the ``logger`` group, in order.

    ``overrides`` maps an entry's name to keyword arguments that replace the config's (e.g.
    ``{"wandb": {"name": ..., "group": ...}}``); the key ``wandb`` also applies to an entry of
    another name whose target is a W&B logger. An entry without ``_target_`` is an error.
    """
    if not group:
        return []
    if not isinstance(group, DictConfig):
        group = OmegaConf.create(dict(group))
    overrides = dict(overrides or {})
    loggers: list[Logger] = []
    for name, entry in group.items():
        if entry is None:
            continue
        if not (isinstance(entry, DictConfig) and "_target_" in entry):
            raise ValueError(f"logger.{name} has no _target_: {entry}")
        extra = overrides.get(name)
        if extra is None and _is_wandb(str(name), entry):
            extra = overrides.get("wandb")
        loggers.append(hydra.utils.instantiate(entry, **dict(extra or {})))
    return loggers


def close_loggers(loggers: Iterable[Logger], status: str = "success") -> None:
    """Finalize every logger (writes pending CSV rows) and finish the W&B run, once each.

    Safe to call in a ``finally`` block: one logger's failure to close is logged, not raised,
    so the others still close.
    """
    finish_wandb = False
    for lg in loggers:
        try:
            lg.finalize(status)
        except Exception as err:  # noqa: BLE001  (closing must not hide the run's own error)
            log.warning("closing logger %s failed: %s", type(lg).__name__, err)
        finish_wandb |= isinstance(lg, WandbLogger)
    if finish_wandb:
        import wandb

        wandb.finish(exit_code=0 if status == "success" else 1)

"""W&B logger that runs offline unless the user asked for online, and never kills training."""

from __future__ import annotations

import logging
import netrc
import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def _drop_empty_wandb_mode() -> None:
    """``WANDB_MODE=`` (set but empty) means unset; W&B itself would reject it at init."""
    if "WANDB_MODE" in os.environ and not os.environ["WANDB_MODE"].strip():
        del os.environ["WANDB_MODE"]
        log.info("WANDB_MODE is set but empty: treated as unset")


def resolve_wandb_mode(mode: str | None = None) -> str:
    """An explicit ``mode`` wins, then WANDB_MODE, then online given credentials, else offline."""
    _drop_empty_wandb_mode()
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"].strip()
    return "online" if _has_wandb_credentials() else "offline"


def _quiet_logger(**kwargs: Any) -> WandbLogger:
    logger = WandbLogger(**kwargs)
    # Lightning always passes `anonymous`, which recent W&B ignores with a warning at every run.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def wandb_logger(
    project: str = "sysout", mode: str | None = None, save_dir: str = ".", **kwargs: Any
) -> WandbLogger:
    """A :class:`WandbLogger` whose run starts now, falling back to offline if online fails.

    Each call starts a new run (Hydra multirun jobs each get their own); finish it with
    ``sysout.loggers.close_loggers`` at the end of the job.
    """
    import wandb

    resolved = resolve_wandb_mode(mode)
    os.makedirs(save_dir, exist_ok=True)
    logger = _quiet_logger(project=project, save_dir=save_dir, mode=resolved, **kwargs)
    try:
        _ = logger.experiment  # start the run now, so failures surface before training
    except Exception as err:  # noqa: BLE001  (W&B raises many kinds of errors)
        if resolved == "offline":
            raise
        log.warning(
            "W&B %s run failed to start (%s); continuing with an offline run", resolved, err
        )
        wandb.finish()
        logger = _quiet_logger(project=project, save_dir=save_dir, mode="offline", **kwargs)
        _ = logger.experiment
    return logger

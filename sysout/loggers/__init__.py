from sysout.loggers.build import build_loggers, close_loggers
from sysout.loggers.wandb import resolve_wandb_mode, wandb_logger

__all__ = ["build_loggers", "close_loggers", "resolve_wandb_mode", "wandb_logger"]

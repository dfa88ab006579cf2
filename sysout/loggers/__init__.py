from sysout.loggers.wandb import resolve_wandb_mode, wandb_logger

__all__ = ["resolve_wandb_mode", "wandb_logger"]

"""What ``train.py`` does, as a function of the composed Hydra config (so tests can call it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from sysout.training.module import GPTLitModule

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate each ``_target_`` entry of a config group dict (loggers, callbacks)."""
    if not group:
        return []
    objects = []
    for name, entry in group.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            objects.append(hydra.utils.instantiate(entry))
        elif entry is not None:
            raise ValueError(f"config entry {name!r} has no _target_: {entry}")
    return objects


def build(cfg: DictConfig) -> tuple[GPTLitModule, L.LightningDataModule]:
    """Model and data, validated against each other before any training work."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    attention_cfg = OmegaConf.to_container(cfg.attention, resolve=True)
    optim_cfg = OmegaConf.to_container(cfg.optim, resolve=True)
    module = GPTLitModule(model_cfg, attention_cfg, optim_cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check_sources()
    return module, datamodule


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, validate and (if a test split exists) test; return the final metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    module, datamodule = build(cfg)
    log.info(
        "model: %s, attention=%s, %.2fM parameters",
        cfg.model.get("name"),
        module.variant_name,
        module.model.num_parameters() / 1e6,
    )
    datamodule.prepare_data()  # tokenize (or hit the cache) and check lengths before training
    datamodule.setup("fit")

    loggers: list[Logger] = _instantiate_all(cfg.get("logger"))
    callbacks: list[Callback] = _instantiate_all(cfg.get("callbacks"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks
    )
    for lg in loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True)})

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if "test" in datamodule.sources and cfg.get("test", True):
            checkpoint = _best_checkpoint(trainer)
            trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        _report(trainer, loggers, metrics)
    finally:
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                import wandb

                wandb.finish()
    return metrics


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
        return ckpt.best_model_path
    return None


def _report(trainer: L.Trainer, loggers: list[Logger], metrics: dict[str, float]) -> None:
    lines = ["", "=== sysout run finished ==="]
    for key in ("val/loss", "val/ppl", "test/loss", "test/ppl"):
        if key in metrics:
            lines.append(f"{key:>10}: {metrics[key]:.4f}")
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint):
        if ckpt.best_model_path:
            lines.append(f"best checkpoint: {Path(ckpt.best_model_path).resolve()}")
        if ckpt.last_model_path:
            lines.append(f"last checkpoint: {Path(ckpt.last_model_path).resolve()}")
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            run = lg.experiment
            lines.append(f"W&B run ({run.settings.mode}): {Path(run.dir).parent.resolve()}")
            if run.settings.mode == "offline":
                lines.append(f"  upload later with: wandb sync {Path(run.dir).parent.resolve()}")
        elif lg.log_dir:
            lines.append(f"{type(lg).__name__}: {Path(lg.log_dir).resolve()}")
    print("\n".join(lines), flush=True)

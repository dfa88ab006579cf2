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

from sysout.attention import set_kernel_self_check
from sysout.callbacks.preemption import PreemptionCheckpoint, checkpoint_dir
from sysout.loggers import build_loggers, close_loggers
from sysout.loggers.console import quiet_third_party
from sysout.model.checkpoint import CheckpointError
from sysout.training.module import GPTLitModule

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate each ``_target_`` entry of a config group dict (callbacks)."""
    if not group:
        return []
    objects = []
    for name, entry in group.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            objects.append(hydra.utils.instantiate(entry))
        elif isinstance(entry, DictConfig):
            # Settings an experiment gives a callback the chosen group does not have (e.g.
            # experiment=sink_lab callbacks=none): nothing to build.
            log.info("callbacks.%s has settings but no _target_: not built (%s)", name, entry)
        elif entry is not None:
            raise ValueError(f"config entry {name!r} has no _target_: {entry}")
    return objects


def build_module(cfg: DictConfig, datamodule: Any = None) -> GPTLitModule:
    """The model (its config validated on construction). A data module with its own
    vocabulary (``vocab_size``, e.g. Bigram-Backcopy) sets the model's."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    vocab = getattr(datamodule, "vocab_size", None)
    if vocab is not None:
        if model_cfg.get("vocab_size") not in (None, vocab):
            log.info(
                "model.vocab_size %s -> %d (the data's vocabulary)", model_cfg["vocab_size"], vocab
            )
        model_cfg["vocab_size"] = int(vocab)
    elif model_cfg.get("vocab_size") is None:
        raise ValueError(
            "model.vocab_size is null, which only data with its own vocabulary fills in "
            f"(data={cfg.data.get('name')}); set model.vocab_size or use such data"
        )
    return GPTLitModule(
        model_cfg,
        OmegaConf.to_container(cfg.attention, resolve=True),
        OmegaConf.to_container(cfg.optim, resolve=True),
        compile=bool(cfg.get("compile")),
        on_nonfinite_loss=cfg.get("on_nonfinite_loss", "stop"),
    )


def build(cfg: DictConfig) -> tuple[GPTLitModule, L.LightningDataModule]:
    """The data module, prepared and checked, then the model (which may take its vocabulary
    from the data). Data first: a block size longer than the data must fail with that message,
    before the model allocates its position table (which, for absurd sizes, runs out of
    memory)."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return build_module(cfg, datamodule), datamodule


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, validate and (if a test split exists) test; return the final metrics."""
    single_console_logging()
    quiet_third_party()
    if cfg.get("kernel_self_check") is not None:
        set_kernel_self_check(str(cfg.kernel_self_check))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    module, datamodule = build(cfg)
    log.info(
        "model: %s, attention=%s, %.2fM parameters",
        cfg.model.get("name"),
        module.variant_name,
        module.model.num_parameters() / 1e6,
    )

    loggers: list[Logger] = build_loggers(cfg.get("logger"))
    status = "failed"
    try:
        callbacks: list[Callback] = _instantiate_all(cfg.get("callbacks"))
        trainer: L.Trainer = hydra.utils.instantiate(
            cfg.trainer, logger=loggers or False, callbacks=callbacks
        )
        keep_global_batch(trainer)
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), trainer)
        for lg in loggers:
            lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True)})
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        preempted = next(
            (
                c.saved_path
                for c in callbacks
                if isinstance(c, PreemptionCheckpoint) and c.saved_path
            ),
            None,
        )
        if preempted:
            print(
                f"\nstopped by a signal; resume with: python train.py ... "
                f"hydra.run.dir={cfg.paths.output_dir} ckpt_path=last  ({preempted})"
            )
        elif "test" in getattr(datamodule, "sources", {}) and cfg.get("test", True):
            checkpoint = _best_checkpoint(trainer)
            trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        _report(trainer, loggers, metrics)
        status = "success"
    finally:
        close_loggers(loggers, status)
    return metrics


def single_console_logging() -> None:
    """Print each Lightning log line once.

    When Hydra (or anything) has configured the root logger before Lightning is imported,
    Lightning still adds its own console handler to the ``lightning`` logger and lets records
    propagate to the root's handler too, so every INFO line appears twice. Keep the root's.
    """
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # console only; file handlers stay
                logger.removeHandler(handler)
        logger.propagate = True


def keep_global_batch(trainer: L.Trainer) -> int:
    """Spread the configured accumulation over the devices; return the per-device accumulation.

    The configured accumulation is for one device. Where the world size divides it, divide it,
    so the global batch (batch_size x accumulation x devices) stays what the config says
    (nanoGPT does the same), and the validation interval with it. Where it does not divide, keep
    the per-device batch: the global batch grows by the world size / what cannot be split, and
    the log says so (a user asking for DDP expects it to run).
    """
    world, accumulate = trainer.world_size, trainer.accumulate_grad_batches
    if world > 1:
        if accumulate % world:
            log.warning(
                "accumulate_grad_batches=%d is not divisible by the %d devices: keeping %d per "
                "device, so the global batch is %dx the configured one (set "
                "trainer.accumulate_grad_batches to a multiple of %d to keep it exact)",
                accumulate,
                world,
                accumulate,
                world,
                world,
            )
        else:
            trainer.accumulate_grad_batches = accumulate // world
            if isinstance(trainer.val_check_interval, int):
                # The interval counts this device's micro-batches: keep the same optimizer steps.
                trainer.val_check_interval = max(1, trainer.val_check_interval // world)
            log.info(
                "global batch kept: accumulation %d -> %d per device on %d devices",
                accumulate,
                trainer.accumulate_grad_batches,
                world,
            )
    interval = trainer.val_check_interval
    if isinstance(interval, int) and interval % trainer.accumulate_grad_batches:
        raise ValueError(
            f"trainer.val_check_interval={interval} (batches) must be a multiple of the "
            f"accumulation {trainer.accumulate_grad_batches}, so checkpoints fall on step "
            "boundaries"
        )
    return trainer.accumulate_grad_batches


def resolve_ckpt_path(ckpt_path: str | None, trainer: L.Trainer) -> str | None:
    """``last`` resumes this output folder's ``checkpoints/last.ckpt`` (a fresh start if none)."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = checkpoint_dir(trainer) / "last.ckpt"
        if not last.is_file():
            log.warning("ckpt_path=last: no %s yet, starting from scratch", last)
            return None
        log.info("resuming from %s", last)
        return str(last)
    if not Path(ckpt_path).is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: no such checkpoint file ({Path(ckpt_path).resolve()}); "
            "give a .ckpt file, or ckpt_path=last with hydra.run.dir=<the run's folder>"
        )
    return ckpt_path


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
        return ckpt.best_model_path
    return None


def _report(trainer: L.Trainer, loggers: list[Logger], metrics: dict[str, float]) -> None:
    if not trainer.is_global_zero:  # other ranks hold dummy loggers and print nothing
        return
    lines = ["", "=== sysout run finished ==="]
    for key in ("val/loss", "val/ppl", "val/loss_gap", "test/loss", "test/ppl"):
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

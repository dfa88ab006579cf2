"""Save a resumable checkpoint when the cluster preempts the job (SIGTERM) or the user presses
Ctrl-C, at the next optimizer-step boundary, then stop cleanly."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (or SIGUSR2, which submitit asks SLURM to send ``signal_delay_s`` before the
    time limit), finish the current optimizer step, save ``last.ckpt`` where the ModelCheckpoint
    callback keeps it (so ``ckpt_path=last`` resumes), stop, and hand the signal to the handler
    that was installed before (submitit's requeues the job).

    Saving at a step boundary keeps resumption exact under gradient accumulation: a checkpoint
    taken mid-accumulation would lose the partial gradient and misalign the micro-batch counter.
    """

    def __init__(
        self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR2"), filename: str = "last.ckpt"
    ) -> None:
        self.signals = tuple(getattr(signal, name) for name in signals)
        self.filename = filename
        self.requested = False
        self.saved_path: str | None = None
        self._previous: dict[int, object] = {}
        self._signum: int | None = None

    def _handler(self, signum, frame) -> None:
        log.warning("received signal %s: checkpointing at the next optimizer step", signum)
        self.requested = True
        self._signum = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in self.signals:  # replaces Lightning's handler, which stops mid-accumulation
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: wait for the step boundary
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = self.checkpoint_path(trainer)
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint):
            # Make it ModelCheckpoint's own "last", so a resumed run overwrites it in place
            # instead of writing last-v1.ckpt beside it.
            ckpt.last_model_path = str(path)
        trainer.save_checkpoint(path)
        self.saved_path = str(path)
        log.warning("preemption checkpoint saved at step %d: %s", trainer.global_step, path)
        trainer.should_stop = True
        previous = self._previous.get(self._signum)
        self.on_train_end(trainer, pl_module)
        # Hand over to whoever listened before (submitit requeues the job on SIGUSR2), but not to
        # Lightning's own handler, which would abort the clean stop with SIGTERMException.
        owner = getattr(previous, "__module__", None) or ""
        if (
            callable(previous)
            and previous is not signal.default_int_handler
            and not (owner.startswith("lightning"))
        ):
            previous(self._signum, None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        return checkpoint_dir(trainer) / self.filename


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where this run's checkpoints live: the ModelCheckpoint's folder, else the default."""
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
        return Path(ckpt.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"

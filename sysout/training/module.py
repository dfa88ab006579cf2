"""The LightningModule: a GPT with an attention variant and its optimiser (training.optim)."""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy
from torchmetrics import MeanMetric

from sysout.model import GPT, build_gpt
from sysout.training.optim import OptimConfig, build_optimizer, decayed_names, lr_factor

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last checkpoint on disk is still good."""


class GPTLitModule(L.LightningModule):
    """Wraps :class:`~sysout.model.GPT`; its hyperparameters (plain dicts of the model, attention
    and optim config groups) are saved in every checkpoint, so ``load_from_checkpoint`` rebuilds
    the exact model."""

    def __init__(
        self,
        model: dict[str, Any],
        attention: dict[str, Any],
        optim: dict[str, Any] | None = None,
        compile: bool = False,
        on_nonfinite_loss: str = "stop",
    ) -> None:
        super().__init__()
        if on_nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite_loss must be one of {NONFINITE_POLICIES}, got {on_nonfinite_loss!r}"
            )
        self.save_hyperparameters()
        self.model: GPT = build_gpt(model, attention)
        self.optim_cfg = OptimConfig(**(optim or {}))
        self.compile_model = compile
        # Decided before any FSDP wrapping flattens shapes.
        self.decayed = decayed_names(self.model, self.optim_cfg.decay_params)
        self.on_nonfinite_loss = on_nonfinite_loss
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        # Filled only by data that carries the true distribution's loss (Bigram-Backcopy).
        self.val_true_loss = MeanMetric()
        self.val_loss_trigger = MeanMetric()
        self.val_loss_non_trigger = MeanMetric()

    @property
    def variant_name(self) -> str:
        return self.model.config.attention

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def configure_model(self) -> None:
        # In place, so parameter names (and checkpoints) stay those of the plain model and the
        # outlier probe can still run the eager forward with hooks.
        if self.compile_model and not getattr(self.model, "_compiled_call_impl", None):
            self.model.compile()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        _, loss = self.model(x, y)
        if self._nonfinite(loss):
            if self.on_nonfinite_loss == "skip":
                self.print(f"skipping batch {batch_idx} at step {self.global_step}: loss {loss}")
                return None  # Lightning skips backward and the optimizer step for this batch
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none yet"
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at optimizer step {self.global_step} "
                f"(batch {batch_idx}). Training stopped; the last good checkpoint is {ckpt}. "
                "Lower optim.lr, raise optim.warmup_steps, check the data, or set "
                "on_nonfinite_loss=skip to drop such batches."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=x.size(0))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=x.size(0))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Log the gradient norm the clipping sees (before it clips), at the logging interval:
        whether ``trainer.gradient_clip_val`` ever engages is a fact of the run, not a guess.
        Not under FSDP, where each rank holds a shard of the gradients."""
        if isinstance(self.trainer.strategy, FSDPStrategy):
            return
        if self.trainer.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            # Lightning's FSDP precision refuses norm clipping; the FSDP root computes the
            # global norm over all shards itself.
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _nonfinite(self, loss: torch.Tensor) -> bool:
        bad = not bool(torch.isfinite(loss))
        # All ranks must agree, or the ones that go on would wait forever for the one that stopped.
        return self.trainer.strategy.reduce_boolean_decision(bad, all=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        if self._trainer is not None:
            align_batch_progress(checkpoint, self.trainer.accumulate_grad_batches)

    def _eval_step(self, batch: tuple, metric: MeanMetric) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits, loss = self.model(x, y)
        metric.update(loss, weight=x.size(0))  # windows are equally long: weight by count
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        logits = self._eval_step(batch, self.val_loss)
        if len(batch) > 2:  # (x, y, extras): per-position groups and the true loss
            self._grouped_eval(logits, batch[1], batch[2])

    def _grouped_eval(self, logits: torch.Tensor, y: torch.Tensor, extras: dict) -> None:
        nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
        if "true_nll" in extras:
            self.val_true_loss.update(extras["true_nll"].mean(), weight=y.numel())
        for key, metric in (
            ("trigger", self.val_loss_trigger),
            ("non_trigger", self.val_loss_non_trigger),
        ):
            mask = extras.get(key)
            if mask is not None and bool(mask.any()):
                metric.update(nll[mask].mean(), weight=int(mask.sum()))

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss)

    def _log_eval(self, split: str, metric: MeanMetric) -> None:
        loss = metric.compute()  # synchronised across ranks
        metric.reset()
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=False)
        self.log(f"{split}/ppl", torch.exp(loss.clamp(max=30.0)), sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        if self.val_true_loss.update_called:
            # Before _log_eval resets val_loss: the gap needs the same epoch's model loss.
            model_loss, true_loss = self.val_loss.compute(), self.val_true_loss.compute()
            self.log("val/true_loss", true_loss, sync_dist=False)
            self.log("val/loss_gap", model_loss - true_loss, prog_bar=True, sync_dist=False)
            self.val_true_loss.reset()
        for name, metric in (
            ("val/loss_trigger", self.val_loss_trigger),
            ("val/loss_non_trigger", self.val_loss_non_trigger),
        ):
            if metric.update_called:
                self.log(name, metric.compute(), sync_dist=False)
                metric.reset()
        self._log_eval("val", self.val_loss)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_loss)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim_cfg, self.decayed)
        decay_steps = self.optim_cfg.decay_steps
        if decay_steps is None:
            max_steps = self.trainer.max_steps if self.trainer is not None else -1
            decay_steps = max_steps if max_steps and max_steps > 0 else 100_000
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, cfg=self.optim_cfg, decay_steps=decay_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and tuples (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def align_batch_progress(checkpoint: dict[str, Any], accumulate: int) -> None:
    """Put the restored micro-batch counter on the checkpoint's optimizer-step boundary.

    A checkpoint saved inside ``on_train_batch_end`` records the current batch as not yet
    completed, and Lightning resumes counting from there: one micro-batch short of the step
    boundary, which misaligns every later accumulation window. Our data stream restarts at
    ``global_step x accumulate`` micro-batches (see TextDataModule), so the counter must too.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not progress:
        return
    done = checkpoint["global_step"] * accumulate
    current, total = progress["current"], progress["total"]
    for key in ("ready", "started", "processed", "completed"):
        total[key] += done - current[key]
        current[key] = done

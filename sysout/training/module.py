"""The LightningModule: a GPT with an attention variant, trained with nanoGPT's recipe."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from sysout.model import GPT, build_gpt
from sysout.training.optim import OptimConfig, build_adamw, lr_factor


class GPTLitModule(L.LightningModule):
    """Wraps :class:`~sysout.model.GPT`; its hyperparameters (plain dicts of the model, attention
    and optim config groups) are saved in every checkpoint, so ``load_from_checkpoint`` rebuilds
    the exact model."""

    def __init__(
        self,
        model: dict[str, Any],
        attention: dict[str, Any],
        optim: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: GPT = build_gpt(model, attention)
        self.optim_cfg = OptimConfig(**(optim or {}))
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    @property
    def variant_name(self) -> str:
        return self.model.config.attention

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        _, loss = self.model(x, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.size(0))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=x.size(0))
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], metric: MeanMetric) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        metric.update(loss, weight=x.size(0))  # windows are equally long: weight by count

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss)

    def _log_eval(self, split: str, metric: MeanMetric) -> None:
        loss = metric.compute()  # synchronised across ranks
        metric.reset()
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=False)
        self.log(f"{split}/ppl", torch.exp(loss.clamp(max=30.0)), sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_loss)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_loss)

    def configure_optimizers(self):
        optimizer = build_adamw(self.model, self.optim_cfg)
        decay_steps = self.optim_cfg.decay_steps
        if decay_steps is None:
            max_steps = self.trainer.max_steps if self.trainer is not None else -1
            decay_steps = max_steps if max_steps and max_steps > 0 else 100_000
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, cfg=self.optim_cfg, decay_steps=decay_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

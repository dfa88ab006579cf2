"""Tokens per second and MFU, logged under ``throughput/`` (Lightning's Throughput meter)."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput

from sysout.model import flops_per_token

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, first match wins.
BF16_PEAK_FLOPS: dict[str, float] = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM
    "GH200": 989.4e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165.2e12,
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16
}


def peak_flops_for(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in name), None)


class ThroughputCallback(L.Callback):
    """Logs ``throughput/tokens_per_sec`` (all ranks), per device, and ``throughput/mfu``.

    Time is measured between optimizer steps with a device synchronisation, over a sliding window
    of ``window`` steps. ``peak_flops`` (per device) overrides the table above; without a known
    peak (CPU, unknown GPU) MFU is not logged.
    """

    def __init__(
        self, peak_flops: float | None = None, window: int = 20, log_every_n_steps: int = 10
    ) -> None:
        self.peak_flops = peak_flops
        self.window = window
        self.log_every_n_steps = log_every_n_steps
        self._meter: Throughput | None = None
        self._start = 0.0
        self._tokens = 0
        self._tokens_at_update = 0
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peak = self.peak_flops or peak_flops_for(pl_module.device)
        self._meter = Throughput(
            available_flops=peak, world_size=trainer.world_size, window_size=self.window
        )
        self._flops_per_token = flops_per_token(pl_module.model)
        self._start = time.perf_counter()
        self._tokens = 0
        self._tokens_at_update = 0
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._tokens += batch[0].numel()
        if trainer.global_step == self._last_step:  # still accumulating
            return
        self._last_step = trainer.global_step
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._start
        assert self._meter is not None
        # Time, batches and samples are cumulative; flops are those since the last update.
        new_tokens, self._tokens_at_update = self._tokens - self._tokens_at_update, self._tokens
        self._meter.update(
            time=elapsed,
            batches=trainer.global_step,
            samples=self._tokens,
            flops=new_tokens * self._flops_per_token,
        )
        if trainer.global_step % self.log_every_n_steps:
            return
        metrics = self._meter.compute()
        renamed = {}
        for key, value in metrics.items():
            key = key.replace("samples_per_sec", "tokens_per_sec").replace("device/", "device_")
            renamed[f"throughput/{key}"] = value
        if trainer.loggers:
            for logger in trainer.loggers:
                logger.log_metrics(renamed, step=trainer.global_step)

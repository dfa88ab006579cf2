"""Throughput callback: tokens/s and MFU from a controlled clock and a known FLOP count."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sysout.callbacks import throughput as tp
from sysout.model import GPT, GPTConfig, flops_per_token


class Recorder:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((step, dict(metrics)))


def test_flops_per_token_is_6n_plus_attention() -> None:
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    n = model.num_parameters(non_embedding=True)
    assert flops_per_token(model) == 6 * n + 12 * 2 * 32 * 16


def test_tokens_per_second_and_mfu_from_a_known_clock(monkeypatch) -> None:
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=16, block_size=8, vocab_size=32))
    module = SimpleNamespace(model=model, device=torch.device("cpu"))
    logger = Recorder()
    trainer = SimpleNamespace(global_step=0, world_size=1, loggers=[logger])
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(tp.time, "perf_counter", lambda: next(clock))
    peak = 1e9
    callback = tp.ThroughputCallback(peak_flops=peak, window=2, log_every_n_steps=2)
    callback.on_train_start(trainer, module)  # t = 0
    batch = (torch.zeros(4, 8, dtype=torch.long),)  # 32 tokens per optimizer step
    for step in (1, 2, 3, 4):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, batch, step - 1)  # t = 1, 2, 3, 4 s
    step, metrics = logger.logged[-1]
    assert step == 4
    assert metrics["throughput/device_tokens_per_sec"] == pytest.approx(32.0)
    expected_mfu = 32.0 * flops_per_token(model) / peak
    assert metrics["throughput/device_mfu"] == pytest.approx(expected_mfu)

"""Scale-out and long-run safety: DDP equivalence, exact resume, NaN stops, SIGTERM checkpoints."""

from __future__ import annotations

import csv
import math
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from sysout.data import RankWindowSampler
from sysout.training.module import NonFiniteLossError
from sysout.training.run import train

BASE = (
    "model=gpt2_tiny",
    "data.batch_size=4",
    "data.val_windows=2",
    "test=false",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "optim.warmup_steps=2",
    "optim.decay_steps=8",
    "data.train_windows=512",
    "~callbacks.throughput",
)


def train_losses(output_dir: Path) -> dict[int, float]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")
        }


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_rank_sampler_splits_windows_and_resumes() -> None:
    ranks = [list(RankWindowSampler(12, rank=r, world_size=2)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(12)) and not set(ranks[0]) & set(ranks[1])
    assert list(RankWindowSampler(12, rank=1, world_size=2, start=4)) == ranks[1][4:]
    assert len(RankWindowSampler(12, rank=1, world_size=2, start=4)) == 6  # a full epoch's length


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(
    compose_train, tmp_path
) -> None:
    steps = (
        "trainer.max_steps=3",
        "trainer.val_check_interval=6",
        "trainer.accumulate_grad_batches=2",
        "callbacks.model_checkpoint.monitor=null",
    )
    single = compose_train(*BASE, *steps)
    single.paths.output_dir = str(tmp_path / "single")
    train(single)
    ddp = compose_train(
        *BASE,
        *steps,
        "+trainer.strategy=ddp_spawn",
        "trainer.devices=2",
        "callbacks.outliers.every_n_steps=2",
        "callbacks.outliers.probe_windows=2",
    )
    ddp.paths.output_dir = str(tmp_path / "ddp")
    train(ddp)
    with open(tmp_path / "ddp" / "csv" / "metrics.csv") as f:
        probe_steps = [
            int(r["step"]) for r in csv.DictReader(f) if r.get("outliers/summary/max_top1")
        ]
    assert probe_steps == [0, 2, 3]  # start, every 2 steps, end: once each, from rank 0 only
    one = checkpoint_weights(tmp_path / "single" / "checkpoints" / "last.ckpt")
    two = checkpoint_weights(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6)
    # Same global batch but a different split would still train; what must match is the data:
    # one rank alone (half the windows) lands elsewhere.
    assert (
        torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)[
            "global_step"
        ]
        == 3
    )


def test_resumed_run_continues_the_same_loss_curve(compose_train, tmp_path) -> None:
    common = (*BASE, "trainer.val_check_interval=3", "callbacks.model_checkpoint.monitor=null")
    full = compose_train(*common, "trainer.max_steps=6")
    full.paths.output_dir = str(tmp_path / "full")
    train(full)
    first = compose_train(*common, "trainer.max_steps=3")
    first.paths.output_dir = str(tmp_path / "first")
    train(first)
    resumed = compose_train(
        *common,
        "trainer.max_steps=6",
        f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}",
    )
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    uninterrupted, continued = train_losses(tmp_path / "full"), train_losses(tmp_path / "resumed")
    assert sorted(continued) == [3, 4, 5]
    for step in (3, 4, 5):
        assert continued[step] == pytest.approx(uninterrupted[step], rel=1e-6, abs=1e-6)
    assert continued[5] != uninterrupted[2]  # the data moved on: not the same batch replayed


class PoisonWeights(L.Callback):
    """Puts a NaN into the embedding at one optimizer step (optionally only for that batch)."""

    def __init__(self, at_step: int, restore: bool) -> None:
        self.at_step, self.restore, self.saved = at_step, restore, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step and self.saved is None:
            weight = pl_module.model.transformer.wpe.weight
            self.saved = weight.detach().clone()
            with torch.no_grad():
                weight[0, 0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.restore and self.saved is not None:
            with torch.no_grad():
                pl_module.model.transformer.wpe.weight.copy_(self.saved)
            self.restore = False


def _with_callback(cfg, callback_target: str, **kwargs) -> None:
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.callbacks.test_hook = {"_target_": callback_target, **kwargs}


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    compose_train, tmp_path
) -> None:
    cfg = compose_train(*BASE, "trainer.max_steps=8", "trainer.val_check_interval=2")
    _with_callback(cfg, f"{__name__}.PoisonWeights", at_step=5, restore=False)
    with pytest.raises(NonFiniteLossError, match="at optimizer step 5") as err:
        train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in str(err.value)
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_nan_loss_can_skip_the_batch_instead(compose_train, tmp_path) -> None:
    cfg = compose_train(
        *BASE, "trainer.max_steps=5", "trainer.val_check_interval=5", "on_nonfinite_loss=skip"
    )
    _with_callback(cfg, f"{__name__}.PoisonWeights", at_step=2, restore=True)
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5  # the skipped batch made no optimizer step


class SendSigterm(L.Callback):
    def __init__(self, at_batch: int, signame: str = "SIGTERM") -> None:
        self.at_batch, self.signum = at_batch, getattr(signal, signame)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.at_batch:
            os.kill(os.getpid(), self.signum)


def test_sigterm_leaves_a_resumable_checkpoint_at_a_step_boundary(compose_train, tmp_path) -> None:
    cfg = compose_train(
        *BASE,
        "trainer.max_steps=50",
        "trainer.val_check_interval=50",
        "trainer.accumulate_grad_batches=2",
    )
    _with_callback(cfg, f"{__name__}.SendSigterm", at_batch=4)  # mid-way through step 3
    handler_before = signal.getsignal(signal.SIGTERM)
    train(cfg)
    assert signal.getsignal(signal.SIGTERM) == handler_before  # our handler is uninstalled
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3  # the step boundary after it
    resumed = compose_train(
        *BASE,
        "trainer.max_steps=4",
        "trainer.val_check_interval=8",  # batch 8 = the end of step 4, where last.ckpt is saved
        "trainer.accumulate_grad_batches=2",
        "ckpt_path=last",
    )
    metrics = train(resumed)
    assert torch.load(last, weights_only=False)["global_step"] == 4
    assert math.isfinite(metrics["val/loss"])


def test_sigusr2_checkpoints_then_hands_over_to_the_previous_handler(
    compose_train, tmp_path
) -> None:
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        cfg = compose_train(*BASE, "trainer.max_steps=50", "trainer.val_check_interval=50")
        _with_callback(cfg, f"{__name__}.SendSigterm", at_batch=2, signame="SIGUSR2")
        train(cfg)
        # submitit's handler (here: the recorder) runs once, after the checkpoint exists
        assert calls == [signal.SIGUSR2]
        ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 3
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_cluster_configs_compose(compose_train) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    ddp = compose_train("trainer=ddp")
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.num_nodes == 1
    assert ddp.trainer.precision == "bf16-mixed" and ddp.trainer.use_distributed_sampler is False
    fsdp = compose_train("trainer=fsdp")
    strategy = instantiate(fsdp.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)


def test_slurm_launcher_config_composes(shared_dir) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=["hydra/launcher=slurm", "experiment=paper_gpt2_124m"],
        )
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8

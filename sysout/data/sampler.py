"""Which samples each rank reads: training resumable at any optimizer step, evaluation split
over ranks. Both data modules (text windows, Bigram-Backcopy sequences) build their loaders here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler


class RankWindowSampler(Sampler[int]):
    """Rank ``r`` of ``W`` reads global window indices ``r, r + W, r + 2W, ...``.

    In every step the ranks read disjoint windows, and the union over ranks of one global step is
    the same set a single process reads with ``W`` times the accumulation. ``start`` (in this
    rank's own samples) skips what a resumed run has already consumed; ``len`` stays the full
    epoch so the trainer's batch counters line up with a run that was never interrupted.
    """

    def __init__(
        self, num_samples: int, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.per_rank = num_samples // world_size
        self.rank = rank
        self.world_size = world_size
        self.start = min(int(start), self.per_rank)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        for k in range(self.start, self.per_rank):
            yield k * self.world_size + self.rank


def _rank_world(trainer: Any) -> tuple[int, int]:
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def samples_per_run(trainer: Any, batch_size: int, configured: int | None) -> int:
    """Global training samples in one epoch: ``configured`` if set, else exactly what the
    trainer's ``max_steps`` will consume (max_steps x accumulation x batch x world size)."""
    if configured:
        return int(configured)
    if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
        accumulate = trainer.accumulate_grad_batches
        return trainer.max_steps * accumulate * batch_size * trainer.world_size
    return 100_000


def training_loader(
    data: Dataset, trainer: Any, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """This rank's share of ``data``, starting where the trainer's optimizer step left off: a
    resumed run (checkpoints are taken at step boundaries) reads the stream of an uninterrupted
    one."""
    rank, world = _rank_world(trainer)
    start = 0
    if trainer is not None:
        start = trainer.global_step * trainer.accumulate_grad_batches * batch_size
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=RankWindowSampler(len(data), rank, world, start),
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
    )


def evaluation_loader(
    data: Dataset, trainer: Any, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """Fixed samples, each rank scoring its share (the loss metric averages over ranks
    weighted by count)."""
    rank, world = _rank_world(trainer)
    return DataLoader(
        data, batch_size=batch_size, sampler=range(rank, len(data), world), num_workers=num_workers
    )

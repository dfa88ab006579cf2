"""Which training windows each rank reads, resumable at any optimizer step."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


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

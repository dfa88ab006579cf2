"""Datasets of token windows: random windows for training, fixed windows for evaluation."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def _window(tokens: np.ndarray, start: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = torch.from_numpy(tokens[start : start + block_size + 1].astype(np.int64))
    return chunk[:-1], chunk[1:]


class RandomWindows(Dataset):
    """``num_samples`` windows at random offsets; window i depends only on (seed, i).

    Deriving each offset from its index (rather than a stateful generator) makes the stream
    reproducible, splittable across ranks by index, and resumable at any sample.
    """

    def __init__(
        self, tokens: np.ndarray, block_size: int, num_samples: int, seed: int = 0
    ) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of {block_size} + 1")
        self.tokens = tokens
        self.block_size = block_size
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.max_start = len(tokens) - block_size - 1

    def __len__(self) -> int:
        return self.num_samples

    def start(self, index: int) -> int:
        rng = np.random.Generator(np.random.Philox(key=self.seed, counter=index))
        return int(rng.integers(0, self.max_start + 1))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _window(self.tokens, self.start(index), self.block_size)


class FixedWindows(Dataset):
    """Consecutive windows ``stride`` tokens apart (default: non-overlapping), at most ``limit``."""

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        limit: int | None = None,
        stride: int | None = None,
    ) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of {block_size} + 1")
        self.tokens = tokens
        self.block_size = block_size
        stride = stride or block_size
        self.starts = list(range(0, len(tokens) - block_size, stride))
        if limit is not None:
            self.starts = self.starts[: int(limit)]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _window(self.tokens, self.starts[index], self.block_size)

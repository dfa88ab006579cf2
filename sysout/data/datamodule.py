"""LightningDataModule: text sources -> cached token ids -> windows of ``block_size`` tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from sysout.data.probe_inputs import ProbeInputs, probe_windows_from_tokens
from sysout.data.sampler import evaluation_loader, samples_per_run, training_loader
from sysout.data.sources import DataSourceError, TextSource
from sysout.data.token_cache import load_tokens
from sysout.data.tokenizer import get_tokenizer
from sysout.data.windows import FixedWindows, RandomWindows

SPLITS = ("train", "val", "test")


class TextDataModule(L.LightningDataModule):
    """Serves random training windows and fixed validation/test windows of GPT-2 tokens.

    ``splits`` maps split names (train, val, optional test) to source dicts (see
    :class:`~sysout.data.sources.TextSource`). The number of training windows defaults to what the
    trainer will consume (max_steps x accumulation x batch x world size), so one epoch is one run.
    """

    def __init__(
        self,
        splits: dict[str, Any],
        block_size: int,
        batch_size: int = 8,
        val_windows: int | None = 64,
        test_windows: int | None = None,
        train_windows: int | None = None,
        cache_dir: str = ".cache/tokens",
        tiktoken_cache_dir: str | None = None,
        num_workers: int = 0,
        tokenize_num_proc: int | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.sources = {}
        for split, cfg in dict(splits).items():
            if split not in SPLITS:
                raise DataSourceError(f"data.splits: unknown split {split!r}; use {SPLITS}")
            if cfg is not None:
                self.sources[split] = TextSource.from_config(cfg, where=f"data.splits.{split}")
        for required in ("train", "val"):
            if required not in self.sources:
                raise DataSourceError(f"data.splits.{required} is required")
        if block_size <= 0 or batch_size <= 0:
            raise ValueError(
                f"block_size and batch_size must be positive ({block_size}, {batch_size})"
            )
        self.block_size = int(block_size)
        self.batch_size = int(batch_size)
        self.val_windows = val_windows
        self.test_windows = test_windows
        self.train_windows = train_windows
        self.cache_dir = cache_dir
        self.tiktoken_cache_dir = tiktoken_cache_dir
        self.num_workers = num_workers
        self.tokenize_num_proc = tokenize_num_proc
        self.seed = seed
        self.tokens: dict[str, np.ndarray] = {}

    def check_sources(self) -> None:
        """Fail early, before any work, when a local source is missing."""
        for split, source in self.sources.items():
            if source.kind == "local":
                source.local_files(where=f"data.splits.{split}")

    def prepare_data(self) -> None:
        self.check_sources()
        for split in self.sources:
            self._load(split)

    def _load(self, split: str) -> np.ndarray:
        if split not in self.tokens:
            tokens = load_tokens(
                self.sources[split],
                split,
                self.cache_dir,
                self.tiktoken_cache_dir,
                self.tokenize_num_proc,
                where=f"data.splits.{split}",
            )
            if len(tokens) < self.block_size + 1:
                raise DataSourceError(
                    f"data.splits.{split} has {len(tokens)} tokens, fewer than block_size + 1 = "
                    f"{self.block_size + 1}: use a smaller model.block_size or a longer text "
                    f"({self.sources[split].path})"
                )
            self.tokens[split] = tokens
        return self.tokens[split]

    def setup(self, stage: str | None = None) -> None:
        for split in self.sources:
            self._load(split)

    def num_train_windows(self) -> int:
        """Global windows in one epoch: by default exactly what ``max_steps`` will consume."""
        return samples_per_run(self.trainer, self.batch_size, self.train_windows)

    def train_dataloader(self) -> DataLoader:
        data = RandomWindows(
            self._load("train"), self.block_size, self.num_train_windows(), self.seed
        )
        return training_loader(data, self.trainer, self.batch_size, self.num_workers)

    def _fixed(self, split: str, limit: int | None) -> DataLoader:
        data = FixedWindows(self._load(split), self.block_size, limit)
        return evaluation_loader(data, self.trainer, self.batch_size, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._fixed("val", self.val_windows)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.sources:
            raise DataSourceError("data.splits.test is not configured")
        return self._fixed("test", self.test_windows)

    def probe_inputs(self, count: int, sentence: str | None = None) -> ProbeInputs:
        """``count`` fixed validation windows, the GPT-2 decoder and the sentence's token ids."""
        windows = None
        tokens = self._load("val")
        if len(tokens) > self.block_size:
            windows = probe_windows_from_tokens(tokens, self.block_size, count)
        enc = get_tokenizer(self.tiktoken_cache_dir)
        ids = enc.encode(sentence)[: self.block_size] if sentence else None
        return ProbeInputs(windows, ids or None, lambda token_id: enc.decode([token_id]))

    def describe(self) -> str:
        parts = [
            f"{s}={Path(src.path).name if src.kind == 'local' else src.path}"
            for s, src in self.sources.items()
        ]
        return ", ".join(parts)

"""LightningDataModule of the Bigram-Backcopy task (the CPU laboratory, docs/lab.md).

Training sequences are generated on the fly, sequence i from (seed, i) alone, so the stream is
reproducible, split across ranks by index and resumable at any step; the validation set is fixed
by ``val_seed`` (the same for every run, so losses compare across runs). Validation batches carry
the true distribution's per-token loss and the trigger mask, from which the LightningModule logs
the gap to the true loss and the loss on trigger and non-trigger positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sysout.data.bigram_task import TOKEN_CLASSES, BigramBackcopy, TaskError, sequence_uniforms
from sysout.data.probe_inputs import ProbeInputs
from sysout.data.sampler import evaluation_loader, samples_per_run, training_loader

# The generator holds whole sequences in memory: far beyond this is a typo, not an experiment.
MAX_BLOCK_SIZE = 65_536
TRAIN_STREAM, VAL_STREAM = 1, 0


class BigramBackcopySequences(Dataset):
    """``num_samples`` sequences of ``block_size + 1`` tokens as (input, target) pairs.

    ``__getitems__`` generates a whole batch at once (vectorised over sequences); each sequence
    still depends only on its own index. With ``extras`` an item also carries the true
    distribution's loss and the trigger / non-trigger masks of its positions (validation).
    """

    def __init__(
        self,
        task: BigramBackcopy,
        block_size: int,
        num_samples: int,
        seed: int,
        stream: int,
        extras: bool = False,
    ) -> None:
        self.task = task
        self.block_size = int(block_size)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.stream = int(stream)
        self.extras = extras

    def __len__(self) -> int:
        return self.num_samples

    def sequences(self, indices: list[int]) -> np.ndarray:
        length = self.block_size + 1
        u = np.stack([sequence_uniforms(self.seed, self.stream, i, length) for i in indices])
        return self.task.generate(u)

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        seqs = self.sequences(list(indices))
        items = []
        tokens = torch.from_numpy(seqs)
        if self.extras:
            nll = torch.from_numpy(self.task.true_nll(seqs)).float()
            trigger, non_trigger = query_masks(self.task, tokens[:, :-1])
        for row in range(len(seqs)):
            item = (tokens[row, :-1], tokens[row, 1:])
            if self.extras:
                item = (
                    *item,
                    {
                        "true_nll": nll[row],
                        "trigger": trigger[row],
                        "non_trigger": non_trigger[row],
                    },
                )
            items.append(item)
        return items

    def __getitem__(self, index: int) -> tuple:
        return self.__getitems__([index])[0]


def query_masks(task: BigramBackcopy, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean [B, T] masks over query positions: trigger (the model must copy next) and
    non_trigger (every other position except a BOS at position 0)."""
    trigger = torch.from_numpy(task.is_trigger(inputs.numpy()))
    non_trigger = ~trigger & (inputs != task.bos_id)
    return trigger, non_trigger


class BigramBackcopyDataModule(L.LightningDataModule):
    """Bigram-Backcopy sequences of ``block_size`` inputs with the task's own character
    vocabulary (``vocab_size``: the model's follows it; tiktoken is not involved)."""

    def __init__(
        self,
        text_path: str,
        block_size: int,
        batch_size: int = 32,
        bos: bool = True,
        num_triggers: int = 3,
        val_sequences: int = 64,
        val_seed: int = 0,
        train_sequences: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(bos, bool):
            raise TaskError(f"data.bos must be true or false, got {bos!r} ({type(bos).__name__})")
        if not 0 < int(block_size) <= MAX_BLOCK_SIZE:
            raise TaskError(
                f"model.block_size={block_size}: Bigram-Backcopy sequences are generated in "
                f"memory; use a block size between 1 and {MAX_BLOCK_SIZE} (the lab uses 256)"
            )
        if batch_size <= 0 or val_sequences <= 0:
            raise TaskError(
                f"data.batch_size and data.val_sequences must be positive ({batch_size}, "
                f"{val_sequences})"
            )
        self.name = name
        self.text_path = str(text_path)
        self.task = BigramBackcopy.from_file(text_path, int(num_triggers), bos)
        self.block_size = int(block_size)
        self.batch_size = int(batch_size)
        self.val_sequences = int(val_sequences)
        self.val_seed = int(val_seed)
        self.train_sequences = train_sequences
        self.seed = int(seed)
        self.num_workers = num_workers
        self.sources: dict[str, Any] = {}  # no test split (train.py's test step is skipped)
        self._val: BigramBackcopySequences | None = None

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    def prepare_data(self) -> None:
        pass  # nothing to download or cache: the tables come from one small text

    def setup(self, stage: str | None = None) -> None:
        self._val = BigramBackcopySequences(
            self.task, self.block_size, self.val_sequences, self.val_seed, VAL_STREAM, True
        )

    def num_train_sequences(self) -> int:
        """Global sequences in one epoch: by default exactly what ``max_steps`` will consume."""
        return samples_per_run(self.trainer, self.batch_size, self.train_sequences)

    def train_dataloader(self) -> DataLoader:
        data = BigramBackcopySequences(
            self.task, self.block_size, self.num_train_sequences(), self.seed, TRAIN_STREAM
        )
        return training_loader(data, self.trainer, self.batch_size, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        if self._val is None:
            self.setup("fit")
        return evaluation_loader(self._val, self.trainer, self.batch_size, self.num_workers)

    def validation_sequences(self, count: int | None = None) -> np.ndarray:
        """The first ``count`` fixed validation sequences [count, block_size + 1]."""
        count = self.val_sequences if count is None else min(int(count), self.val_sequences)
        val = BigramBackcopySequences(
            self.task, self.block_size, self.val_sequences, self.val_seed, VAL_STREAM
        )
        return val.sequences(list(range(count)))

    def probe_inputs(self, count: int, sentence: str | None = None) -> ProbeInputs:
        """The first ``count`` validation sequences (inputs), the character decoder, the sentence
        in this vocabulary and the trigger / non-trigger query groups."""
        windows = torch.from_numpy(self.validation_sequences(max(1, count))[:, :-1])
        trigger, non_trigger = query_masks(self.task, windows)
        ids = self.task.encode(sentence)[: self.block_size] if sentence else None
        return ProbeInputs(
            windows,
            ids or None,
            self.task.decode,
            {"trigger": trigger, "non_trigger": non_trigger},
            self.task.token_class,
            TOKEN_CLASSES,
        )

    def describe(self) -> str:
        bos = "with BOS" if self.task.bos else "without BOS"
        return f"bigram_backcopy({Path(self.text_path).name}, {bos})"

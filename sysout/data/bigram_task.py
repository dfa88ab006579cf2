"""The Bigram-Backcopy task (Guo et al. 2024, arXiv 2410.13835): tables, generator, true loss.

Vocabulary: the characters of a text plus a BOS token (the last id). Bigram transition
probabilities and character frequencies are estimated from the text; the ``num_triggers`` most
frequent characters are triggers. A sequence starts with BOS (optional), then a character drawn
from the frequencies without the triggers; after a trigger the next token copies the token
before the trigger, otherwise it follows the bigram table.

A trigger is never followed by a trigger (the copied token is the one before a trigger, which
the bigram rule produced from a non-trigger or which is the first character), so the true
distribution at a trigger position is a point mass: its loss is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOS_STRING = "<BOS>"
#: Token classes of the task, for where the largest activation sits (the outlier probe).
TOKEN_CLASSES = ("bos", "trigger", "delimiter", "ordinary")


class TaskError(ValueError):
    """A Bigram-Backcopy option or its text file is wrong; the message says what to do."""


@dataclass(frozen=True)
class BigramBackcopy:
    """The task's tables. ``chars[i]`` is character id i; BOS is id ``len(chars)``."""

    chars: tuple[str, ...]
    marginal: np.ndarray  # [V-1] character frequencies
    bigram: np.ndarray  # [V-1, V-1] rows sum to 1
    triggers: tuple[int, ...]
    bos: bool = True

    @classmethod
    def from_text(cls, text: str, num_triggers: int = 3, bos: bool = True) -> BigramBackcopy:
        if not isinstance(bos, bool):
            raise TaskError(f"data.bos must be true or false, got {bos!r}")
        chars = tuple(sorted(set(text)))
        if len(chars) < num_triggers + 2:
            raise TaskError(
                f"the text has {len(chars)} distinct characters: too few for {num_triggers} "
                "triggers and a bigram table; point data.text_path at a real text"
            )
        if num_triggers < 1:
            raise TaskError(f"data.num_triggers must be >= 1, got {num_triggers}")
        index = {c: i for i, c in enumerate(chars)}
        ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
        n = len(chars)
        counts = np.bincount(ids, minlength=n).astype(np.float64)
        marginal = counts / counts.sum()
        pairs = np.zeros((n, n), dtype=np.float64)
        np.add.at(pairs, (ids[:-1], ids[1:]), 1.0)
        rows = pairs.sum(1, keepdims=True)
        # A character seen only as the text's last one has no successor: use the frequencies.
        bigram = np.where(rows > 0, pairs / np.maximum(rows, 1.0), marginal[None, :])
        # Most frequent first; ties broken by id so the choice is deterministic.
        order = sorted(range(n), key=lambda i: (-counts[i], i))
        return cls(chars, marginal, bigram, tuple(order[:num_triggers]), bos)

    @classmethod
    def from_file(cls, path: str | Path, num_triggers: int = 3, bos: bool = True) -> BigramBackcopy:
        path = Path(path)
        if not path.is_file():
            raise TaskError(
                f"Bigram-Backcopy text not found: {path}. Set data.text_path to a text file "
                "(the default is ${paths.shared_dir}/data/tinyshakespeare/input.txt; "
                "SYSOUT_SHARED_DIR locates ../shared)"
            )
        return cls.from_text(path.read_text(encoding="utf-8"), num_triggers, bos)

    @property
    def bos_id(self) -> int:
        return len(self.chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def first_char(self) -> np.ndarray:
        """Distribution of the first character: the frequencies without the triggers."""
        p = self.marginal.copy()
        p[list(self.triggers)] = 0.0
        return p / p.sum()

    def is_trigger(self, tokens: np.ndarray) -> np.ndarray:
        return np.isin(tokens, self.triggers)

    def token_class(self, position: int, token_id: int) -> str:
        """``bos``, ``trigger`` (a trigger is a delimiter too when it is the space: the copy
        rule decides first), ``delimiter`` (whitespace or punctuation) or ``ordinary``."""
        if token_id == self.bos_id:
            return "bos"
        if token_id in self.triggers:
            return "trigger"
        char = self.chars[token_id]
        return "delimiter" if char.isspace() or not char.isalnum() else "ordinary"

    def decode(self, token_id: int) -> str:
        return BOS_STRING if token_id == self.bos_id else self.chars[token_id]

    def encode(self, text: str) -> list[int]:
        """Character ids of ``text`` (characters outside the vocabulary dropped), BOS first."""
        index = {c: i for i, c in enumerate(self.chars)}
        ids = [index[c] for c in text if c in index]
        return [self.bos_id, *ids] if self.bos else ids

    def generate(self, uniforms: np.ndarray) -> np.ndarray:
        """Sequences [N, L] from uniforms [N, L] in [0, 1) (one per token, so sequence i
        depends only on its own uniforms, however sequences are batched)."""
        u = np.asarray(uniforms, dtype=np.float64)
        n, length = u.shape
        # Inverse CDF: the first column whose cumulative probability exceeds u. Dividing by the
        # last entry makes it exactly 1, so every u < 1 finds a column of nonzero probability.
        cdf = np.cumsum(self.bigram, axis=1)
        cdf /= cdf[:, -1:]
        first = np.cumsum(self.first_char)
        first /= first[-1]
        out = np.empty((n, length), dtype=np.int64)
        start = 0
        if self.bos:
            out[:, 0] = self.bos_id
            start = 1
        out[:, start] = np.argmax(first[None, :] > u[:, start, None], axis=1)
        trig = np.zeros(len(self.chars) + 1, dtype=bool)
        trig[list(self.triggers)] = True
        for t in range(start + 1, length):
            x = out[:, t - 1]
            bigram_next = np.argmax(cdf[np.minimum(x, len(self.chars) - 1)] > u[:, t, None], 1)
            out[:, t] = np.where(trig[x], out[:, t - 2], bigram_next)
        return out

    def true_nll(self, sequences: np.ndarray) -> np.ndarray:
        """Per-prediction loss [N, L-1] of the true distribution: position i predicts i+1.

        Zero after a trigger (a copy is certain); -log bigram otherwise; -log of the first-
        character distribution after BOS.
        """
        seq = np.asarray(sequences, dtype=np.int64)
        x, y = seq[:, :-1], seq[:, 1:]
        nll = np.zeros(x.shape, dtype=np.float64)
        ordinary = ~self.is_trigger(x) & (x != self.bos_id)
        nll[ordinary] = -np.log(self.bigram[x[ordinary], y[ordinary]])
        after_bos = x == self.bos_id
        nll[after_bos] = -np.log(self.first_char[y[after_bos]])
        return nll


def sequence_uniforms(seed: int, stream: int, index: int, length: int) -> np.ndarray:
    """The uniforms of sequence ``index`` of ``stream`` (0 = validation, 1 = training): an
    independent generator per (seed, stream, index), so any sequence is reproducible alone."""
    return np.random.default_rng([int(seed), int(stream), int(index)]).random(length)

"""What a data module hands the outlier probe: fixed windows, a decoder and optional query groups.

The probe (``sysout.outliers``) never reaches into a data module's fields; a data module that
wants to be probed implements ``probe_inputs(count, sentence) -> ProbeInputs``. Evaluation
builds the same object from a token array with :func:`probe_windows_from_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sysout.data.windows import FixedWindows


@dataclass
class ProbeInputs:
    """The probe's inputs.

    ``windows`` [B, T] token ids (fixed: the same windows at every probe, so curves compare like
    with like) or None; ``sentence`` the token ids of the probe sentence (its own batch) or None;
    ``decode`` maps a token id to its string; ``query_groups`` name boolean masks [B, T] of query
    positions whose attention is also reported separately (the Bigram-Backcopy task's trigger and
    non-trigger positions, for the active-dormant split); ``token_class(position, token_id)``
    names a token's class among ``token_class_names`` (where the largest activation sits; None:
    the probe's default classes from the token's string).
    """

    windows: Tensor | None
    sentence: list[int] | None = None
    decode: Callable[[int], str] | None = None
    query_groups: dict[str, Tensor] = field(default_factory=dict)
    token_class: Callable[[int, int], str] | None = None
    token_class_names: tuple[str, ...] = ()


def probe_windows_from_tokens(tokens: np.ndarray, block_size: int, count: int) -> Tensor:
    """``count`` fixed windows [count, block_size] of ``tokens``, spread evenly over them."""
    windows = FixedWindows(tokens, block_size)
    count = max(1, min(int(count), len(windows)))
    picks = np.linspace(0, len(windows) - 1, count).round().astype(int)
    return torch.stack([windows[int(i)][0] for i in picks])

"""The residual-state peak (Guo et al. 2024) and where each layer's largest activation sits.

For a block output h [B, T, C] with token norms n[b, t] = ||h[b, t]||:

- ``first_token_norm`` = mean_b n[b, 0]: Guo et al.'s "norm of h at BOS after layer l" (with a
  BOS every sequence has the same position-0 state, so the mean is their single figure);
- ``other_norm_mean`` / ``other_norm_median`` = mean_b of the mean / median over t >= 1 of
  n[b, t]; ``first_token_excess`` = first_token_norm - other_norm_median (their "difference");
- where max |h| sits, per sequence b: (t*, c*) = argmax |h[b]|. Reported as shares of
  sequences: the modal dimension and its share, the modal position and its share, the share at
  position 0 and at the first delimiter (Sun et al. 2024 find LLaMA2's on the first token and the
  first delimiter), and the share per token class (the data's classes, e.g. BOS / trigger /
  delimiter / ordinary for Bigram-Backcopy; An et al.'s for text).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .rules import as_sequences

DELIMITER_CLASS = "delimiter"
CLASS_SHARE_PREFIX = "argmax_class_share_"  # + a class name: the share of sequences it holds


@dataclass(frozen=True)
class ResidualPeakStats:
    """Residual-peak figures of one layer over a batch; per-sequence argmax lists in order."""

    first_token_norm: float
    other_norm_mean: float
    other_norm_median: float
    argmax_positions: list[int]
    argmax_dims: list[int]
    argmax_values: list[float]  # signed h at the argmax
    argmax_classes: list[str]  # token class at the argmax ("" without classes)
    first_delimiter: list[int | None]  # position of each sequence's first delimiter
    classes: tuple[str, ...]  # every class the data names (shares reported for each)

    @property
    def first_token_excess(self) -> float:
        return self.first_token_norm - self.other_norm_median

    @property
    def num_sequences(self) -> int:
        return len(self.argmax_positions)

    def scalars(self) -> dict[str, float]:
        n = self.num_sequences
        share = lambda count: count / n if n else float("nan")
        dim, dim_count = Counter(self.argmax_dims).most_common(1)[0]
        pos, pos_count = Counter(self.argmax_positions).most_common(1)[0]
        at_delim = sum(
            d is not None and p == d for p, d in zip(self.argmax_positions, self.first_delimiter)
        )
        out = {
            "first_token_norm": self.first_token_norm,
            "other_norm_mean": self.other_norm_mean,
            "other_norm_median": self.other_norm_median,
            "first_token_excess": self.first_token_excess,
            "argmax_abs": sum(abs(v) for v in self.argmax_values) / n,
            "argmax_dim": float(dim),
            "argmax_dim_share": share(dim_count),
            "argmax_position": float(pos),
            "argmax_position_share": share(pos_count),
            "argmax_first_token_share": share(self.argmax_positions.count(0)),
            "argmax_first_delimiter_share": share(at_delim),
        }
        for cls in self.classes:
            out[CLASS_SHARE_PREFIX + cls] = share(self.argmax_classes.count(cls))
        return out


def residual_peak(
    h: Tensor,
    token_classes: Sequence[Sequence[str]] | None = None,
    classes: Sequence[str] = (),
) -> ResidualPeakStats:
    """Residual-peak statistics of h [B, T, C] (or [T, C]); ``token_classes[b][t]`` names the
    class of each token (one of ``classes``), or None when the data names none."""
    hb = as_sequences(h.detach()).double()
    b, t, c = hb.shape
    if t < 2:
        raise ValueError("residual_peak needs sequences of at least 2 tokens")
    if token_classes is not None and (
        len(token_classes) != b or any(len(row) != t for row in token_classes)
    ):
        raise ValueError(f"token_classes must be [B={b}][T={t}] like h")
    norms = hb.norm(dim=-1)  # [B, T]
    flat = hb.abs().reshape(b, -1).argmax(dim=1)
    positions, dims = (flat // c).tolist(), (flat % c).tolist()
    values = hb.reshape(b, -1).gather(1, flat[:, None]).squeeze(1).tolist()
    if token_classes is None:
        at, first_delim = [""] * b, [None] * b
    else:
        at = [token_classes[i][p] for i, p in enumerate(positions)]
        first_delim = [
            next((p for p, cls in enumerate(row) if cls == DELIMITER_CLASS), None)
            for row in token_classes
        ]
    return ResidualPeakStats(
        first_token_norm=float(norms[:, 0].mean()),
        other_norm_mean=float(norms[:, 1:].mean(dim=1).mean()),
        other_norm_median=float(norms[:, 1:].median(dim=1).values.mean()),
        argmax_positions=[int(p) for p in positions],
        argmax_dims=[int(d) for d in dims],
        argmax_values=[float(v) for v in values],
        argmax_classes=at,
        first_delimiter=first_delim,
        classes=tuple(classes),
    )


def value_out_norms(v: Tensor, out_weight: Tensor) -> Tensor:
    """||W_O v[b, :, t]|| per sequence and position [B, T]: the norm of what each position's
    values write into the residual stream through the output projection (v [B, H, T, d], heads
    concatenated as the block does; W_O [C, H*d] without its bias)."""
    b, h, t, d = v.shape
    concat = v.detach().transpose(1, 2).reshape(b, t, h * d).to(out_weight.dtype)
    return (concat @ out_weight.detach().t()).double().norm(dim=-1)


def value_out_stats(v: Tensor, out_weight: Tensor) -> dict[str, float]:
    """``first_token_value_out_norm`` (mean_b ||W_O v[b, :, 0]||, Guo et al.'s value-state
    figure) and its ratio to the median position's, averaged over sequences."""
    norms = value_out_norms(v, out_weight)
    med = norms.median(dim=1).values
    ratio = torch.where(med > 0, norms[:, 0] / med.clamp_min(1e-300), torch.nan)
    return {
        "first_token_value_out_norm": float(norms[:, 0].mean()),
        "first_token_value_out_ratio": float(ratio.nanmean()),
    }


def first_query_stats(weights: Tensor, v: Tensor, out_weight: Tensor) -> dict[str, float]:
    """What position 0 writes into its own residual stream through attention (means over
    sequences): ``first_query_weight``, the weight query 0 spends on the real keys (heads
    averaged: 1 for softmax, less a slot's share; unbounded for ReLU attention, whose query 0 sees
    only itself and is never normalised), and ``first_query_out_norm``, ||W_O o_0|| of that
    weighted sum of values (weights [B, H, Tq, Tk], v [B, H, Tk, d], the last query aligned with
    the last key; W_O [C, H*d] without its bias)."""
    b, h, t_q, t_k = weights.shape
    row = weights[:, :, 0, : t_k - t_q + 1].detach().double()  # query 0 sees keys 0 .. Tk - Tq
    out = torch.einsum("bhk,bhkd->bhd", row, v[:, :, : row.shape[-1]].detach().double())
    written = out.reshape(b, -1) @ out_weight.detach().double().t()
    return {
        "first_query_weight": float(row.sum(-1).mean()),
        "first_query_out_norm": float(written.norm(dim=-1).mean()),
    }

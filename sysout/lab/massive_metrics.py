"""The massive lab's measures of a run, each a function of its committed figures: the growth of
the BOS residual norm, the layer that holds the peak, the sink's layer, Guo et al.'s curves, and
the criteria the report judges them by."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sysout.lab.plans import parking_variants
from sysout.lab.runs import LabRunResult
from sysout.outliers.keys import metric_key
from sysout.outliers.residual import CLASS_SHARE_PREFIX

GUO_FILE = "guo2024-bos-norm.csv"
GUO_TOKENS_PER_STEP = 512 * 256  # their batch x sequence length
# Criteria (stated in the report).
PEAK_GROWTH = 2.0  # a peak: BOS norm after the peak layer > this x its step-0 value
APART = 3.0  # softmax's BOS norm at least this x a control's, seed by seed
ON_BOS = 0.9  # the largest activation sits on BOS in at least this share of sequences
SINK = 0.3  # a sink: one real key takes more than this share of the non-trigger rows
STANDOUT = 1.5  # the peak has formed: BOS's norm after its peak layer > this x the median token's
CHANGED = 1.25  # a factor changes a figure: every seed pair differs by more than this x, one way


def bos_norm(run: LabRunResult, layer: int, step: int | None = None) -> float:
    """||h(BOS)|| after ``layer`` at ``step`` (default: the last probe)."""
    return run.metric("residual", "first_token_norm", layer, step=step)


def bos_growth(run: LabRunResult, layer: int, step: int | None = None) -> float:
    """||h(BOS)|| after ``layer`` at ``step`` (default: the end) / its step-0 value."""
    return bos_norm(run, layer, step) / bos_norm(run, layer, min(run.stats))


def bos_over_median(run: LabRunResult, layer: int, step: int | None = None) -> float:
    """||h(BOS)|| / the median other token's norm after ``layer``."""
    return bos_norm(run, layer, step) / run.metric("residual", "other_norm_median", layer, step)


def first_query_weight(run: LabRunResult, layer: int) -> float:
    """The weight query 0 (BOS) spends on itself in ``layer`` at the end: 1 for softmax,
    unbounded for ReLU attention (its only key, never normalised)."""
    return run.metric("attention", "first_query_weight", layer)


def attention_write_share(run: LabRunResult, layer: int) -> float:
    """||what ``layer``'s attention writes at position 0|| / ||h(BOS)|| after ``layer``: how
    much of the BOS norm that one write accounts for."""
    return run.metric("attention", "first_query_out_norm", layer) / bos_norm(run, layer)


def peak_layer(run: LabRunResult) -> int:
    """The layer whose output holds the peak at the end: where BOS stands out most from the
    other tokens (a layer whose every position grows is no BOS peak)."""
    return max(range(run.n_layer()), key=lambda layer: bos_over_median(run, layer))


def common_peak_layer(runs: list[LabRunResult]) -> int:
    """The peak layer of most runs (seeds)."""
    return Counter(peak_layer(r) for r in runs).most_common(1)[0][0]


@dataclass(frozen=True)
class PeakLayers:
    """The layer each seed is judged at: softmax's peak layer at that seed (chosen by the
    metric, seed by seed, never fixed); a seed without a softmax run gets the most common one.
    A control or factor is measured at the softmax peak layer of its own seed."""

    by_seed: dict[int, int]
    common: int

    @classmethod
    def of(cls, base: list[LabRunResult]) -> PeakLayers:
        layers = {r.seed: peak_layer(r) for r in base}
        return cls(layers, common_peak_layer(base) if base else 0)

    def __call__(self, run: LabRunResult) -> int:
        return self.by_seed.get(run.seed, self.common)

    @property
    def name(self) -> str:
        """'layer 0' when every seed peaks there, else 'the peak layer'."""
        layers = set(self.by_seed.values()) or {self.common}
        return f"layer {layers.pop()}" if len(layers) == 1 else "the peak layer"

    def per_seed(self) -> str:
        return ", ".join(f"seed {s}: {layer}" for s, layer in sorted(self.by_seed.items()))


def top_key_share(run: LabRunResult, layer: int) -> float:
    """The top real key's share of what the non-trigger rows of ``layer`` spend: of the weight
    on the real keys for sigmoid and ReLU attention (their rows need not sum to one), of the
    whole row, slot included, for the variants with a place to park (weight parked on the slot
    is no token's sink; its share is 1 - ``row_weight``, from the same layer and queries)."""
    share = run.metric("heads", "top_key_share_of_weight_non_trigger", layer)
    return share * (1 - slot_share(run, layer))


def slot_share(run: LabRunResult, layer: int) -> float:
    """The weight the non-trigger rows of ``layer`` park off the tokens (0 without a slot)."""
    if run.meta.get("variant") not in parking_variants():
        return 0.0
    return 1 - run.metric("heads", "row_weight_non_trigger", layer)


def sink_layer(run: LabRunResult) -> int:
    """The layer whose non-trigger rows put the largest share on one place: a real key or the
    slot (kv_bias parks almost all of a layer's weight on its slot without BOS)."""
    return max(range(run.n_layer()), key=lambda i: max(top_key_share(run, i), slot_share(run, i)))


def sink_share(run: LabRunResult) -> float:
    """The top real key's share at the sink layer."""
    return top_key_share(run, sink_layer(run))


def token_sink_share(run: LabRunResult) -> float:
    """The largest share one real key takes in any layer: a sink on a token, wherever it is."""
    return max(top_key_share(run, i) for i in range(run.n_layer()))


def sun_layer(run: LabRunResult) -> int:
    """The layer whose output has the largest Sun et al. top-1 / median |h|."""
    return max(range(run.n_layer()), key=lambda i: run.metric("activation", "ratio", i))


def sun_ratio(run: LabRunResult) -> float:
    """Sun et al.'s top-1 / median |h|, the largest over layers."""
    return run.metric("activation", "ratio", sun_layer(run))


def largest_class(run: LabRunResult, layer: int) -> tuple[str, float]:
    """The token class that holds ``layer``'s largest |h| in most probe sequences, and its share
    (the classes are the data's, as the probe logged them)."""
    prefix = metric_key("residual", CLASS_SHARE_PREFIX, layer)
    shares = {k[len(prefix) :]: v for k, v in run.final_stats().items() if k.startswith(prefix)}
    if not shares:
        return "—", float("nan")
    return max(shares.items(), key=lambda kv: kv[1])


def bos_standout(run: LabRunResult, step: int | None = None) -> float:
    """BOS / the median token after the run's own peak layer: the peak's size. Unlike the
    growth vs step 0 it does not depend on the init's scale (GPT-2's N(0, 0.02) embeddings
    start BOS fifty times smaller than PyTorch's N(0, 1))."""
    return bos_over_median(run, peak_layer(run), step)


def formed_step(run: LabRunResult) -> int | None:
    """The first probed step at which BOS stands out more than ``STANDOUT`` x after the run's
    peak layer (None: never)."""
    layer = peak_layer(run)
    return next((s for s in sorted(run.stats) if bos_over_median(run, layer, s) > STANDOUT), None)


def peak_name(run: LabRunResult) -> str:
    """The run's peak layer, or 'none' where BOS never stands out (no peak to place)."""
    return "none" if formed_step(run) is None else str(peak_layer(run))


def changed(ratios: list[float]) -> int:
    """+1 when every seed pair's ratio (factor / softmax) is above ``CHANGED``, -1 when every
    one is below 1 / ``CHANGED``, else 0: a change the seeds agree on, not one seed's luck."""
    if ratios and min(ratios) > CHANGED:
        return 1
    if ratios and max(ratios) < 1 / CHANGED:
        return -1
    return 0


def read_guo(folder: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Guo et al.'s committed trajectories (the file's header cites its source)."""
    path = folder / GUO_FILE
    if not path.is_file():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    steps = [int(r["step"]) for r in rows]
    return {k: (steps, [float(r[k]) for r in rows]) for k in ("adam", "sgd", "relu_attention")}

"""The probe's metric names, built and read in one place.

Every figure the probe reports is named ``outliers/<group>/<scope>/<stat>``: ``<scope>`` is
``layer_XX`` for a per-layer figure, a module name for a norm or a weight outside the blocks,
and absent for a summary (``outliers/summary/<stat>``). The probe builds its names with
:func:`metric_key`; every reader (the lab, its report and figures, tests) looks figures up with
:func:`read_metric`, which raises :class:`MissingMetric` for a name the metrics do not hold, so
a renamed statistic fails loudly instead of plotting as 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

PREFIX = "outliers"
#: Metric groups: ``outliers/<group>/...``, one W&B workspace section each.
GROUPS = (
    "activation",
    "residual",
    "mlp_input",
    "attention",
    "heads",
    "weight",
    "channel",
    "moments",
    "consistency",
    "summary",
)
_LAYER = re.compile(r"^layer_(\d+)$")


class MissingMetric(KeyError):
    """A metric a reader asked for is not among the probe's figures."""

    def __str__(self) -> str:  # KeyError quotes its argument; this is a sentence
        return str(self.args[0])


def layer_scope(layer: int) -> str:
    """``layer_03`` for layer 3 (two digits, so names sort in layer order up to 100 layers)."""
    if layer < 0:
        raise ValueError(f"layer index must be >= 0, got {layer}")
    return f"layer_{layer:02d}"


def metric_key(group: str, stat: str, layer: int | None = None, scope: str | None = None) -> str:
    """``outliers/<group>/layer_XX/<stat>`` (``layer``), ``outliers/<group>/<scope>/<stat>``
    (``scope``: a module name) or ``outliers/<group>/<stat>``."""
    if group not in GROUPS:
        raise ValueError(f"unknown metric group {group!r}; groups: {', '.join(GROUPS)}")
    if layer is not None and scope is not None:
        raise ValueError("a metric has a layer or a scope, not both")
    where = layer_scope(layer) if layer is not None else scope
    return f"{PREFIX}/{group}/{where}/{stat}" if where else f"{PREFIX}/{group}/{stat}"


def summary_key(stat: str) -> str:
    """``outliers/summary/<stat>``."""
    return metric_key("summary", stat)


def parse_key(key: str) -> tuple[str, int | None, str]:
    """(group, layer or None, stat) of a per-layer or summary key; ValueError otherwise."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != PREFIX or parts[1] not in GROUPS:
        raise ValueError(f"{key!r} is not an outlier-probe metric name")
    match = _LAYER.match(parts[2]) if len(parts) > 3 else None
    if match:
        return parts[1], int(match.group(1)), "/".join(parts[3:])
    return parts[1], None, "/".join(parts[2:])


def layers_in(keys: Iterable[str]) -> int:
    """How many layers the figures cover (1 + the largest ``layer_XX`` index; 0 for none)."""
    found = [layer for k in keys if k.startswith(PREFIX + "/") for layer in [_layer_of(k)]]
    found = [f for f in found if f is not None]
    return max(found) + 1 if found else 0


def _layer_of(key: str) -> int | None:
    try:
        return parse_key(key)[1]
    except ValueError:
        return None


def read_metric(
    metrics: Mapping[str, float], group: str, stat: str, layer: int | None = None
) -> float:
    """The figure ``metric_key(group, stat, layer)`` of ``metrics``; :class:`MissingMetric`
    (naming the key and what to do) when it is absent."""
    key = metric_key(group, stat, layer)
    if key not in metrics:
        near = sorted(k for k in metrics if k.startswith(f"{PREFIX}/{group}/"))[:5]
        raise MissingMetric(
            f"metric {key!r} is not among the probe's figures (of group {group!r}: "
            f"{near or 'none'}...). The run predates this statistic or the name changed: "
            "re-measure the run's checkpoints with the current probe."
        )
    return float(metrics[key])


def read_layers(metrics: Mapping[str, float], group: str, stat: str) -> list[float]:
    """``read_metric`` for every layer the figures cover, in layer order."""
    n = layers_in(metrics)
    if n == 0:
        raise MissingMetric("no per-layer outlier-probe figures in these metrics")
    return [read_metric(metrics, group, stat, layer) for layer in range(n)]

"""The outlier probe's options, their defaults written once.

The training callback (``callbacks.outliers``) and ``evaluate.py`` (``probe``) read the same
config group, ``conf/probe/default.yaml``, whose keys are all null: null keeps the default
written here, as :class:`~sysout.outliers.rules.OutlierThresholds` does for the thresholds.
The probe sentence itself is :data:`~sysout.outliers.reports.PROBE_SENTENCE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._common import settings_from
from .reports import PROBE_SENTENCE


@dataclass(frozen=True)
class ProbeOptions:
    """What one probe reads and keeps.

    Attributes:
        windows: fixed validation windows in the probe batch (evenly spread over the split).
        sentence: the sentence of the attention heat map and 3-D surface (its own batch);
            an empty string probes no sentence.
        max_records: activation outliers kept per probe (largest |value| first): the rows of
            the W&B outlier table in training, of ``outlier_records.csv`` in evaluation.
    """

    windows: int = 8
    sentence: str = PROBE_SENTENCE
    max_records: int = 100

    def __post_init__(self) -> None:
        # bool is an int to Python, never a count to a user.
        if isinstance(self.windows, bool) or not isinstance(self.windows, int) or self.windows < 1:
            raise ValueError(f"probe windows must be an integer >= 1, got {self.windows!r}")
        if (
            isinstance(self.max_records, bool)
            or not isinstance(self.max_records, int)
            or self.max_records < 0
        ):
            raise ValueError(f"probe max_records must be an integer >= 0, got {self.max_records!r}")
        if not isinstance(self.sentence, str):
            raise ValueError(
                f"probe sentence must be a string ('' for none), got {self.sentence!r}"
            )

    @classmethod
    def from_any(cls, value: ProbeOptions | Mapping[str, Any] | None) -> ProbeOptions:
        """Options from an instance, a (Hydra) mapping, or None (defaults); a None value in
        the mapping keeps that field's default, an unknown key is an error."""
        return settings_from(cls, value, "probe options")

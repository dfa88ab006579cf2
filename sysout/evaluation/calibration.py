"""Calibration batches of one checkpoint, one set per kind of method that needs them.

- ``calibration``: ``calibration.windows`` random windows of the run's validation split (Wanda,
  the massive-activation probes, ``w8a8_static_linear_inputs``);
- ``train``: ``calibration.train.batches`` batches of ``calibration.train.batch_size`` random
  windows of the run's **training** split (``w8a8_static``: Bondarenko et al. estimate their
  static ranges on 4 training batches, ``validate_clm.py`` ``pass_data_for_range_estimation``).
  A Hugging Face model has no run config: its ``train`` set is ``calibration.train.fallback``
  (the enwiki sample's training text by default), not the data the model was trained on.

A set that cannot be built is an error string, and only the methods that need it fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from sysout.data import DataSourceError
from sysout.evaluation.robustness import CheckpointResult
from sysout.evaluation.settings import CalibrationSet
from sysout.evaluation.texts import Texts, calibration_windows, load_source


def build_calibration(
    needed: set[str],
    result: CheckpointResult,
    block: int,
    run_cfg: DictConfig | None,
    texts: Texts,
    sets: Mapping[str, CalibrationSet | None],
    tok: Any | None = None,
    add_special_tokens: bool = False,
) -> tuple[dict[str, list[torch.Tensor]], dict[str, str]]:
    """``({set: batches}, {set: error})`` for each calibration set in ``needed``, as ``sets``
    (:attr:`EvalSettings.calibration_sets <sysout.evaluation.settings.EvalSettings>`) says."""
    batches: dict[str, list[torch.Tensor]] = {}
    errors: dict[str, str] = {}
    for name in sorted(needed):
        try:
            batches[name] = _build(
                name, sets, result, block, run_cfg, texts, tok, add_special_tokens
            )
        except Exception as err:  # noqa: BLE001  (only the methods that need it will fail)
            errors[name] = f"{type(err).__name__}: {err}"
    return batches, errors


def _build(
    name: str,
    sets: Mapping[str, CalibrationSet | None],
    result: CheckpointResult,
    block: int,
    run_cfg: DictConfig | None,
    texts: Texts,
    tok: Any | None,
    special: bool,
) -> list[torch.Tensor]:
    if name not in sets:
        raise ValueError(f"unknown calibration set {name!r}; known: {sorted(sets)}")
    spec = sets[name]
    if spec is None:
        raise DataSourceError(f"calibration.{name} is missing from the config")
    text = spec.text
    tokens, source, origin = load_source(
        texts, text.source, text.fallback, run_cfg, text.where, tok, special
    )
    if tokens is None:
        raise DataSourceError(f"{text.where}.source is null")
    out = calibration_windows(tokens, block, spec.windows, spec.batch_size, spec.seed)
    key = "calibration" if name == "calibration" else f"{name}_calibration"
    result.info.update(
        {
            f"{key}_text": source.get("path"),
            f"{key}_origin": origin,
            f"{key}_windows": spec.windows,
        }
    )
    return out

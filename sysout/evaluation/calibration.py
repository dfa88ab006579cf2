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

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sysout.data import DataSourceError
from sysout.evaluation.robustness import CheckpointResult
from sysout.evaluation.texts import Texts, calibration_windows, load_source


def build_calibration(
    needed: set[str],
    result: CheckpointResult,
    block: int,
    run_cfg: DictConfig | None,
    texts: Texts,
    cfg: DictConfig,
    tok: Any | None = None,
    add_special_tokens: bool = False,
) -> tuple[dict[str, list[torch.Tensor]], dict[str, str]]:
    """``({set: batches}, {set: error})`` for each calibration set in ``needed``."""
    batches: dict[str, list[torch.Tensor]] = {}
    errors: dict[str, str] = {}
    for name in sorted(needed):
        try:
            batches[name] = _build(
                name, result, block, run_cfg, texts, cfg, tok, add_special_tokens
            )
        except Exception as err:  # noqa: BLE001  (only the methods that need it will fail)
            errors[name] = f"{type(err).__name__}: {err}"
    return batches, errors


def _build(
    name: str,
    result: CheckpointResult,
    block: int,
    run_cfg: DictConfig | None,
    texts: Texts,
    cfg: DictConfig,
    tok: Any | None,
    special: bool,
) -> list[torch.Tensor]:
    c = cfg.calibration
    if name == "calibration":
        spec, fallback, size = c.source, c.fallback, int(cfg.batch_size)
        windows, seed, where = int(c.windows), int(c.seed), "calibration"
    elif name == "train":
        t = OmegaConf.select(cfg, "calibration.train", default=None)
        if t is None:
            raise DataSourceError("calibration.train is missing from the config")
        size = int(t.batch_size or cfg.batch_size)
        spec, fallback = t.source, t.fallback
        windows, seed, where = int(t.batches) * size, int(t.seed), "calibration.train"
    else:
        raise ValueError(f"unknown calibration set {name!r}; known: calibration, train")
    tokens, source, origin = load_source(texts, spec, fallback, run_cfg, where, tok, special)
    if tokens is None:
        raise DataSourceError(f"{where}.source is null")
    out = calibration_windows(tokens, block, windows, size, seed)
    key = "calibration" if name == "calibration" else "train_calibration"
    result.info.update(
        {
            f"{key}_text": source.get("path"),
            f"{key}_origin": origin,
            f"{key}_windows": windows,
        }
    )
    return out

"""evaluate.py's settings: the composed config read once, at the entry of
:func:`~sysout.evaluation.run.evaluate`, into frozen dataclasses passed down from there.

Every value is checked here, each error naming its key and what to give instead (a wrong value
is a ``ValueError``; a missing evaluation text a ``DataSourceError``), so a typo fails in a
second, before any checkpoint is loaded. The device is resolved here, once. Below this module
nothing reads the ``DictConfig`` (the logger group excepted: it is Hydra's to instantiate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sysout.adapters.hf_load import resolve_dtype
from sysout.data import TextSource
from sysout.evaluation.checkpoints import WHICH, CheckpointError, plain
from sysout.evaluation.protocol import EvalProtocol
from sysout.evaluation.robustness import normalize_methods
from sysout.outliers.options import ProbeOptions
from sysout.outliers.rules import OutlierThresholds

PRECISIONS = {
    "fp32": None, "32": None, "32-true": None,
    "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
    "fp16": torch.float16, "16-mixed": torch.float16,
}  # fmt: skip


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or empty): CUDA when available, else the CPU; otherwise the named device,
    which must exist."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available; use device=cpu or auto")
    return device


def resolve_precision(name: str | None) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None: fp32, no autocast)."""
    key = str(name or "fp32").lower()
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; use one of {sorted(PRECISIONS)}")
    return PRECISIONS[key]


@dataclass(frozen=True)
class RunText:
    """A text taken from the checkpoint's own run (``val``, ``calibration``): ``source`` is a
    split name of the run's data config (``val``, ``train``) or a source of its own, None for
    none; ``fallback`` is read when the run has no such split or it fails to load."""

    source: str | TextSource | None
    fallback: TextSource | None
    where: str  # the config key, for messages and the tables' provenance


@dataclass(frozen=True)
class CalibrationSet:
    """Random windows of the model's block size from ``text``, in batches of ``batch_size``."""

    text: RunText
    windows: int  # in all
    batch_size: int
    seed: int


@dataclass(frozen=True)
class EvalSettings:
    """Everything ``conf/evaluate.yaml`` says, checked (docs/evaluation.md has each key)."""

    checkpoints: tuple[str, ...]
    which: str
    methods: tuple[str, ...]  # validated specs, baseline first
    eval_text: TextSource
    protocol: EvalProtocol  # stream, special tokens, stride
    max_eval_tokens: int | None
    val: RunText
    val_windows: int | None  # None: the run's data.val_windows (64 without a run config)
    calibration: CalibrationSet
    train_calibration: CalibrationSet | None  # None: calibration.train missing from the config
    device: torch.device
    precision: str
    autocast_dtype: torch.dtype | None
    batch_size: int
    weights_only: bool
    hf_dtype: str
    hf_max_length: int | None  # None: each model's own context length
    outlier_report: bool
    probe: ProbeOptions
    thresholds: OutlierThresholds  # the outlier report's and the mitigation probes'
    progress: bool
    fail_on_error: bool
    output_dir: Path
    cache_dir: str
    tiktoken_cache_dir: str | None
    logger: DictConfig | None  # the logger group, instantiated by sysout.loggers
    wandb_run: Mapping[str, Any]  # the W&B run's name, group, tags, job type

    @property
    def calibration_sets(self) -> dict[str, CalibrationSet | None]:
        """The sets by the names the methods ask for (``Method.calibration_set``)."""
        return {"calibration": self.calibration, "train": self.train_calibration}

    @classmethod
    def from_config(cls, cfg: DictConfig) -> EvalSettings:
        """Read and check ``cfg``; the first wrong value raises, naming its key."""
        if OmegaConf.is_missing(cfg, "checkpoints"):
            raise ValueError(
                "checkpoints is required: checkpoints=<a .ckpt file, a run or sweep folder, "
                "hf:<model>, or a list [a,b]>"
            )
        # The cheap checks that need no file first, as before: a method typo fails at once.
        methods = tuple(normalize_methods(plain(cfg.methods)))
        which = str(cfg.which)
        if which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, got {which!r}")
        batch_size = _int(cfg.batch_size, "batch_size", minimum=1)
        precision = str(cfg.precision)
        hf = _node(cfg, "hf")
        hf_dtype = str(hf.get("dtype") or "fp32")
        resolve_dtype(hf_dtype)  # HFLoadError (a ValueError) naming the valid ones
        stride = _int(cfg.stride, "stride", minimum=1, optional=True)
        protocol = EvalProtocol(
            str(cfg.get("eval_stream") or "concat"),
            _bool(hf.get("add_special_tokens", False), "hf.add_special_tokens"),
            stride,
        )
        probe = dict(_node(cfg, "probe"))
        thresholds = OutlierThresholds.from_any(plain(probe.pop("thresholds", None)))
        eval_text = TextSource.from_config(plain(cfg.eval_text), where="eval_text")
        if eval_text.kind == "local":
            eval_text.local_files("eval_text")  # DataSourceError: where it looked, what to do
        val, calibration = _node(cfg, "val"), _node(cfg, "calibration")
        return cls(
            checkpoints=_checkpoints(plain(cfg.checkpoints)),
            which=which,
            methods=methods,
            eval_text=eval_text,
            protocol=protocol,
            max_eval_tokens=_int(cfg.max_eval_tokens, "max_eval_tokens", 2, optional=True),
            val=_run_text(val, "val"),
            val_windows=_int(val.get("windows"), "val.windows", minimum=1, optional=True),
            calibration=CalibrationSet(
                _run_text(calibration, "calibration"),
                windows=_int(calibration.get("windows"), "calibration.windows", minimum=1),
                batch_size=batch_size,
                seed=_int(calibration.get("seed", 0), "calibration.seed"),
            ),
            train_calibration=_train_calibration(calibration.get("train"), batch_size),
            device=resolve_device(cfg.device),
            precision=precision,
            autocast_dtype=resolve_precision(precision),
            batch_size=batch_size,
            weights_only=_bool(cfg.weights_only, "weights_only"),
            hf_dtype=hf_dtype,
            hf_max_length=_int(hf.get("max_length"), "hf.max_length", minimum=1, optional=True),
            outlier_report=_bool(cfg.outlier_report, "outlier_report"),
            probe=ProbeOptions.from_any(probe),
            thresholds=thresholds,
            progress=_bool(cfg.progress, "progress"),
            fail_on_error=_bool(cfg.fail_on_error, "fail_on_error"),
            output_dir=Path(str(cfg.output_dir)),
            cache_dir=str(cfg.cache_dir),
            tiktoken_cache_dir=None
            if cfg.tiktoken_cache_dir is None
            else str(cfg.tiktoken_cache_dir),
            logger=cfg.get("logger"),
            wandb_run=MappingProxyType(dict(plain(cfg.get("wandb_run")) or {})),
        )


# ----------------------------------------------------------------------------- checks
def _node(cfg: DictConfig, key: str) -> DictConfig | Mapping[str, Any]:
    node = OmegaConf.select(cfg, key, default=None)
    if node is None:
        return {}
    if not isinstance(node, (DictConfig, Mapping)):
        raise ValueError(f"{key} must be a mapping of keys, got {node!r}")
    return node


def _int(value: Any, key: str, minimum: int | None = None, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    # bool is an int to Python, never a count to a user; a float would be silently truncated.
    if isinstance(value, bool) or not isinstance(value, int):
        null = " or null" if optional else ""
        raise ValueError(f"{key} must be an integer{null}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _source(value: Any, key: str) -> TextSource | None:
    value = plain(value)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a text source {{kind, path, ...}} or null, got {value!r}")
    return TextSource.from_config(value, where=key)


def _run_text(node: DictConfig | Mapping[str, Any], key: str) -> RunText:
    source = plain(node.get("source"))
    if source is not None and not isinstance(source, (str, Mapping)):
        raise ValueError(
            f"{key}.source must be a split name of the run (val, train), a text source, or "
            f"null, got {source!r}"
        )
    if isinstance(source, Mapping):
        source = _source(source, f"{key}.source")
    return RunText(source, _source(node.get("fallback"), f"{key}.fallback"), key)


def _train_calibration(node: Any, batch_size: int) -> CalibrationSet | None:
    if node is None:
        return None  # only the methods that need the train set fail, each saying so
    key = "calibration.train"
    size = _int(node.get("batch_size"), f"{key}.batch_size", minimum=1, optional=True)
    size = size or batch_size
    batches = _int(node.get("batches"), f"{key}.batches", minimum=1)
    return CalibrationSet(
        _run_text(node, key),
        windows=batches * size,
        batch_size=size,
        seed=_int(node.get("seed", 0), f"{key}.seed"),
    )


def _checkpoints(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    out = tuple(str(item).strip() for item in items if str(item).strip())
    if not out:
        raise CheckpointError(
            "checkpoints is empty: give a .ckpt file, a run or sweep folder, hf:<model>, or a "
            "list [a,b]"
        )
    return out

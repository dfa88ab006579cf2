"""Find checkpoints (files, run folders, sweep folders) and load them with clear errors.

A *run folder* is what ``train.py`` writes: ``<run>/checkpoints/{last.ckpt, step*-val_loss*.ckpt}``
beside ``<run>/.hydra/config.yaml``. A *sweep folder* holds run folders (``multirun/...``); any
folder is searched recursively for folders that hold ``*.ckpt`` files, one run each.
``hf:<hub name or local folder>`` is a Hugging Face causal LM (checked at resolution, loaded by
:func:`sysout.adapters.hf_load.load_hf_model`); lists may mix both kinds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from sysout.adapters.hf_load import HFModelSpec, inspect_hf, is_hf_name, load_hf_model, strip_hf
from sysout.model import GPT
from sysout.model.checkpoint import CheckpointError, load_gpt_checkpoint

log = logging.getLogger(__name__)

WHICH = ("best", "last")
_VAL_LOSS = re.compile(r"val[_/]?loss[=_-]?(-?\d+(?:\.\d+)?(?:e-?\d+)?)")


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint to evaluate: its file, its run folder (when it is in one) and a short name."""

    path: Path
    run_dir: Path | None
    name: str
    hf: HFModelSpec | None = None  # a Hugging Face model (``hf:<name>``), checked

    def run_config(self) -> DictConfig | None:
        """The run's saved Hydra config (``.hydra/config.yaml``), if there is one."""
        if self.run_dir is None:
            return None
        cfg_path = self.run_dir / ".hydra" / "config.yaml"
        if not cfg_path.is_file():
            return None
        try:
            cfg = OmegaConf.load(cfg_path)
        except Exception as err:  # noqa: BLE001  (a broken YAML must not stop the evaluation)
            log.warning("cannot read %s (%s); ignoring the run's config", cfg_path, err)
            return None
        return cfg if isinstance(cfg, DictConfig) else None


@dataclass
class LoadedCheckpoint:
    path: Path
    model: nn.Module  # a sysout GPT or a transformers causal LM
    hparams: dict[str, Any] = field(default_factory=dict)
    step: int | None = None

    @property
    def is_hf(self) -> bool:
        return not isinstance(self.model, GPT)

    @property
    def variant(self) -> str:
        """The attention variant, or ``hf:<model_type>`` for a Hugging Face model."""
        if self.is_hf:
            return f"hf:{self.model.config.model_type}"
        return self.model.config.attention

    @property
    def block_size(self) -> int:
        if self.is_hf:
            from sysout.adapters import adapter_for

            return int(adapter_for(self.model).max_length or 1024)
        return self.model.config.block_size

    @property
    def tokenizer(self) -> Any | None:
        """A Hugging Face model's own tokenizer (None: sysout's GPT-2 BPE)."""
        return getattr(self.model, "sysout_tokenizer", None)


# ----------------------------------------------------------------------------- resolving paths


def _natural_key(path: Path) -> list[Any]:
    # Sweep jobs are numbered 0_.., 1_.., 10_..: sort 2 before 10.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def checkpoint_val_loss(path: Path) -> float | None:
    """The validation loss written in a checkpoint's file name (``...-val_loss3.141.ckpt``)."""
    match = _VAL_LOSS.search(path.name.removesuffix(".ckpt"))
    return float(match.group(1)) if match else None


def select_checkpoint(ckpt_dir: Path, which: str = "best") -> Path:
    """The checkpoint of a ``checkpoints/`` folder: ``best`` is the non-last file with the lowest
    val loss in its name (the newest when no name has one), falling back to ``last.ckpt``;
    ``last`` is ``last.ckpt``, falling back to the newest file."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    files = sorted(ckpt_dir.glob("*.ckpt"), key=_natural_key)
    if not files:
        raise CheckpointError(f"no *.ckpt files in {ckpt_dir}")
    last = [f for f in files if f.name.startswith("last")]
    others = [f for f in files if not f.name.startswith("last")]
    newest = lambda fs: max(fs, key=lambda f: f.stat().st_mtime)
    if which == "best" and others:
        scored = [(loss, f) for f in others if (loss := checkpoint_val_loss(f)) is not None]
        return min(scored, key=lambda s: s[0])[1] if scored else newest(others)
    if (ckpt_dir / "last.ckpt").is_file():
        return ckpt_dir / "last.ckpt"
    if which == "best":
        log.info("%s has no best checkpoint; using the last one", ckpt_dir)
    return newest(last or files)


def _entry(path: Path, ckpt_dir: Path) -> CheckpointEntry:
    run_dir = ckpt_dir.parent if ckpt_dir.name == "checkpoints" else None
    name = run_dir.name if run_dir is not None else path.stem
    return CheckpointEntry(path=path, run_dir=run_dir, name=name)


def _hf_entry(item: str, dtype: Any, device: Any) -> CheckpointEntry:
    spec = inspect_hf(item, dtype, device)  # raises HFLoadError (a ValueError) with the reason
    name = strip_hf(item)
    label = "hf_" + Path(name.rstrip("/")).name if spec.local else "hf_" + name.replace("/", "_")
    return CheckpointEntry(path=Path(name), run_dir=None, name=label, hf=spec)


def resolve_checkpoints(
    paths: str | Path | Sequence[str | Path],
    which: str = "best",
    hf_dtype: Any = "fp32",
    device: Any = "cpu",
) -> list[CheckpointEntry]:
    """Checkpoint files for each path: a ``.ckpt`` file as it is, a folder searched for run
    folders (one checkpoint each, chosen by ``which``), ``hf:<name>`` a Hugging Face model
    (config, architecture and size checked for ``hf_dtype`` on ``device``). Raises
    :class:`CheckpointError` (or :class:`~sysout.adapters.hf_load.HFLoadError`) for a path that
    does not exist or holds no checkpoint, before anything is loaded."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if paths is None or (isinstance(paths, str) and not paths.strip()):
        raise CheckpointError("no checkpoints given: set checkpoints=<file, run or sweep folder>")
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise CheckpointError("no checkpoints given: set checkpoints=<file, run or sweep folder>")
    entries: list[CheckpointEntry] = []
    for item in items:
        if is_hf_name(str(item)):
            entries.append(_hf_entry(str(item), hf_dtype, device))
            continue
        path = Path(str(item)).expanduser()
        if not path.exists():
            raise CheckpointError(f"checkpoint path does not exist: {path.resolve()}")
        if path.is_file():
            entries.append(_entry(path, path.parent))
            continue
        ckpt_dirs = sorted({f.parent for f in path.rglob("*.ckpt")}, key=_natural_key)
        if not ckpt_dirs:
            raise CheckpointError(
                f"no checkpoints (*.ckpt) under {path.resolve()}: expected a checkpoint file, a "
                "run folder (with checkpoints/) or a sweep folder of run folders"
            )
        for ckpt_dir in ckpt_dirs:
            entries.append(_entry(select_checkpoint(ckpt_dir, which), ckpt_dir))
    unique: dict[Any, CheckpointEntry] = {}
    for e in entries:
        unique.setdefault(("hf", e.hf.name) if e.hf else e.path.resolve(), e)
    return list(unique.values())


def make_label(variant: str | None, name: str, taken: set[str] | None = None) -> str:
    """A short, file-name-safe, unique label: the run name, with the variant added when the
    name does not already contain it (sweep runs are named ``<num>_<variant>``)."""
    label = name if not variant or variant in name else f"{name}_{variant}"
    label = re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("_") or "checkpoint"
    if taken is not None:
        base, k = label, 2
        while label in taken:
            label, k = f"{base}-{k}", k + 1
        taken.add(label)
    return label


# ----------------------------------------------------------------------------- loading


def plain(value: Any) -> Any:
    """A config node as plain Python (dicts and lists resolved); anything else as it is."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def load_checkpoint(path: str | Path, weights_only: bool = True) -> LoadedCheckpoint:
    """Rebuild the GPT of a sysout checkpoint (or of a nanoGPT ``ckpt.pt``) on CPU with the
    strict loader of :mod:`sysout.model.checkpoint`; :class:`CheckpointError` says what is
    wrong with the file."""
    ckpt = load_gpt_checkpoint(path, weights_only=weights_only)
    return LoadedCheckpoint(ckpt.path, ckpt.model, ckpt.hparams, ckpt.step)


def load_entry(
    entry: CheckpointEntry, weights_only: bool = True, device: Any = "cpu"
) -> LoadedCheckpoint:
    """The model of a resolved entry: a sysout checkpoint (on CPU) or a Hugging Face model
    (in its checked dtype, on ``device``)."""
    if entry.hf is None:
        return load_checkpoint(entry.path, weights_only=weights_only)
    model = load_hf_model(entry.hf, entry.hf.dtype, device)
    hparams = {"hf": entry.hf.name, "dtype": str(entry.hf.dtype).removeprefix("torch.")}
    return LoadedCheckpoint(Path(entry.hf.name), model, hparams, None)

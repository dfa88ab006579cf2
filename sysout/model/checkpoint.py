"""Load a sysout checkpoint's GPT, strictly: the one loader evaluation, the lab and export use.

A sysout checkpoint is what ``train.py`` writes (Lightning: ``state_dict`` with the GPT's weights
under ``model.``, ``hyper_parameters`` with the ``model`` and ``attention`` config groups);
nanoGPT's ``ckpt.pt`` and the official systematic-outliers checkpoints load too. Every weight
must fit the model the hyper-parameters describe: a missing, unexpected or misshapen tensor is an
error that names it, never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sysout.model.gpt import GPT, build_gpt

# What Lightning (the module's attribute ``model``) and torch.compile put before the GPT's names.
_STATE_PREFIXES = ("model.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or loaded, with the reason in the message."""


@dataclass
class GPTCheckpoint:
    """A loaded GPT (eval mode, CPU), the hyper-parameters it was built from, its step."""

    path: Path
    model: GPT
    hparams: dict[str, Any] = field(default_factory=dict)
    step: int | None = None


def short_error(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _plain(value: Any) -> Any:
    """OmegaConf containers (which older checkpoints pickled) as plain Python."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def state_dict_problems(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], show: int = 4
) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches, a few of each."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and isinstance(found[k], torch.Tensor) and found[k].shape != v.shape
    ]
    problems = []
    for what, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if keys:
            more = f" (+{len(keys) - show} more)" if len(keys) > show else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:show])}{more}")
    return problems


def _gpt_state(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        for prefix in _STATE_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _load_into(path: Path, model: GPT, state: Mapping[str, Any]) -> GPT:
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"incompatible checkpoint: {path}: weights do not fit the model its "
            f"hyper_parameters describe ({'; '.join(problems)})"
        )
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


def _read(path: Path, weights_only: bool) -> Mapping[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # noqa: BLE001  (pickle, zip and torch errors all mean "unreadable")
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if weights_only and refused:  # a real pickle, holding a class we do not load blindly
            raise CheckpointError(
                f"checkpoint {path} stores a Python object ({refused.group(1)}) that a "
                "weights-only load refuses; if you trust the file, set weights_only=false"
            ) from err
        raise CheckpointError(
            f"not a PyTorch checkpoint: {path} ({type(err).__name__}: {short_error(err)})"
        ) from err
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(
            f"not a Lightning checkpoint: {path} holds a {type(ckpt).__name__}, not a dict"
        )
    return ckpt


def load_gpt_checkpoint(path: str | Path, weights_only: bool = True) -> GPTCheckpoint:
    """Rebuild the GPT of a sysout checkpoint (full or weights-only) or of a nanoGPT / official
    ``ckpt.pt``, on CPU, in eval mode.

    Raises :class:`CheckpointError` saying which of these it is: missing file, not a PyTorch
    file, not a Lightning checkpoint, not a sysout checkpoint (hyper_parameters without
    model/attention), incompatible (hyper-parameters this version cannot build, or weights that
    do not fit the model).
    """
    path = Path(path)
    ckpt = _read(path, weights_only)
    if "model_args" in ckpt and "model" in ckpt:  # nanoGPT's train.py format
        return _load_nanogpt(path, ckpt)
    if "state_dict" not in ckpt:
        raise CheckpointError(
            f"not a Lightning checkpoint: {path} has no 'state_dict' "
            f"(top-level keys: {sorted(map(str, ckpt))[:8]})"
        )
    hparams = {k: _plain(v) for k, v in dict(ckpt.get("hyper_parameters") or {}).items()}
    lacking = [k for k in ("model", "attention") if not isinstance(hparams.get(k), Mapping)]
    if lacking:
        raise CheckpointError(
            f"not a sysout checkpoint: {path}: its hyper_parameters lack {lacking} "
            f"(found {sorted(hparams)}); sysout checkpoints are written by train.py"
        )
    try:
        model = build_gpt(dict(hparams["model"]), dict(hparams["attention"]))
    except Exception as err:  # noqa: BLE001  (unknown variant, bad config values, ...)
        raise CheckpointError(
            f"incompatible checkpoint: {path}: its hyper_parameters do not build a model with "
            f"this version of sysout ({type(err).__name__}: {short_error(err)})"
        ) from err
    model = _load_into(path, model, _gpt_state(ckpt["state_dict"]))
    return GPTCheckpoint(path, model, hparams, ckpt.get("global_step"))


def _load_nanogpt(path: Path, ckpt: Mapping[str, Any]) -> GPTCheckpoint:
    """nanoGPT's ``ckpt.pt`` (softmax) and the official systematic-outliers checkpoints (same
    format; the variant from the saved config's ``model_type``, else from the keys)."""
    from sysout.model.convert import official_state_dict, official_variant

    model_args = dict(ckpt["model_args"])
    config = ckpt.get("config")
    model_type = config.get("model_type") if isinstance(config, Mapping) else None
    try:
        variant = official_variant(ckpt["model"], model_type)
        model = build_gpt(model_args, {"name": variant})
        state = official_state_dict(ckpt["model"], model.config.n_head)
        problems = state_dict_problems(model.state_dict(), state)
        if problems:
            raise ValueError("; ".join(problems))
        model.load_state_dict(state, strict=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(
            f"incompatible checkpoint: {path} (nanoGPT format): {short_error(err)}"
        ) from err
    hparams: dict[str, Any] = {"model": model_args, "attention": {"name": variant}}
    if model_type is not None:
        hparams["official_model_type"] = model_type
    return GPTCheckpoint(path, model.eval(), hparams, ckpt.get("iter_num"))

"""Load a Hugging Face causal LM for analysis: ``hf:<hub name or local folder>``.

Every check that needs no weights comes first, each with a clear message: a hub name that is not
cached while offline, a folder without ``config.json``, an architecture no adapter supports, a
model whose weights do not fit the device's memory (parameters counted on the meta device, no
weights read). Loading itself uses ``AutoModelForCausalLM`` with eager attention, so attention
weights can be captured, and the model's own tokenizer (``AutoTokenizer``) when it has one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}  # fmt: skip


class HFLoadError(ValueError):
    """A Hugging Face model that cannot be loaded, with the reason and what to do."""


@dataclass(frozen=True)
class HFModelSpec:
    """What ``hf:<name>`` points at, checked: the config, its size and its adapter family."""

    name: str  # the hub name or folder, as given
    config: Any  # transformers PretrainedConfig
    family: str
    num_parameters: int
    dtype: torch.dtype

    @property
    def local(self) -> bool:
        return Path(self.name).expanduser().is_dir()

    @property
    def bytes_needed(self) -> int:
        return self.num_parameters * torch.empty((), dtype=self.dtype).element_size()


def is_hf_name(entry: Any) -> bool:
    return isinstance(entry, str) and entry.startswith(HF_PREFIX)


def strip_hf(entry: str) -> str:
    name = entry[len(HF_PREFIX) :].strip() if is_hf_name(entry) else entry.strip()
    if not name:
        raise HFLoadError("empty model name after 'hf:'; use hf:<hub name> or hf:<local folder>")
    return name


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = str(name or "fp32").lower()
    if key not in DTYPES:
        raise HFLoadError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[key]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) answers a TCP
    connection: a machine without network learns it in seconds, where transformers would retry
    for half a minute and print each retry."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout).close()
    except OSError:
        return False
    return True


def load_config(name: str) -> Any:
    """The model's config, or an :class:`HFLoadError` saying why not."""
    from transformers import AutoConfig

    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise HFLoadError(f"hf:{name}: no such folder ({path.resolve()})")
        if not (path / "config.json").is_file():
            raise HFLoadError(
                f"hf:{name}: the folder {path.resolve()} has no config.json; expected a "
                "save_pretrained folder (config.json + model weights [+ tokenizer files])"
            )
    offline = _offline()
    try:
        if not looks_local and not offline:
            try:  # the local cache first: no network needed for a model already downloaded
                return AutoConfig.from_pretrained(name, local_files_only=True)
            except OSError:
                offline = not hub_reachable()
        return AutoConfig.from_pretrained(
            str(path) if looks_local else name, local_files_only=offline
        )
    except Exception as err:  # noqa: BLE001  (OSError, ValueError, hub errors)
        where = (
            "offline (HF_HUB_OFFLINE=1) and not in the local Hugging Face cache"
            if _offline()
            else "no network to the hub and not in the local Hugging Face cache"
            if offline
            else "not found on the hub or unreachable"
        )
        # Offline, an OSError only says again that it is not cached; any other cause is news.
        cause = (
            ""
            if offline and isinstance(err, OSError)
            else f" ({type(err).__name__}: {' '.join(str(err).split())[:300]})"
        )
        # What to do comes last: it is the line a person reads first when the script stops.
        raise HFLoadError(
            f"hf:{name}: cannot read its config: {where}{cause}. Give a local folder made "
            f"with save_pretrained, or download it first on a machine with network: "
            f"huggingface-cli download {name}"
        ) from err


def count_parameters(config: Any) -> int:
    """Parameters of the model a config describes, counted on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # Tied weights are one tensor: count each storage once.
    seen = {id(p): p.numel() for p in model.parameters()}
    return int(sum(seen.values()))


def device_memory(device: torch.device) -> int | None:
    """Bytes the device can hold: a GPU's total memory, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def inspect_hf(
    entry: str, dtype: str | torch.dtype | None = "fp32", device: torch.device | str = "cpu"
) -> HFModelSpec:
    """Check ``hf:<name>`` without loading weights: config readable, architecture supported, the
    weights in ``dtype`` fit ``device``'s memory."""
    from sysout.adapters.hf import HF_FAMILIES, supported_model_types

    name = strip_hf(entry)
    torch_dtype = resolve_dtype(dtype)
    config = load_config(name)
    model_type = getattr(config, "model_type", None)
    family = next((c.family for c in HF_FAMILIES if model_type in c.layout.model_types), None)
    if family is None:
        raise HFLoadError(
            f"hf:{name}: architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(supported_model_types())} (add an adapter in sysout/adapters/hf.py)"
        )
    n = count_parameters(config)
    spec = HFModelSpec(name, config, family, n, torch_dtype)
    device = torch.device(device)
    available = device_memory(device)
    if available is not None and spec.bytes_needed > available:
        raise HFLoadError(
            f"hf:{name}: {n / 1e9:.2f}B parameters in {torch_dtype} need "
            f"{spec.bytes_needed / 2**30:.1f} GiB, more than {device} has "
            f"({available / 2**30:.1f} GiB); use a smaller dtype (dtype=bf16) or a larger device"
        )
    return spec


def load_tokenizer(name: str) -> Any | None:
    """The model's own tokenizer, or None (with a warning) when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001
        log.warning("hf:%s: no tokenizer (%s)", name, " ".join(str(err).split())[:200])
        return None


def load_hf_model(
    entry: str | HFModelSpec,
    dtype: str | torch.dtype | None = "fp32",
    device: torch.device | str = "cpu",
    tokenizer: bool = True,
) -> nn.Module:
    """The checked model in eval mode on ``device``, eager attention, KV cache off; its tokenizer
    attached as ``model.sysout_tokenizer`` (what the HF adapters' ``encode``/``decode`` use)."""
    from transformers import AutoModelForCausalLM

    spec = entry if isinstance(entry, HFModelSpec) else inspect_hf(entry, dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.name, dtype=spec.dtype, attn_implementation="eager"
        )
    except Exception as err:  # noqa: BLE001
        raise HFLoadError(
            f"hf:{spec.name}: cannot load the weights ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]})"
        ) from err
    model.config.use_cache = False  # no KV cache: analyses run whole windows
    model = model.to(torch.device(device)).eval()
    model.sysout_tokenizer = load_tokenizer(spec.name) if tokenizer else None
    return model

"""Model adapters: one small class per architecture family, so every analysis (the outlier probe,
the lifecycle, compression, the mitigation probes) works on sysout's GPT and on pretrained models
alike. ``adapter_for(model)`` finds the adapter; see :mod:`sysout.adapters.base` for the contract.
"""

from sysout.adapters import hf as _hf  # noqa: F401  (registers the transformers families)
from sysout.adapters import sysout_gpt as _sysout_gpt  # noqa: F401  (registers the adapter)
from sysout.adapters.base import (
    AttentionCapture,
    BlockParts,
    ModelAdapter,
    StopForward,
    adapter_for,
    first_tensor,
    hidden_states_argument,
    is_conv1d,
    is_projection,
    linear_weight,
    register_adapter,
    replace_hidden_states,
    supported_families,
)
from sysout.adapters.hf import encode_text

__all__ = [
    "AttentionCapture",
    "BlockParts",
    "ModelAdapter",
    "StopForward",
    "adapter_for",
    "encode_text",
    "first_tensor",
    "hidden_states_argument",
    "is_conv1d",
    "is_projection",
    "linear_weight",
    "register_adapter",
    "replace_hidden_states",
    "supported_families",
]

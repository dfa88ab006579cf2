"""Conversions between sysout's GPT and other GPT-2 formats.

- Hugging Face GPT-2 -> sysout ``softmax`` GPT (:func:`sysout_from_hf_gpt2`) and back
  (:func:`hf_gpt2_from_sysout`). The two share nanoGPT's names; transformers' GPT-2 stores
  ``c_attn`` / ``c_proj`` / ``c_fc`` as ``Conv1D`` (weight ``[in, out]``), so those are transposed,
  and it always has biases (zeros for a sysout model trained with ``bias=False``).
- The activation travels with the weights: OpenAI's GPT-2 was trained with the tanh GELU
  (transformers' ``gelu_new``), nanoGPT/sysout use the exact one (``gelu``). An import keeps the
  model's own (``activation=gelu_tanh``); an export writes ``activation_function`` accordingly.
- Checkpoints of the official systematic-outliers repository (``gpt-2/model_*.py``, nanoGPT's
  ``ckpt.pt`` format): :func:`official_state_dict` maps their variant parameters to sysout's.
- :func:`gpt2_tokenizer`: the GPT-2 tokenizer for transformers, built offline from tiktoken's
  ``r50k_base`` file (ids identical to tiktoken's).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sysout.model.gpt import GPT, build_gpt

CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # transformers' Conv1D names
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}  # sysout -> transformers
SYSOUT_ACTIVATION = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
LAYER_NORM_EPS = 1e-5  # sysout's LayerNorm


class ConversionError(ValueError):
    """A model that has no exact counterpart in the other format, with the reason."""


def _is_conv1d_key(key: str) -> bool:
    return key.endswith(".weight") and key.removesuffix(".weight").endswith(CONV1D)


# ----------------------------------------------------------------------------- HF GPT-2 -> sysout
def sysout_config_from_hf(config: Any) -> dict[str, Any]:
    """The sysout ``model`` config of a transformers ``GPT2Config``; refuses what sysout's GPT
    cannot compute exactly."""
    act = getattr(config, "activation_function", "gelu_new")
    problems = []
    if act not in SYSOUT_ACTIVATION:
        problems.append(f"activation_function={act!r} (sysout has {sorted(SYSOUT_ACTIVATION)})")
    if abs(float(config.layer_norm_epsilon) - LAYER_NORM_EPS) > 1e-12:
        problems.append(f"layer_norm_epsilon={config.layer_norm_epsilon} (sysout uses 1e-5)")
    if config.n_inner not in (None, 4 * config.n_embd):
        problems.append(f"n_inner={config.n_inner} (sysout's MLP is 4 x n_embd)")
    if not getattr(config, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True")
    if getattr(config, "add_cross_attention", False):
        problems.append("add_cross_attention=True")
    if problems:
        raise ConversionError("this GPT-2 has no exact sysout equivalent: " + "; ".join(problems))
    return dict(
        block_size=int(config.n_positions),
        vocab_size=int(config.vocab_size),
        n_layer=int(config.n_layer),
        n_head=int(config.n_head),
        n_embd=int(config.n_embd),
        dropout=0.0,
        bias=True,
        activation=SYSOUT_ACTIVATION[act],
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
    )


def sysout_from_hf_gpt2(hf_model: torch.nn.Module) -> GPT:
    """A sysout ``softmax`` GPT with the weights of a transformers ``GPT2LMHeadModel``."""
    if getattr(hf_model.config, "model_type", None) != "gpt2":
        raise ConversionError(
            f"only GPT-2 converts to sysout's GPT, got model_type "
            f"{getattr(hf_model.config, 'model_type', None)!r}"
        )
    model = build_gpt(sysout_config_from_hf(hf_model.config), {"name": "softmax"})
    hf_state = hf_model.state_dict()
    state = {}
    tied = model.config.tie_embeddings
    for key, ref in model.state_dict().items():
        src = (
            hf_state["transformer.wte.weight"]
            if key == "lm_head.weight" and tied
            else hf_state[key]
        )
        state[key] = (src.t() if _is_conv1d_key(key) else src).to(ref.dtype).clone()
    model.load_state_dict(state, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- sysout -> HF GPT-2
def hf_gpt2_config(model: GPT) -> Any:
    """The transformers ``GPT2Config`` of a sysout ``softmax`` GPT."""
    from transformers import GPT2Config

    cfg = model.config
    if cfg.attention != "softmax":
        raise ConversionError(
            f"attention variant {cfg.attention!r} has no Hugging Face GPT-2 equivalent; only "
            "'softmax' checkpoints export (the other variants need sysout's own model code)"
        )
    if cfg.sink_tokens:
        raise ConversionError(
            f"model.sink_tokens={cfg.sink_tokens}: Hugging Face GPT-2 has no learned sink tokens, "
            "so the export would change the model's outputs"
        )
    eot = min(50256, cfg.vocab_size - 1)
    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=None,
        activation_function=HF_ACTIVATION[cfg.activation],
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=LAYER_NORM_EPS,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=cfg.tie_embeddings,
    )


def hf_gpt2_from_sysout(model: GPT) -> torch.nn.Module:
    """A transformers ``GPT2LMHeadModel`` computing the same logits as a sysout ``softmax`` GPT
    (biases zero when the sysout model has none)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(hf_gpt2_config(model)).eval()
    ours = {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}
    state = {}
    for key, ref in hf.state_dict().items():
        if key in ours:
            src = ours[key].t() if _is_conv1d_key(key) else ours[key]
        elif key.endswith(".bias"):  # sysout trained without biases: exactly zero
            src = torch.zeros_like(ref)
        else:
            raise ConversionError(f"no sysout weight for transformers' {key}")
        if src.shape != ref.shape:
            raise ConversionError(f"{key}: shape {tuple(src.shape)} vs {tuple(ref.shape)}")
        state[key] = src.detach().to(ref.dtype).clone()
    hf.load_state_dict(state, strict=True)
    return hf


# ----------------------------------------------------------------------------- official checkpoints
# model_type of the official train.py config -> sysout variant.
OFFICIAL_VARIANTS = {
    "gpt2_default": "softmax",
    "gpt2_attn_bias": "kv_bias",
    "gpt2_cabias": "context_bias",
    "gpt2_vbias": "value_bias",
    "gpt2_ca_softmax": "ca_scaling",
    "gpt2_sigmoid": "sigmoid",
}


def official_variant(state: Mapping[str, Tensor], model_type: str | None = None) -> str:
    """The sysout variant of an official checkpoint: from its ``model_type`` when saved, else
    from its keys (``k_bias`` alone cannot tell attn_bias from cabias: then ``model_type`` is
    required)."""
    if model_type is not None:
        if model_type not in OFFICIAL_VARIANTS:
            raise ConversionError(
                f"unknown official model_type {model_type!r}; known: {sorted(OFFICIAL_VARIANTS)}"
            )
        return OFFICIAL_VARIANTS[model_type]
    keys = [k.removeprefix("_orig_mod.") for k in state]
    if any(".attn.context_scale." in k for k in keys):
        return "ca_scaling"
    if any(k.endswith(".attn.k_bias") for k in keys):
        raise ConversionError(
            "the checkpoint has attn.k_bias/v_bias, which both gpt2_attn_bias (kv_bias) and "
            "gpt2_cabias (context_bias) save; its config has no model_type to tell them apart: "
            "pass the variant explicitly"
        )
    if any(k.endswith(".attn.v_bias") for k in keys):
        return "value_bias"
    return "softmax"


def official_state_dict(state: Mapping[str, Tensor], n_head: int) -> dict[str, Tensor]:
    """An official checkpoint's state dict with its variant parameters renamed and reshaped to
    sysout's: ``attn.k_bias`` / ``attn.v_bias`` [1, H, 1, d] -> ``attn.variant.key_bias`` /
    ``value_bias`` [H, d]; the value-bias model's ``attn.v_bias`` [C] -> ``value_bias`` [H, d]
    (the SPEC's per-head reading); ``attn.context_scale.0.*`` -> ``attn.variant.scale_proj.*``
    (the official S = 2 sigmoid(x W + b) is sysout's ca_scaling)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("_orig_mod.")
        if key.endswith(".attn.bias") and value.dim() == 4:  # nanoGPT's causal-mask buffer
            continue
        prefix, _, leaf = key.rpartition(".attn.")
        if leaf in ("k_bias", "v_bias"):
            name = "key_bias" if leaf == "k_bias" else "value_bias"
            out[f"{prefix}.attn.variant.{name}"] = value.reshape(n_head, -1)
        elif leaf.startswith("context_scale.0."):
            out[f"{prefix}.attn.variant.scale_proj.{leaf.rpartition('.')[2]}"] = value
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- tokenizer
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@contextmanager
def _env(key: str, value: str) -> Any:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def r50k_file(tiktoken_cache_dir: str | Path | None = None) -> Path:
    """tiktoken's cached ``r50k_base`` file (named by the sha1 of its URL), or a clear error."""
    folder = tiktoken_cache_dir or os.environ.get("TIKTOKEN_CACHE_DIR")
    if not folder:
        raise FileNotFoundError(
            "no tiktoken cache: set TIKTOKEN_CACHE_DIR (e.g. ../shared/tiktoken)"
        )
    path = Path(folder) / hashlib.sha1(R50K_URL.encode()).hexdigest()
    if not path.is_file():
        raise FileNotFoundError(f"no r50k_base file in the tiktoken cache {folder} ({path.name})")
    return path


def gpt2_tokenizer(tiktoken_cache_dir: str | Path | None = None) -> Any:
    """GPT-2's tokenizer as a transformers ``PreTrainedTokenizerFast`` (50,257 entries, ids equal
    to tiktoken's ``r50k_base``), built offline from tiktoken's file."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = r50k_file(tiktoken_cache_dir)
    # tiktoken caches any file it loads under the sha1 of its path: keep it out of the cache.
    with _env("TIKTOKEN_CACHE_DIR", ""):
        backend = TikTokenConverter(vocab_file=str(path), pattern=GPT2_PATTERN).converted()
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eot,
        bos_token=eot,
        unk_token=eot,
        model_max_length=1024,
    )

"""Adapters of Hugging Face ``transformers`` causal LMs, one per architecture family.

The families differ only in module names and in how q/k/v leave the projections, so each is one
:class:`HFLayout` row: where the blocks, norms, MLP stages and attention live (dotted paths, block
paths relative to a block), and which q/k/v layout the attention uses:

- ``separate``: ``q_proj`` / ``k_proj`` / ``v_proj`` (Llama, Mistral, Qwen2, OPT, Phi), keys and
  values repeated to the query heads under grouped-query attention;
- ``gpt2``: one fused ``Conv1D`` ``c_attn`` whose output is ``[q | k | v]``, each C wide;
- ``neox``: one fused ``query_key_value`` whose output is per head ``[q_h | k_h | v_h]``.

q/k/v are taken at the projections' outputs (before rotary embeddings, which keep norms; OPT's
query before its 1/sqrt(d) scaling; Phi's after its optional q/k LayerNorm). The attention weights
are the eager attention module's second output, so a model running SDPA or flash attention is
switched to eager (with a warning) the first time attention is captured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sysout.adapters.base import (
    AttentionCapture,
    BlockParts,
    ModelAdapter,
    first_tensor,
    register_adapter,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFLayout:
    """Where one architecture family keeps what the analyses need."""

    model_types: tuple[str, ...]  # config.model_type values of the family
    blocks: str  # the ModuleList of blocks, from the model
    final_norm: str | None  # from the model
    attn: str  # the rest from a block
    down_proj: str
    up_proj: str
    gate_proj: str | None
    act: str | None
    attn_norm: str
    mlp_norm: str | None  # None: the MLP reads the attention norm's output (Phi's parallel block)
    qkv: str  # "separate" | "gpt2" | "neox"
    out_proj: str | None = None  # the attention's output projection, from the attention module


def _get(root: nn.Module, path: str | None) -> nn.Module | None:
    """The submodule at a dotted path, None for no path or a module the model lacks (an OPT
    without a final norm)."""
    if path is None:
        return None
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def encode_text(tokenizer: Any, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``text`` by a transformers tokenizer. Without special tokens by default:
    every anchor script (An et al.'s ``existence_*`` / ``lifecycle_*`` / ``pos_*`` and
    ``lib/load_data.py``, Sun et al.'s ``main_llm.py``) tokenizes with
    ``add_special_tokens=False``, so their token 0 is the first text token, not LLaMA's ``<s>``;
    ``add_special_tokens=True`` adds what the tokenizer adds by default."""
    ids = tokenizer(text, add_special_tokens=bool(add_special_tokens), verbose=False)["input_ids"]
    return [int(i) for i in ids]


def _heads(x: Tensor, n_heads: int) -> Tensor:
    """[B, T, n*d] -> [B, n, T, d]."""
    b, t, width = x.shape
    return x.view(b, t, n_heads, width // n_heads).transpose(1, 2)


def _repeat(x: Tensor, groups: int) -> Tensor:
    """Key/value heads repeated to the query heads (grouped-query attention)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


class HFCausalLMAdapter(ModelAdapter):
    """A ``transformers`` ``*ForCausalLM``; subclasses only set ``family``, ``description`` and
    ``layout``."""

    layout: ClassVar[HFLayout]

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        return (
            getattr(config, "model_type", None) in cls.layout.model_types
            and hasattr(model, "get_output_embeddings")
            and _get(model, cls.layout.blocks) is not None
        )

    # --- structure ------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def name(self) -> str:
        return str(getattr(self.config, "_name_or_path", "") or self.config.model_type)

    @property
    def max_length(self) -> int | None:
        for key in ("n_positions", "max_position_embeddings"):
            value = getattr(self.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.get_submodule(self.layout.blocks))

    def parts(self, index: int) -> BlockParts:
        b, lay = self.blocks()[index], self.layout
        return BlockParts(
            block=b,
            attn=b.get_submodule(lay.attn),
            down_proj=b.get_submodule(lay.down_proj),
            up_proj=_get(b, lay.up_proj),
            gate_proj=_get(b, lay.gate_proj),
            act=_get(b, lay.act),
            attn_norm=_get(b, lay.attn_norm),
            mlp_norm=_get(b, lay.mlp_norm),
            attn_out_proj=_get(b.get_submodule(lay.attn), lay.out_proj),
        )

    @property
    def attention_residual(self) -> bool:
        # Phi's parallel block reads one norm; GPT-NeoX may add attention and MLP in parallel.
        parallel = bool(getattr(self.config, "use_parallel_residual", False))
        return self.layout.mlp_norm is not None and not parallel

    @property
    def output_is_residual(self) -> bool:
        return bool(getattr(self.config, "do_layer_norm_before", True))  # OPT-350m: post-LN

    def final_norm(self) -> nn.Module | None:
        return _get(self.model, self.layout.final_norm)

    def output_head(self) -> nn.Module | None:
        return self.model.get_output_embeddings()

    # --- tokenizer --------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, attached by :func:`sysout.adapters.hf_load.load_hf_model`
        (adapters are rebuilt per call, so it lives on the model)."""
        return getattr(self.model, "sysout_tokenizer", None)

    def decode(self, token_id: int) -> str:
        tok = self.tokenizer
        return super().decode(token_id) if tok is None else tok.decode([int(token_id)])

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; no BOS by default, as the anchors' analyses feed text."""
        tok = self.tokenizer
        if tok is None:
            raise RuntimeError(f"{self.name} has no tokenizer (load it with hf_load.load_hf_model)")
        return encode_text(tok, text, add_special_tokens)

    # --- forward ------------------------------------------------------------------------------
    def logits(self, idx: Tensor) -> Tensor:
        return self.model(input_ids=idx, use_cache=False).logits

    def ensure_eager(self) -> None:
        """Attention weights exist only under eager attention: switch to it (same function,
        materialised weights) and say so; a clear error when the model cannot switch."""
        impl = getattr(self.config, "_attn_implementation", "eager")
        if impl == "eager":
            return
        try:
            self.model.set_attn_implementation("eager")
        except Exception as err:  # noqa: BLE001
            raise RuntimeError(
                f"{self.name} runs attn_implementation={impl!r}, which returns no attention "
                f"weights, and cannot switch to 'eager' ({err}); load it with "
                "attn_implementation='eager'"
            ) from err
        log.warning("%s: attention switched from %r to 'eager' to capture weights", self.name, impl)

    def _qkv_sources(self, attn: nn.Module) -> dict[str, nn.Module]:
        lay = self.layout.qkv
        if lay == "gpt2":
            return {"qkv": attn.c_attn}
        if lay == "neox":
            return {"qkv": attn.query_key_value}
        if getattr(attn, "qk_layernorm", False):  # Phi: q/k as the scores see them
            return {"q": attn.q_layernorm, "k": attn.k_layernorm, "v": attn.v_proj}
        return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}

    def _split(self, seen: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B, H, T, d] from the captured projection outputs."""
        cfg = self.config
        n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        if self.layout.qkv == "gpt2":
            q, k, v = seen["qkv"].split(seen["qkv"].shape[-1] // 3, dim=-1)
            return _heads(q, n_heads), _heads(k, n_heads), _heads(v, n_heads)
        if self.layout.qkv == "neox":
            q, k, v = _heads(seen["qkv"], n_heads).chunk(3, dim=-1)
            return q, k, v
        out = []
        for role in ("q", "k", "v"):
            x = seen[role]
            if x.dim() == 3:
                n = n_heads if role == "q" else int(getattr(cfg, "num_key_value_heads", n_heads))
                x = _heads(x, n)
            out.append(_repeat(x, n_heads // x.shape[1]))
        return out[0], out[1], out[2]

    def capture_attention(
        self, index: int, callback: Callable[[AttentionCapture], None]
    ) -> list[RemovableHandle]:
        self.ensure_eager()
        attn = self.parts(index).attn
        seen: dict[str, Tensor] = {}
        handles = []
        for role, module in self._qkv_sources(attn).items():

            def keep(_m: nn.Module, _a: Any, out: Any, role: str = role) -> None:
                seen[role] = first_tensor(out)

            handles.append(module.register_forward_hook(keep))

        def done(_m: nn.Module, _a: Any, out: Any) -> None:
            weights = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
            if weights is None:
                raise RuntimeError(
                    f"{self.name}: layer {index}'s attention returned no weights; it must run "
                    "with attn_implementation='eager'"
                )
            q, k, v = self._split(seen)
            seen.clear()
            w = weights.detach()
            w = w if w.dtype == torch.float64 else w.float()
            callback(
                AttentionCapture(
                    q=q,
                    k=k,
                    v=v,
                    weights=lambda: w,
                    key_mass=lambda: w.sum(dim=2),
                    out_proj=_get(attn, self.layout.out_proj),
                )
            )

        handles.append(attn.register_forward_hook(done))
        return handles


def _family(
    family: str, description: str, layout: HFLayout
) -> Callable[[type[HFCausalLMAdapter]], type[HFCausalLMAdapter]]:
    def make(cls: type[HFCausalLMAdapter]) -> type[HFCausalLMAdapter]:
        cls.family, cls.description, cls.layout = family, description, layout
        return register_adapter(cls)

    return make


_LLAMA_LIKE = dict(
    blocks="model.layers",
    final_norm="model.norm",
    attn="self_attn",
    down_proj="mlp.down_proj",
    up_proj="mlp.up_proj",
    gate_proj="mlp.gate_proj",
    act="mlp.act_fn",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    qkv="separate",
    out_proj="o_proj",
)


@_family(
    "hf_gpt2",
    "transformers GPT-2",
    HFLayout(
        model_types=("gpt2",),
        blocks="transformer.h",
        final_norm="transformer.ln_f",
        attn="attn",
        down_proj="mlp.c_proj",
        up_proj="mlp.c_fc",
        gate_proj=None,
        act="mlp.act",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        qkv="gpt2",
        out_proj="c_proj",
    ),
)
class HFGPT2Adapter(HFCausalLMAdapter):
    pass


@_family(
    "hf_llama",
    "transformers Llama, Mistral, Qwen2",
    HFLayout(model_types=("llama", "mistral", "qwen2"), **_LLAMA_LIKE),
)
class HFLlamaAdapter(HFCausalLMAdapter):
    pass


@_family(
    "hf_opt",
    "transformers OPT",
    HFLayout(
        model_types=("opt",),
        blocks="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        attn="self_attn",
        down_proj="fc2",
        up_proj="fc1",
        gate_proj=None,
        act="activation_fn",
        attn_norm="self_attn_layer_norm",
        mlp_norm="final_layer_norm",
        qkv="separate",
        out_proj="out_proj",
    ),
)
class HFOPTAdapter(HFCausalLMAdapter):
    pass


@_family(
    "hf_gpt_neox",
    "transformers GPT-NeoX (Pythia)",
    HFLayout(
        model_types=("gpt_neox",),
        blocks="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attn="attention",
        down_proj="mlp.dense_4h_to_h",
        up_proj="mlp.dense_h_to_4h",
        gate_proj=None,
        act="mlp.act",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        qkv="neox",
        out_proj="dense",
    ),
)
class HFGPTNeoXAdapter(HFCausalLMAdapter):
    pass


@_family(
    "hf_phi",
    "transformers Phi (parallel attention and MLP)",
    HFLayout(
        model_types=("phi",),
        blocks="model.layers",
        final_norm="model.final_layernorm",
        attn="self_attn",
        down_proj="mlp.fc2",
        up_proj="mlp.fc1",
        gate_proj=None,
        act="mlp.activation_fn",
        attn_norm="input_layernorm",
        mlp_norm=None,
        qkv="separate",
        out_proj="dense",
    ),
)
class HFPhiAdapter(HFCausalLMAdapter):
    pass


HF_FAMILIES: tuple[type[HFCausalLMAdapter], ...] = (
    HFGPT2Adapter,
    HFLlamaAdapter,
    HFOPTAdapter,
    HFGPTNeoXAdapter,
    HFPhiAdapter,
)


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` an HF adapter handles."""
    return [t for cls in HF_FAMILIES for t in cls.layout.model_types]

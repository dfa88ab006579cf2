"""GPT-2 in the shape of nanoGPT (same module names, so nanoGPT checkpoints load unchanged).

The one difference: attention is delegated to a variant from :mod:`sysout.attention`, which owns
its parameters (under ``transformer.h.N.attn.variant``) and its implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sysout.attention import AttentionVariant, build_variant, get_variant_class

# sysout's MLP activation names -> the module computing it.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": lambda: nn.GELU(approximate="none"),  # nanoGPT's exact (erf) GELU
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # OpenAI GPT-2's weights ("gelu_new")
    "relu": nn.ReLU,  # Guo et al. 2024's Bigram-Backcopy models
}
# How parameters start: GPT-2's N(0, 0.02) with scaled residual projections, or each PyTorch
# module's own default (nn.Embedding N(0, 1), nn.Linear Kaiming-uniform), as Guo et al. train.
INIT_SCHEMES = ("gpt2", "torch_default")


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False  # biases in Linear layers (and LayerNorms unless norm_bias says)
    # LayerNorm biases: None follows ``bias``; Guo et al.'s models have LayerNorm biases but no
    # Linear biases (norm_bias=true, bias=false).
    norm_bias: bool | None = None
    # The output head shares the token embedding (GPT-2) or has its own matrix (Guo et al.).
    tie_embeddings: bool = True
    init: str = "gpt2"  # one of INIT_SCHEMES
    attention: str = "softmax"
    attention_impl: str = "auto"
    attention_options: dict[str, Any] = field(default_factory=dict)
    # MLP activation: "gelu" (exact erf form, nanoGPT's), "gelu_tanh" (the tanh approximation
    # OpenAI's GPT-2 weights were trained with; transformers' "gelu_new") or "relu" (Guo et
    # al.'s). Imported weights must run with the activation they were trained with.
    activation: str = "gelu"
    # Learned tokens prepended to every sequence before block 0 and dropped after ln_f (Sun et
    # al. 2024's GPT-2 with a sink token, model_sink.py: num_reg = 1). Unlike kv_bias's extra
    # key/value slot they are whole tokens: each layer computes their q, k, v and MLP output.
    sink_tokens: int = 0

    def __post_init__(self) -> None:
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                f"choose n_head among the divisors of n_embd"
            )
        if int(self.sink_tokens) < 0:
            raise ValueError(f"model.sink_tokens must be >= 0, got {self.sink_tokens}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        self.attention_options = dict(self.attention_options or {})
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"model.init must be one of {INIT_SCHEMES}, got {self.init!r}")
        for key in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"model.{key} must be true or false, got {getattr(self, key)!r}")
        if self.norm_bias is not None and not isinstance(self.norm_bias, bool):
            raise ValueError(f"model.norm_bias must be true, false or null, got {self.norm_bias!r}")

    @property
    def layer_norm_bias(self) -> bool:
        """Whether LayerNorms have a bias: ``norm_bias``, or ``bias`` when that is None."""
        return self.bias if self.norm_bias is None else self.norm_bias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        options = dict(config.attention_options)
        if get_variant_class(config.attention).traits.uses_block_size:
            # A formula fixed at the training length (clipped softmax's gamma = -alpha / T).
            options.setdefault("block_size", config.block_size)
        self.variant: AttentionVariant = build_variant(
            config.attention, config.n_head, config.n_embd, config.attention_impl, **options
        )

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project x [B, T, C] to q, k, v of shape [B, H, T, d]."""
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        return tuple(z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.heads(x)
        o = self.variant(q, k, v, x)
        return self.resid_dropout(self.c_proj(o.transpose(1, 2).contiguous().view(b, t, c)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        # c_proj is where weight outliers live; its input (after the activation) is probed too.
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.layer_norm_bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.layer_norm_bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.layer_norm_bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        if config.sink_tokens:  # the official name and shape ([1, num_reg, C], N(0, 0.02))
            self.reg_token = nn.Parameter(torch.zeros(1, config.sink_tokens, config.n_embd))
            nn.init.normal_(self.reg_token, mean=0.0, std=0.02)
        if config.init == "gpt2":
            self.apply(self._init_weights)
            # GPT-2: residual projections scaled by 1/sqrt(2 L).
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        elif config.tie_embeddings:
            # PyTorch's defaults, except that the tied matrix is the embedding's (N(0, 1)), as
            # in Guo et al.'s code, which ties the head to the embedding, not the reverse.
            nn.init.normal_(self.transformer.wte.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits [B, T, V] and, given targets, the mean cross-entropy (targets -1 are ignored)."""
        _, t = idx.shape
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} exceeds block_size {self.config.block_size}")
        pos = torch.arange(t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        sinks = self.config.sink_tokens
        if sinks:  # no position embedding for them, as in the official code
            x = torch.cat([self.reg_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x)[:, sinks:])
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss

    def load_nanogpt_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> None:
        """Load a nanoGPT checkpoint's ``model`` state dict.

        Drops the ``_orig_mod.`` prefix of compiled models and the causal-mask buffers
        (``attn.bias``) that non-flash nanoGPT versions saved.
        """
        cleaned = {}
        for key, value in state_dict.items():
            key = key.removeprefix("_orig_mod.")
            if key.endswith(".attn.bias") and value.dim() == 4:
                continue
            cleaned[key] = value
        self.load_state_dict(cleaned, strict=strict)


def build_gpt(model: dict[str, Any], attention: dict[str, Any] | None = None) -> GPT:
    """Build a GPT from the ``model`` and ``attention`` config groups (plain dicts)."""
    model = {k: v for k, v in dict(model).items() if k != "name"}
    if attention is not None:
        attention = dict(attention)
        model.update(
            attention=attention.get("name", "softmax"),
            attention_impl=attention.get("impl", "auto"),
            attention_options=dict(attention.get("options") or {}),
        )
    unknown = set(model) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown model config keys {sorted(unknown)}; "
            f"valid keys: {sorted(GPTConfig.__dataclass_fields__)}"
        )
    return GPT(GPTConfig(**model))

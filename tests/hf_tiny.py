"""Tiny random ``transformers`` causal LMs, one per supported family, and a planted outlier.

``plant(model)`` writes, into the weights, the paper's picture (nothing is trained):

- a constant direction: every token's embedding is -1 in dim ``D0``, the planted token's +1;
- block ``BORN``'s MLP reads that direction through one intermediate channel ``J`` (zero for
  ordinary tokens, an ordinary value at the planted token) and its down-projection column ``J``
  has one large entry, in row ``DIM``: a massive activation at (token ``PLANTED``, dim ``DIM``);
- block ``SINK_LAYER``'s head ``SINK_HEAD`` keys on dim ``DIM`` and queries the constant
  direction: every query parks on the planted token;
- the last block's MLP reads dim ``DIM`` (offset by the constant direction, so ordinary tokens
  give nothing) and writes minus the massive value back: cancelled.
"""

from __future__ import annotations

import torch
import transformers as T
from torch import nn

from sysout.adapters import adapter_for, linear_weight

VOCAB, WIDTH, HEADS, LAYERS, SEQ = 96, 32, 4, 4, 16
D0, DIM, J, BORN, SINK_LAYER, SINK_HEAD, PLANTED = 3, 7, 5, 1, 2, 1, 60
MASSIVE = 2000.0

FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "opt", "gpt_neox", "phi"]


def tiny_config(kind: str) -> T.PretrainedConfig:
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    rope = dict(
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        max_position_embeddings=64,
    )
    if kind == "gpt2":
        cfg = T.GPT2Config(
            n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH, n_positions=64, **common,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
    elif kind in ("llama", "mistral", "qwen2"):
        cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}[kind]
        cfg = cls(**rope, num_key_value_heads=2, **common)
    elif kind == "opt":
        cfg = T.OPTConfig(
            num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=WIDTH,
            ffn_dim=2 * WIDTH, max_position_embeddings=64, word_embed_proj_dim=WIDTH,
            dropout=0.0, **common,
        )  # fmt: skip
    elif kind == "gpt_neox":
        cfg = T.GPTNeoXConfig(**rope, **common)
    elif kind == "phi":
        cfg = T.PhiConfig(**rope, **common)
    else:
        raise ValueError(kind)
    return cfg


def tiny_model(kind: str, seed: int = 0, attn: str = "eager") -> nn.Module:
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config(kind), attn_implementation=attn)
    return model.float().eval()


def head_rows(model: nn.Module, layer: int, role: str, head: int) -> tuple[torch.Tensor, slice]:
    """The ``[out, in]`` weight holding ``role`` (q or k) of query head ``head``, and its rows."""
    attn = adapter_for(model).parts(layer).attn
    d = WIDTH // HEADS
    kind = model.config.model_type
    if kind == "gpt2":
        off = {"q": 0, "k": WIDTH}[role]
        return linear_weight(attn.c_attn), slice(off + head * d, off + (head + 1) * d)
    if kind == "gpt_neox":
        off = head * 3 * d + {"q": 0, "k": d}[role]
        return linear_weight(attn.query_key_value), slice(off, off + d)
    if role == "k":  # grouped-query attention: the key head this query head reads
        head = head * getattr(model.config, "num_key_value_heads", HEADS) // HEADS
    proj = getattr(attn, f"{role}_proj")
    return linear_weight(proj), slice(head * d, (head + 1) * d)


@torch.no_grad()
def plant(model: nn.Module) -> nn.Module:
    """Write the outlier picture of the module docstring into ``model`` (in place)."""
    ad = adapter_for(model)
    emb = model.get_input_embeddings().weight
    emb[:, D0] = -1.0
    emb[PLANTED, D0] = 1.0
    scale = WIDTH**0.5  # a norm maps the +-1 direction to about +-sqrt(C)

    def mlp_channel(layer: int, reads: tuple[int, ...], writes: int, value: float) -> None:
        p = ad.parts(layer)
        # A steep gate: silu(3z) z is ~0 for an ordinary z ~ -sqrt(C) (silu(z) z is not).
        for proj, gain in ((p.up_proj, 1.0), (p.gate_proj, 3.0)):
            if proj is None:
                continue
            w = linear_weight(proj)
            w[J] = 0.0
            w[J, list(reads)] = gain
            if getattr(proj, "bias", None) is not None:
                proj.bias[J] = 0.0
        # The activation's value at the planted token decides the weight that makes `value`.
        x = torch.tensor([scale])
        a = p.act(3.0 * x) * x if p.gate_proj is not None else p.act(x)
        down = linear_weight(p.down_proj)
        down[:, J] = 0.0
        down[writes, J] = value / float(a)

    mlp_channel(BORN, (D0,), DIM, MASSIVE)
    # Reading DIM + D0: ordinary tokens sit near -sqrt(C) there (the activation gives ~0),
    # the massive token near +sqrt(C).
    mlp_channel(LAYERS - 1, (DIM, D0), DIM, -MASSIVE)
    d = WIDTH // HEADS
    u = d // 2 - 1  # the slowest rotary frequency: rotary models keep the alignment
    wk, rk = head_rows(model, SINK_LAYER, "k", SINK_HEAD)
    wq, rq = head_rows(model, SINK_LAYER, "q", SINK_HEAD)
    wk[rk.start + u, DIM] = 1.5
    wq[rq.start + u, D0] = -1.5
    # The cancelling weight, exactly: what enters the last block at (0, DIM) over what its
    # channel J gives there (a norm maps the massive vector to about, not exactly, sqrt(C)).
    seen: dict[str, torch.Tensor] = {}
    last = ad.parts(LAYERS - 1)
    hooks = [
        last.block.register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("h", a[0] if a else kw["hidden_states"]),
            with_kwargs=True,
        ),
        last.down_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("a", a[0])),
    ]
    ad.run(planted_input(batch=1))
    for h in hooks:
        h.remove()
    a = seen["a"].reshape(-1, seen["a"].shape[-1])  # OPT's MLP sees [B*T, C]
    linear_weight(last.down_proj)[DIM, J] = -seen["h"][0, 0, DIM] / a[0, J]
    return model


def planted_input(batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Token ids [B, SEQ]: the planted token first, ordinary tokens after."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, PLANTED, (batch, SEQ), generator=g)
    idx[:, 0] = PLANTED
    return idx


TOKENIZER_WORDS = ["<unk>", "<s>", "</s>", "Summer", "is", "warm", ".", "Winter", "cold"]


def tiny_tokenizer():
    """A word-level tokenizer (ids < VOCAB) that, like LLaMA's, puts ``<s>`` (id 1) first by
    default; built offline with ``tokenizers``."""
    import tokenizers as tk
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing

    vocab = {w: i for i, w in enumerate(TOKENIZER_WORDS)}
    core = tk.Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    core.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return T.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )

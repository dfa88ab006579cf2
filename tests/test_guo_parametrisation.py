"""Guo et al. 2024's parametrisation as sysout options, each checked against a hand-written model.

The reference below is written from the description of Guo et al.'s Bigram-Backcopy transformer
(pre-norm blocks; separate q/k/v/o projections without bias; LayerNorm with bias; a ReLU MLP of
width 4C without bias; learned positions; an untied output head; PyTorch's default init) and
their optimisers (AdamW betas (0.9, 0.99) or SGD with momentum 0.9, weight decay on every
parameter, a constant rate, no clipping). sysout's GPT with ``activation=relu``,
``tie_embeddings=false``, ``init=torch_default``, ``norm_bias=true``, ``bias=false`` and the
matching ``optim`` options must compute the same logits and take the same steps.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sysout.model import GPT, GPTConfig
from sysout.training.optim import OptimConfig, build_optimizer, decayed_names, lr_factor

V, C, T, L = 11, 16, 9, 3


class RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(C, C, bias=False) for _ in range(4))
        self.w1, self.w2 = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)
        self.attn_norm, self.ff_norm = nn.LayerNorm(C), nn.LayerNorm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(x)
        s = self.wq(h) @ self.wk(h).transpose(-1, -2) / math.sqrt(C)  # one head
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        x = x + self.wo(torch.softmax(s, dim=-1) @ self.wv(h))
        return x + self.w2(torch.relu(self.w1(self.ff_norm(x))))


class RefModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, C), nn.Embedding(T, C)
        self.layers = nn.ModuleList(RefBlock() for _ in range(L))
        self.norm, self.out = nn.LayerNorm(C), nn.Linear(C, V, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.out(self.norm(x))


GUO = dict(
    vocab_size=V,
    block_size=T,
    n_layer=L,
    n_head=1,
    n_embd=C,
    bias=False,
    norm_bias=True,
    activation="relu",
    tie_embeddings=False,
    init="torch_default",
)


def _copy_reference_into(ref: RefModel, gpt: GPT) -> None:
    """Load the reference's weights into sysout's GPT (q, k, v stacked into c_attn)."""
    state = {
        "transformer.wte.weight": ref.tok.weight,
        "transformer.wpe.weight": ref.pos.weight,
        "transformer.ln_f.weight": ref.norm.weight,
        "transformer.ln_f.bias": ref.norm.bias,
        "lm_head.weight": ref.out.weight,
    }
    for i, b in enumerate(ref.layers):
        p = f"transformer.h.{i}."
        state |= {
            p + "attn.c_attn.weight": torch.cat([b.wq.weight, b.wk.weight, b.wv.weight]),
            p + "attn.c_proj.weight": b.wo.weight,
            p + "mlp.c_fc.weight": b.w1.weight,
            p + "mlp.c_proj.weight": b.w2.weight,
            p + "ln_1.weight": b.attn_norm.weight,
            p + "ln_1.bias": b.attn_norm.bias,
            p + "ln_2.weight": b.ff_norm.weight,
            p + "ln_2.bias": b.ff_norm.bias,
        }
    gpt.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)


def _pair() -> tuple[RefModel, GPT]:
    torch.manual_seed(0)
    ref = RefModel().double()
    gpt = GPT(GPTConfig(**GUO)).double()
    _copy_reference_into(ref, gpt)
    return ref, gpt


def test_guo_model_computes_the_reference_logits():
    ref, gpt = _pair()
    idx = torch.randint(0, V, (3, T))
    torch.testing.assert_close(gpt(idx)[0], ref(idx), rtol=0, atol=1e-12)
    assert gpt.lm_head.weight is not gpt.transformer.wte.weight  # untied
    assert isinstance(gpt.transformer.h[0].mlp.act, nn.ReLU)


@pytest.mark.parametrize(
    "name, make_ref",
    [
        (
            "adamw",
            lambda params: torch.optim.AdamW(
                params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1
            ),
        ),
        ("sgd", lambda params: torch.optim.SGD(params, lr=0.3, momentum=0.9, weight_decay=0.1)),
    ],
)
def test_optimiser_with_decay_on_every_parameter_steps_like_the_reference(name, make_ref):
    ref, gpt = _pair()
    lr = 1e-2 if name == "adamw" else 0.3
    cfg = OptimConfig(
        name=name,
        lr=lr,
        min_lr=lr,
        betas=(0.9, 0.99),
        momentum=0.9,
        weight_decay=0.1,
        decay_params="all",
        schedule="constant",
        warmup_steps=0,
    )
    ours, theirs = build_optimizer(gpt, cfg), make_ref(ref.parameters())
    assert type(ours) is type(theirs)
    assert all(g["weight_decay"] == 0.1 for g in ours.param_groups if g["params"])
    for _ in range(3):  # momentum and Adam moments matter from the second step on
        idx, tgt = torch.randint(0, V, (4, T)), torch.randint(0, V, (4, T))
        for opt, logits in ((ours, lambda i: gpt(i)[0]), (theirs, ref)):
            opt.zero_grad()
            F.cross_entropy(logits(idx).flatten(0, 1), tgt.flatten()).backward()
            opt.step()
    probe = torch.randint(0, V, (2, T))
    torch.testing.assert_close(gpt(probe)[0], ref(probe), rtol=0, atol=1e-10)


def test_decay_on_matrices_keeps_nanogpt_rule_and_all_takes_every_parameter():
    gpt = GPT(GPTConfig(**GUO))
    everything = {n for n, _ in gpt.named_parameters()}
    matrices = decayed_names(gpt, "matrices")
    assert matrices == {n for n, p in gpt.named_parameters() if p.dim() >= 2}
    assert "transformer.ln_f.bias" not in matrices and "lm_head.weight" in matrices
    assert decayed_names(gpt, "all") == everything
    with pytest.raises(ValueError, match="decay_params"):
        decayed_names(gpt, "vectors")


def test_a_variant_exempts_its_own_biases_from_matrix_decay_only():
    gpt = GPT(GPTConfig(**{**GUO, "n_layer": 1}, attention="kv_bias",
                        attention_options={"decay_bias": False}))  # fmt: skip
    exempt = {"transformer.h.0.attn.variant.key_bias", "transformer.h.0.attn.variant.value_bias"}
    assert not exempt & decayed_names(gpt, "matrices")
    assert exempt <= decayed_names(gpt, "all")


def test_torch_default_init_is_each_modules_own():
    torch.manual_seed(1)
    cfg = GPTConfig(**{**GUO, "vocab_size": 4000, "block_size": 512, "n_embd": 64})
    gpt = GPT(cfg)
    # nn.Embedding: N(0, 1); nn.Linear: Kaiming-uniform, |w| <= 1 / sqrt(fan_in).
    assert gpt.transformer.wte.weight.std().item() == pytest.approx(1.0, abs=0.02)
    assert gpt.transformer.wpe.weight.std().item() == pytest.approx(1.0, abs=0.03)
    for name, p in gpt.named_parameters():
        if name.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight", "lm_head.weight")):
            bound = 1 / math.sqrt(p.shape[1])
            assert p.abs().max().item() <= bound
            assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1), name
    # Tied under torch_default: the shared matrix is the embedding's N(0, 1), as Guo's code ties.
    tied = GPT(GPTConfig(**{**GUO, "vocab_size": 4000, "n_embd": 64, "tie_embeddings": True}))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert tied.transformer.wte.weight.std().item() == pytest.approx(1.0, abs=0.02)


def test_gpt2_defaults_are_unchanged():
    torch.manual_seed(2)
    gpt = GPT(GPTConfig(vocab_size=4000, block_size=64, n_layer=4, n_head=2, n_embd=64))
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    assert gpt.transformer.h[0].ln_1.bias is None
    assert isinstance(gpt.transformer.h[0].mlp.act, nn.GELU)
    assert gpt.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    resid = gpt.transformer.h[0].mlp.c_proj.weight.std().item()
    assert resid == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert decayed_names(gpt) == {n for n, p in gpt.named_parameters() if p.dim() >= 2}


def test_norm_bias_follows_bias_unless_set():
    for bias, norm_bias, expected in ((True, None, True), (False, None, False), (False, True, True),
                                      (True, False, False)):  # fmt: skip
        gpt = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8,
                            bias=bias, norm_bias=norm_bias))  # fmt: skip
        assert (gpt.transformer.h[0].ln_1.bias is not None) == expected
        assert (gpt.transformer.h[0].mlp.c_fc.bias is not None) == bias


def test_constant_schedule_with_and_without_warmup():
    flat = OptimConfig(lr=1e-3, min_lr=1e-4, schedule="constant", warmup_steps=0)
    assert [lr_factor(s, flat, 100) for s in (0, 1, 50, 99, 100, 10_000)] == [1.0] * 6
    warm = OptimConfig(lr=1e-3, min_lr=1e-4, schedule="constant", warmup_steps=3)
    assert [lr_factor(s, warm, 100) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0)
    assert lr_factor(100, cosine, 100) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"activation": "swish"}, "model.activation"),
        ({"init": "xavier"}, "model.init"),
        ({"tie_embeddings": "no"}, "model.tie_embeddings"),
        ({"norm_bias": "yes"}, "model.norm_bias"),
    ],
)
def test_bad_model_options_fail_with_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**GUO, **overrides})


@pytest.mark.parametrize(
    "overrides, message",
    [({"name": "adam"}, "optim.name"), ({"decay_params": "some"}, "optim.decay_params"),
     ({"schedule": "linear"}, "optim.schedule"), ({"momentum": 1.0}, "momentum")],
)  # fmt: skip
def test_bad_optim_options_fail_with_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**overrides)

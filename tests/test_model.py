"""GPT-2 model: nanoGPT checkpoints load unchanged and match a plain GPT-2 forward."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sysout.attention import variant_names
from sysout.model import GPT, GPTConfig, build_gpt

CONF = Path(__file__).resolve().parents[1] / "conf"
L_, H_, C_, T_, V_ = 2, 2, 16, 12, 64


def nanogpt_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random checkpoint in nanoGPT's own format (compiled prefix and mask buffers included)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    sd = {"transformer.wte.weight": r(V_, C_), "transformer.wpe.weight": r(T_, C_)}
    for i in range(L_):
        p = f"transformer.h.{i}."
        sd |= {
            p + "ln_1.weight": 1 + r(C_),
            p + "attn.c_attn.weight": r(3 * C_, C_),
            p + "attn.c_proj.weight": r(C_, C_),
            p + "ln_2.weight": 1 + r(C_),
            p + "mlp.c_fc.weight": r(4 * C_, C_),
            p + "mlp.c_proj.weight": r(C_, 4 * C_),
            p + "attn.bias": torch.ones(1, 1, T_, T_).tril(),  # old nanoGPT's causal mask buffer
        }
    sd["transformer.ln_f.weight"] = 1 + r(C_)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return {"_orig_mod." + k: v for k, v in sd.items()}


def plain_gpt2_logits(sd: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """GPT-2 forward written out with explicit attention (no biases, tanh-free exact GELU)."""
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    ln = lambda x, w: F.layer_norm(x, (C_,), w, None, 1e-5)  # noqa: E731
    t = idx.shape[1]
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:t]
    for i in range(L_):
        p = f"transformer.h.{i}."
        q, k, v = (ln(x, sd[p + "ln_1.weight"]) @ sd[p + "attn.c_attn.weight"].T).split(C_, -1)
        heads = lambda z: z.view(*z.shape[:2], H_, C_ // H_).transpose(1, 2)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C_ // H_)
        att = att.masked_fill(torch.ones(t, t).tril() == 0, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + y @ sd[p + "attn.c_proj.weight"].T
        hidden = F.gelu(ln(x, sd[p + "ln_2.weight"]) @ sd[p + "mlp.c_fc.weight"].T)
        x = x + hidden @ sd[p + "mlp.c_proj.weight"].T
    return ln(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


def test_nanogpt_checkpoint_loads_and_matches_plain_gpt2() -> None:
    model = GPT(GPTConfig(block_size=T_, vocab_size=V_, n_layer=L_, n_head=H_, n_embd=C_))
    sd = nanogpt_state_dict()
    model.load_nanogpt_state_dict(sd)
    model.eval()
    idx = torch.randint(0, V_, (3, T_), generator=torch.Generator().manual_seed(1))
    logits, _ = model(idx)
    torch.testing.assert_close(logits, plain_gpt2_logits(sd, idx), rtol=1e-5, atol=1e-5)


def test_state_dict_keys_are_nanogpts_for_softmax() -> None:
    model = GPT(GPTConfig(block_size=T_, vocab_size=V_, n_layer=L_, n_head=H_, n_embd=C_))
    expected = {k.removeprefix("_orig_mod.") for k in nanogpt_state_dict()}
    expected = {k for k in expected if not k.endswith("attn.bias")}
    assert set(model.state_dict()) == expected


def test_variant_parameters_live_inside_attn() -> None:
    model = build_gpt(
        dict(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=16),
        dict(name="kv_bias", options={"decay_bias": False}),
    )
    names = {k for k in model.state_dict() if "variant" in k}
    assert names == {
        "transformer.h.0.attn.variant.key_bias",
        "transformer.h.0.attn.variant.value_bias",
    }


def test_init_ties_weights_and_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=128, block_size=16))
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_loss_ignores_minus_one_targets() -> None:
    model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=2, n_embd=8))
    idx = torch.randint(0, 32, (2, 8))
    targets = idx.clone()
    targets[:, 4:] = -1
    logits, loss = model(idx, targets)
    manual = F.cross_entropy(logits[:, :4].reshape(-1, 32), idx[:, :4].reshape(-1))
    torch.testing.assert_close(loss, manual)


@pytest.mark.parametrize("model_name", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
@pytest.mark.parametrize("variant", variant_names())
def test_every_variant_composes_with_every_model_config(model_name: str, variant: str) -> None:
    model_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{model_name}.yaml"))
    attention_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "attention" / f"{variant}.yaml"))
    assert attention_cfg["name"] == variant
    if model_cfg["vocab_size"] is None:  # the data's own vocabulary fills it in (sink_lab)
        model_cfg["vocab_size"] = 66
    with torch.device("meta"):  # shapes only: no memory for the 350M model
        model = build_gpt(model_cfg, attention_cfg)
        logits, _ = model(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape == (1, 8, model_cfg["vocab_size"])


def test_bad_model_config_is_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match="n_embd=100 is not divisible by model.n_head=3"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="unknown model config keys"):
        build_gpt(dict(n_layers=3))
    with pytest.raises(ValueError, match="exceeds block_size"):
        GPT(GPTConfig(block_size=4, vocab_size=8, n_layer=1, n_head=1, n_embd=4))(
            torch.zeros(1, 5, dtype=torch.long)
        )


def test_weight_decay_groups_survive_fsdp_style_wrapping_and_flattening() -> None:
    from torch import nn

    from sysout.training.optim import decayed_names, parameter_groups

    model = build_gpt(
        dict(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=16),
        dict(name="kv_bias", options={"decay_bias": False}),
    )
    names = decayed_names(model)
    assert "transformer.h.0.mlp.c_fc.weight" in names and "lm_head.weight" not in names  # tied
    assert "transformer.h.0.ln_1.weight" not in names
    assert "transformer.h.0.attn.variant.key_bias" not in names  # exempted, though 2-D

    class Wrapper(nn.Module):  # what FSDP does: a wrapper prefix and 1-D flattened parameters
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._fsdp_wrapped_module = inner

    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[key] = nn.Parameter(p.detach().reshape(-1))
    wrapped = Wrapper(model)
    decay, no_decay = parameter_groups(wrapped, 0.1, names)
    assert len(decay["params"]) == len(names) and all(p.dim() == 1 for p in decay["params"])
    assert len(no_decay["params"]) == sum(1 for _ in wrapped.parameters()) - len(names)


def test_sink_tokens_follow_the_official_sink_model() -> None:
    """Sun et al.'s model_sink.py: a learned [1, num_reg, C] token (no position embedding) is
    prepended before block 0 and its outputs dropped after ln_f."""
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(block_size=8, vocab_size=32, n_layer=2, n_head=2, n_embd=16, sink_tokens=1)
    ).eval()
    assert tuple(model.reg_token.shape) == (1, 1, 16)
    idx = torch.randint(0, 32, (3, 8))
    tr = model.transformer
    x = tr.wte(idx) + tr.wpe(torch.arange(8))
    x = torch.cat([model.reg_token.expand(3, -1, -1), x], dim=1)
    for block in tr.h:
        x = block(x)
    expected = model.lm_head(tr.ln_f(x)[:, 1:])
    logits, _ = model(idx)
    torch.testing.assert_close(logits, expected)
    # the sink token changes every output (it is attended to), and the official key loads
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["reg_token"] = torch.randn(1, 1, 16)
    model.load_nanogpt_state_dict(state)
    assert not torch.allclose(model(idx)[0], logits)
    with pytest.raises(ValueError, match="sink_tokens"):
        GPTConfig(sink_tokens=-1)

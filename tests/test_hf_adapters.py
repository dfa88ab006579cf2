"""The transformers adapters: structure, q/k/v and weights, logits, orientation, planted outlier."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import (
    BORN,
    DIM,
    FAMILIES,
    HEADS,
    LAYERS,
    MASSIVE,
    SEQ,
    SINK_HEAD,
    SINK_LAYER,
    WIDTH,
    J,
    plant,
    planted_input,
    tiny_model,
)
from torch import nn

from sysout.adapters import adapter_for, first_tensor, is_conv1d, linear_weight


@pytest.mark.parametrize("kind", FAMILIES)
def test_adapter_structure_logits_and_orientation(kind):
    model = tiny_model(kind)
    ad = adapter_for(model)
    assert ad.family.startswith("hf_") and ad.num_layers() == LAYERS
    idx = planted_input()
    with torch.no_grad():
        assert torch.equal(ad.logits(idx), model(idx).logits)
    for i in range(LAYERS):
        p = ad.parts(i)
        assert p.block is ad.blocks()[i] and p.attn in list(p.block.modules())
        w = linear_weight(p.down_proj)
        assert w.shape[0] == WIDTH and w.shape[1] > WIDTH  # [out = C, in = intermediate]
        assert linear_weight(p.up_proj).shape == (w.shape[1], WIDTH)
        assert (p.gate_proj is not None) == (kind in ("llama", "mistral", "qwen2"))
        assert (p.mlp_norm is None) == (kind == "phi")
    assert ad.final_norm() is not None and ad.output_head() is model.get_output_embeddings()
    assert ad.output_head() not in [m for _, m in ad.projections()]
    norms = ad.norms()
    assert "final_norm" in norms and f"{LAYERS - 1}.attn_norm" in norms
    # The down-projection's [out, in] view is the layer's own map (Conv1D transposed).
    p = ad.parts(0)
    x = torch.randn(3, linear_weight(p.down_proj).shape[1])
    bias = p.down_proj.bias if p.down_proj.bias is not None else 0.0
    with torch.no_grad():
        assert torch.allclose(p.down_proj(x), x @ linear_weight(p.down_proj).T + bias, atol=1e-6)
    assert is_conv1d(p.down_proj) == (kind == "gpt2")


def _capture(model: nn.Module, layer: int, idx: torch.Tensor):
    ad = adapter_for(model)
    got, o_in = [], []
    out_proj = [m for _, m in ad.parts(layer).attn.named_children() if isinstance(m, nn.Module)]
    # The attention's output projection is its last projection child: its input is weights @ v.
    proj = [m for m in out_proj if hasattr(m, "weight")][-1]
    handles = ad.capture_attention(layer, got.append)
    handles.append(proj.register_forward_hook(lambda m, a, o: o_in.append(a[0])))
    with ad.eval_mode():
        ad.run(idx)
    for h in handles:
        h.remove()
    return got[0], o_in[0]


@pytest.mark.parametrize("kind", FAMILIES)
def test_capture_gives_the_models_weights_and_per_head_qkv(kind):
    model = tiny_model(kind)
    idx = planted_input()
    cap, o_in = _capture(model, 1, idx)
    b, t, d = idx.shape[0], SEQ, WIDTH // HEADS
    for z in (cap.q, cap.k, cap.v):
        assert z.shape == (b, HEADS, t, d)
    w = cap.weights()
    with torch.no_grad():
        ref = model(idx, output_attentions=True).attentions[1]
    assert w.shape == (b, HEADS, t, t) and torch.allclose(w, ref.float(), atol=1e-6)
    assert torch.allclose(cap.key_mass(), w.sum(dim=2))
    # weights @ v, heads side by side, is what the output projection receives: v and the head
    # order (GQA repeat, NeoX interleaving, GPT-2's fused split) are right.
    merged = (w @ cap.v.float()).transpose(1, 2).reshape(b, t, WIDTH)
    assert torch.allclose(merged, o_in.float(), atol=1e-5)
    # the adapter names that output projection, W_O (Guo et al.'s ||W_O v|| at the sink)
    assert cap.out_proj is not None and cap.out_proj.weight.numel() == WIDTH * WIDTH
    if kind in ("gpt2", "opt"):  # no rotary: the scores are q k^T / sqrt(d)
        s = cap.q @ cap.k.transpose(-1, -2) / d**0.5
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        assert torch.allclose(torch.softmax(s, -1), w, atol=1e-5)


def test_a_non_eager_model_is_switched_to_eager_with_a_warning(caplog):
    model = tiny_model("llama", attn="sdpa")
    cap, _ = _capture(model, 0, planted_input())
    assert model.config._attn_implementation == "eager"
    assert "switched from 'sdpa' to 'eager'" in caplog.text
    assert torch.allclose(cap.weights().sum(-1), torch.ones(2, HEADS, SEQ), atol=1e-5)


def test_an_unsupported_architecture_names_the_supported_ones():
    import transformers as T

    cfg = T.BloomConfig(n_layer=1, n_head=2, hidden_size=16, vocab_size=32)
    with pytest.raises(TypeError, match=r"no sysout adapter for BloomForCausalLM.*hf_llama"):
        adapter_for(T.AutoModelForCausalLM.from_config(cfg))


@pytest.mark.parametrize("kind", FAMILIES)
def test_planted_outlier_is_born_sinks_and_is_cancelled(kind):
    """The picture hf_tiny.plant writes, seen through the adapter only."""
    model = plant(tiny_model(kind))
    ad = adapter_for(model)
    idx = planted_input()
    res, act_in, caps = {}, {}, []
    handles = [
        ad.blocks()[i].register_forward_hook(
            lambda m, a, o, i=i: res.__setitem__(i, first_tensor(o))
        )
        for i in range(LAYERS)
    ]
    down = ad.parts(BORN).down_proj
    handles.append(down.register_forward_hook(lambda m, a, o: act_in.__setitem__(0, a[0])))
    handles += ad.capture_attention(SINK_LAYER, caps.append)
    with ad.eval_mode():
        ad.run(idx)
    for h in handles:
        h.remove()
    h = res[BORN].abs()
    top = h.flatten(1).argmax(1)
    assert (top // WIDTH == 0).all() and (top % WIDTH == DIM).all()  # token 0, dim DIM
    assert h[:, 0, DIM].min() > 0.9 * MASSIVE and res[BORN - 1].abs().max() < 100
    assert res[SINK_LAYER].abs()[:, 0, DIM].min() > 0.9 * MASSIVE
    assert res[LAYERS - 1].abs().max() < 100  # cancelled by the last MLP
    # The down-projection input channel J is ordinary (not massive): the weight amplifies it.
    a = act_in[0].reshape(idx.shape[0], SEQ, -1)  # OPT's MLP sees [B*T, C]
    assert a[:, 0].abs().argmax(-1).eq(J).all() and a.abs().max() < 100
    share = caps[0].weights()[:, :, 1:, 0].mean(dim=(0, 2))  # per-head first-token share
    assert share[SINK_HEAD] > 0.95 and share.argmax() == SINK_HEAD

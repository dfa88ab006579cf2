"""sysout.compress on Hugging Face layers: GPT-2's Conv1D (weight stored [in, out]) and, when the
HF adapter is available, a tiny GPT2LMHeadModel end to end."""

from __future__ import annotations

import pytest
import torch
from test_compress import assert_same_state, snapshot
from torch import nn

from sysout.adapters import adapter_for, linear_weight
from sysout.compress import (
    WeightSnapshot,
    build_mask,
    fake_quantize,
    get_method,
    list_methods,
    magnitude_scores,
    pruned,
    quantized,
)
from sysout.compress.layers import set_weight

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

IN, OUT = 8, 6


def conv_and_linear_twin(seed: int = 0) -> tuple[nn.Module, nn.Linear]:
    """A Conv1D and an nn.Linear computing the same function (weights transposed)."""
    torch.manual_seed(seed)
    conv = Conv1D(OUT, IN)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(IN, OUT) * torch.rand(1, OUT) * 3)  # columns = outputs
        conv.bias.copy_(torch.randn(OUT))
    lin = nn.Linear(IN, OUT)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    return conv, lin


def test_conv1d_per_output_channel_and_per_row_mean_the_same_as_for_linear():
    conv, lin = conv_and_linear_twin()
    x = torch.randn(3, 5, IN)
    torch.testing.assert_close(conv(x), lin(x))
    assert linear_weight(conv).shape == (OUT, IN) == lin.weight.shape
    w_conv, w_lin = conv.weight.detach().clone(), lin.weight.detach().clone()
    snap = WeightSnapshot()
    for edit in (
        lambda w: fake_quantize(w, 4, "per_channel"),
        lambda w: w.masked_fill(~build_mask(magnitude_scores(w), "unstructured", 0.5), 0),
    ):
        for mod in (conv, lin):
            set_weight(mod, edit(linear_weight(mod)), snap)
        torch.testing.assert_close(conv(x), lin(x))  # same function after the same edit
        assert torch.equal(conv.weight, lin.weight.t())
        snap.restore()
    # per output channel on Conv1D = one scale per *column* of the stored [in, out] weight
    set_weight(conv, fake_quantize(linear_weight(conv), 4, "per_channel"), snap)
    col_scale = w_conv.abs().amax(0) / 7
    codes = conv.weight / col_scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    snap.restore()
    assert torch.equal(conv.weight, w_conv) and torch.equal(lin.weight, w_lin)


def tiny_hf_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_head=2, n_embd=16, n_positions=8, vocab_size=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg).eval()
    try:
        adapter_for(model)
    except TypeError as err:
        pytest.skip(f"no sysout adapter for Hugging Face GPT-2 yet: {err}")
    return model


def hf_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


def test_hf_gpt2_quantize_and_prune_act_on_conv1d_per_output_and_skip_the_head():
    model = tiny_hf_gpt2()
    ref = snapshot(model)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert len(convs) == 8
    with quantized(model, "W8A8") as rec:
        assert sorted(rec.weights) == sorted(n for n, _ in convs) and rec.skipped == ["lm_head"]
        for name, mod in convs:
            w0 = ref[name + ".weight"]  # [in, out]
            assert torch.equal(mod.weight, fake_quantize(w0.t(), 8, "per_channel").t()), name
        assert torch.equal(model.transformer.wte.weight, ref["transformer.wte.weight"])
    assert_same_state(model, ref)
    with pruned(model, "magnitude", "unstructured", 0.5):
        for _, mod in convs:
            zeros_per_output = (mod.weight == 0).sum(0)  # stored [in, out]: a column per output
            assert torch.equal(zeros_per_output, torch.full_like(zeros_per_output, mod.nx // 2))
    assert_same_state(model, ref)


def test_hf_gpt2_every_method_runs_changes_the_output_and_restores():
    model = tiny_hf_gpt2()
    with torch.no_grad():
        model.transformer.h[1].ln_1.weight[4] = 30.0

    def massive(mod, args, out):  # block 0 creates a massive activation at token 0, dim 3
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, 0, 3] += 1e4
        return (h, *out[1:]) if isinstance(out, tuple) else h

    plant = model.transformer.h[0].register_forward_hook(massive)
    g = torch.Generator().manual_seed(1)
    cal = [torch.randint(0, 64, (2, 8), generator=g) for _ in range(2)]
    idx = torch.randint(0, 64, (2, 8), generator=g)
    ref = snapshot(model)
    base = hf_logits(model, idx)
    for name in list_methods():
        with torch.no_grad(), get_method(name)(model, cal) as rec:
            out = model(idx).logits
            summary = rec.summary()
        assert (name == "baseline") == torch.equal(out, base), name
        if name in ("set_zero", "set_mean", "residual_clip"):
            assert summary["layer"] == 0 and summary["replaced"] == 2, name
        assert_same_state(model, ref)
        assert torch.equal(hf_logits(model, idx), base), name
    plant.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

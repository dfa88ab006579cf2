"""Tests of sysout.compress: quantization, pruning, mitigation probes, method registry."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sysout.compress import (
    METHODS,
    QuantConfig,
    absmax_scale,
    apply_methods,
    clip_residual_activations,
    collect_input_norms,
    fake_quantize,
    find_gamma_outliers,
    find_massive_activation_layer,
    get_method,
    list_methods,
    magnitude_scores,
    pruned,
    quantized,
    reset_layernorm_gamma_outliers,
    semi_structured_mask,
    unstructured_row_mask,
    wanda_scores,
)

# ----------------------------------------------------------------------------- tiny GPT stand-in

C, V, L, T, B = 16, 32, 3, 8, 2


class LayerNorm(nn.Module):
    """nanoGPT's LayerNorm with optional bias (detected by class name)."""

    def __init__(self, n: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(C, 3 * C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(C, dim=-1)
        return self.c_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Linear(C, 4 * C, bias=False)
        self.c_proj = nn.Linear(4 * C, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.attn = LayerNorm(C), Attn()
        self.ln_2, self.mlp = LayerNorm(C), MLP()
        self.last_input: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_input = x  # what the block really received (after any pre-hook)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(V, C),
                "h": nn.ModuleList([Block() for _ in range(L)]),
                "ln_f": nn.LayerNorm(C, bias=False),
            }
        )
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
        nn.init.normal_(self.transformer.wte.weight, 0.0, 1.0)

    def forward(self, idx: torch.Tensor):
        x = self.transformer.wte(idx)
        for blk in self.transformer.h:
            x = blk(x)
        return self.lm_head(self.transformer.ln_f(x)), None


def batches(n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (B, T), generator=g) for _ in range(n)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, ref: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), f"{k} not restored bit for bit"


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def on_grid(x: torch.Tensor, scale: torch.Tensor, tol: float = 1e-3) -> bool:
    codes = x.float() / scale
    return bool(((codes - codes.round()).abs() < tol).all())


# ----------------------------------------------------------------------------- quantizer


def test_fake_quantize_known_values_8bit():
    x = torch.tensor([-1.0, 0.5, 0.25, 1.0])
    scale = absmax_scale(x, 8, "per_tensor")
    assert scale.item() == pytest.approx(1 / 127, rel=1e-7)
    y = fake_quantize(x, 8, "per_tensor")
    # codes -127, 63.5 -> 64 (ties to even), 31.75 -> 32, 127
    assert torch.equal(y, torch.tensor([-127.0, 64.0, 32.0, 127.0]) * scale)
    assert torch.allclose(y, torch.tensor([-1.0, 64 / 127, 32 / 127, 1.0]), atol=1e-7, rtol=0)
    assert y.dtype == x.dtype


def test_fake_quantize_is_a_fixed_point_and_keeps_dtype():
    torch.manual_seed(0)
    w = torch.randn(8, 32) * torch.rand(8, 1) * 5
    for bits, gran in [(4, "per_channel"), (8, "per_channel"), (8, "per_tensor"), (6, "per_token")]:
        q = fake_quantize(w, bits, gran)
        assert not torch.equal(q, w)
        assert torch.equal(fake_quantize(q, bits, gran), q)
    xb = torch.randn(2, 3, 16).to(torch.bfloat16)
    assert fake_quantize(xb, 8, "per_token").dtype == torch.bfloat16


def test_symmetric_restricted_range_and_clamping():
    x = torch.tensor([[-1.0, 1.0, 0.999, -0.2]])
    for bits in (2, 4, 8):
        qmax = 2 ** (bits - 1) - 1
        y = fake_quantize(x, bits, "per_tensor")
        codes = (y / absmax_scale(x, bits)).round()
        assert codes.min().item() == -qmax  # -2^(b-1) is never used
        assert codes.max().item() == qmax
        assert y.abs().max().item() <= 1.0
    # 2 bits: qmax = 1, codes in {-1, 0, 1}
    assert torch.equal(fake_quantize(x, 2, "per_tensor"), torch.tensor([[-1.0, 1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError):
        fake_quantize(x, 1)
    with pytest.raises(ValueError):
        fake_quantize(x, 8, "per_row")


def test_zero_absmax_no_nan():
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    for gran in ("per_channel", "per_token"):
        y = fake_quantize(w, 4, gran)
        assert not torch.isnan(y).any()
        assert torch.equal(y[0], torch.zeros(3))
    assert torch.equal(fake_quantize(torch.zeros(2, 3), 8), torch.zeros(2, 3))


def test_per_channel_vs_per_tensor_by_hand():
    w = torch.tensor([[1.0, 0.3], [100.0, -40.0]])
    # 4 bits: qmax = 7.  per-tensor scale 100/7: row 0 -> codes 0, 0; row 1 -> 7, round(-2.8)=-3
    pt = fake_quantize(w, 4, "per_tensor")
    assert torch.allclose(pt, torch.tensor([[0.0, 0.0], [100.0, -300 / 7]]), atol=1e-5, rtol=0)
    # per-channel: row 0 scale 1/7 -> codes 7, round(2.1)=2; row 1 as per-tensor
    pc = fake_quantize(w, 4, "per_channel")
    assert torch.allclose(pc, torch.tensor([[1.0, 2 / 7], [100.0, -300 / 7]]), atol=1e-5, rtol=0)
    # per-token on a 2-D tensor = one scale per row = per-channel here
    assert torch.equal(fake_quantize(w, 4, "per_token"), pc)


def test_parse_quant_names():
    expect = {
        "W8A8": (8, 8),
        "W6A6": (6, 6),
        "W4A8": (4, 8),
        "W4A16": (4, None),
        "W4A4": (4, 4),
        "w8a8": (8, 8),
    }
    for name, (w, a) in expect.items():
        cfg = QuantConfig.from_name(name)
        assert (cfg.w_bits, cfg.a_bits) == (w, a)
        assert (cfg.w_granularity, cfg.a_granularity) == ("per_channel", "per_token")
        assert cfg.skip == ("lm_head",)
        assert cfg.name == name.upper()
    pt = QuantConfig.from_name("W8A8_per_tensor")
    assert (pt.w_granularity, pt.a_granularity) == ("per_tensor", "per_tensor")
    assert QuantConfig.from_name("W8A8", skip=()).skip == ()
    for bad in ("W8", "A8W8", "int8", "W8A8_per_row"):
        with pytest.raises(ValueError):
            QuantConfig.from_name(bad)
    with pytest.raises(ValueError):
        QuantConfig(8, 8, w_granularity="per_token")


# ----------------------------------------------------------------------------- quantized()


def _record_linear_inputs(model: nn.Module):
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):

            def hook(m, args, out, name=name):
                seen[name] = args[0].detach().clone()

            handles.append(mod.register_forward_hook(hook))
    return seen, handles


def test_quantized_activation_hooks_per_token_and_lm_head_skipped():
    model = TinyGPT()
    ref = snapshot(model)
    idx = batches(1)[0]
    seen, handles = _record_linear_inputs(model)
    with quantized(model, "W8A8") as rec:
        model(idx)
        assert "lm_head" in rec.skipped and "lm_head" not in rec.activations
        assert len(rec.activations) == 4 * L
    for h in handles:
        h.remove()
    assert set(seen) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, x in seen.items():
        s = absmax_scale(x, 8, "per_token")
        if name == "lm_head":
            assert not on_grid(x, s, tol=1e-2), "lm_head input must stay full precision"
        else:
            assert on_grid(x, s), f"{name} input not on the per-token 8-bit grid"
            # per token (not per tensor): every token's absmax sits on code +-127
            codes = (x / s).round().abs().amax(-1)
            assert torch.equal(codes, torch.full_like(codes, 127.0)), name
    assert_same_state(model, ref)
    assert no_hooks(model)


def test_quantized_weights_on_grid_and_restored_bit_for_bit():
    model = TinyGPT()
    ref = snapshot(model)
    with quantized(model, QuantConfig(4, None)) as rec:
        assert no_hooks(model)  # A16: no activation hooks
        assert rec.activations == []
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                w0 = ref[name + ".weight"]
                assert not torch.equal(mod.weight, w0)
                assert on_grid(mod.weight, absmax_scale(w0, 4, "per_channel"))
        assert torch.equal(model.transformer.wte.weight, ref["transformer.wte.weight"])
    assert_same_state(model, ref)


def test_quantized_restores_on_exception_and_lm_head_unskipped():
    model = TinyGPT()
    ref = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), quantized(model, "W4A4"):
        assert any(m._forward_pre_hooks for m in model.modules())
        raise RuntimeError("boom")
    assert_same_state(model, ref)
    assert no_hooks(model)
    # not skipping the tied head quantizes the shared tensor once and restores it
    with quantized(model, QuantConfig(4, 8, skip=())) as rec:
        assert "lm_head" in rec.weights and "lm_head" in rec.activations
        wte = model.transformer.wte.weight
        assert torch.equal(wte, fake_quantize(ref["lm_head.weight"], 4, "per_channel"))
    assert_same_state(model, ref)
    assert model.lm_head.weight is model.transformer.wte.weight


# ----------------------------------------------------------------------------- pruning


def test_unstructured_row_mask_exact_count_and_ties():
    torch.manual_seed(0)
    s = torch.rand(6, 10)
    mask = unstructured_row_mask(s, 0.35)  # floor(3.5) = 3 removed per row
    assert torch.equal((~mask).sum(1), torch.full((6,), 3))
    for r in range(6):
        removed = set(torch.nonzero(~mask[r]).flatten().tolist())
        assert removed == set(torch.argsort(s[r])[:3].tolist())
    tie = unstructured_row_mask(torch.ones(2, 6), 0.5)  # lower index removed first
    assert torch.equal(tie, torch.tensor([[False] * 3 + [True] * 3] * 2))
    assert unstructured_row_mask(s, 0.0).all()


def test_semi_structured_mask_2of4():
    torch.manual_seed(0)
    s = torch.rand(5, 16)
    mask = semi_structured_mask(s, 2, 4)
    groups = mask.reshape(5, 4, 4)
    assert torch.equal(groups.sum(-1), torch.full((5, 4), 2))
    top2 = s.reshape(5, 4, 4).topk(2, dim=-1).indices
    assert torch.equal(groups.gather(-1, top2), torch.ones_like(top2, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by 4"):
        semi_structured_mask(torch.rand(3, 10))


def test_pruned_magnitude_exact_sparsity_and_restore():
    model = TinyGPT()
    ref = snapshot(model)
    with pruned(model, "magnitude", "unstructured", 0.5) as rec:
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                zeros = (mod.weight == 0).sum(1)
                assert torch.equal(zeros, torch.full_like(zeros, mod.in_features // 2)), name
        assert rec.overall_sparsity == pytest.approx(0.5)
        assert torch.equal(model.transformer.wte.weight, ref["transformer.wte.weight"])
    assert_same_state(model, ref)
    with pruned(model, "magnitude", "2:4"):
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                g = (mod.weight != 0).reshape(mod.out_features, -1, 4).sum(-1)
                assert torch.equal(g, torch.full_like(g, 2)), name
    assert_same_state(model, ref)


def test_collect_input_norms_matches_direct_computation():
    model = TinyGPT()
    model.train()
    cal = batches(3)
    norms = collect_input_norms(model, cal)
    assert model.training  # mode restored
    with torch.no_grad():
        xs, fin = [], []
        for idx in cal:
            x = model.transformer.wte(idx)
            xs.append(model.transformer.h[0].ln_1(x).reshape(-1, C))
            for blk in model.transformer.h:
                x = blk(x)
            fin.append(model.transformer.ln_f(x).reshape(-1, C))
    direct = torch.cat(xs).norm(dim=0)
    assert torch.allclose(norms["transformer.h.0.attn.c_attn"], direct, rtol=1e-5)
    assert torch.allclose(norms["lm_head"], torch.cat(fin).norm(dim=0), rtol=1e-5)
    name = "transformer.h.1.mlp.c_proj"
    only = collect_input_norms(model, cal, [name])
    assert list(only) == [name] and only[name].shape == (4 * C,)
    assert no_hooks(model)


def test_wanda_and_magnitude_choose_differently():
    # direct: column 3 has tiny weights but a huge input norm
    w = torch.tensor([[1.0, 0.9, 0.5, 0.4]])
    norm = torch.tensor([1.0, 1.0, 1.0, 100.0])
    mag = unstructured_row_mask(magnitude_scores(w), 0.5)
    wan = unstructured_row_mask(wanda_scores(w, norm), 0.5)
    assert mag.tolist() == [[True, True, False, False]]
    assert wan.tolist() == [[True, False, False, True]]
    # through the model: ln_1 gamma makes c_attn's input column 3 huge
    model = TinyGPT()
    attn = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        model.transformer.h[0].ln_1.weight[3] = 100.0
        attn.weight[:, 3] = 1e-3
    ref = snapshot(model)
    with pruned(model, "magnitude"):
        assert (attn.weight[:, 3] == 0).all()
    with pruned(model, "wanda", calibration=batches(2)):
        assert (attn.weight[:, 3] != 0).all()
    assert_same_state(model, ref)


def test_wanda_sequential_uses_pruned_earlier_blocks():
    model = TinyGPT()
    cal = batches(2)
    name = "transformer.h.1.mlp.c_fc"
    dense = collect_input_norms(model, cal, [name])[name]
    with pruned(model, "wanda", calibration=cal) as rec:
        seq = rec.input_norms[name]
    # reference: prune block 0 only, then measure block 1's input
    ref_model = copy.deepcopy(model)
    skip = ("lm_head", "transformer.h.1.*", "transformer.h.2.*")
    with pruned(ref_model, "wanda", calibration=cal, skip=skip):
        expect = collect_input_norms(ref_model, cal, [name])[name]
    assert torch.allclose(seq, expect, rtol=1e-5)
    assert not torch.allclose(seq, dense, rtol=1e-3)
    with pruned(model, "wanda", calibration=cal, sequential=False) as rec:
        assert torch.allclose(rec.input_norms[name], dense, rtol=1e-5)


def test_pruned_tied_embedding_and_restore():
    model = TinyGPT()
    ref = snapshot(model)
    wte = model.transformer.wte.weight
    with pruned(model, "wanda", calibration=batches(2)) as rec:
        assert torch.equal(wte, ref["transformer.wte.weight"])
        assert "lm_head" in rec.skipped and "lm_head" not in rec.modules
    assert_same_state(model, ref)
    with pruned(model, "magnitude", skip=()) as rec:
        assert "lm_head" in rec.modules
        assert torch.equal((wte == 0).sum(1), torch.full((V,), C // 2))  # pruned once
    assert_same_state(model, ref)
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ValueError, match="calibration"):
        pruned(model, "wanda").__enter__()
    with pytest.raises(ValueError):
        pruned(model, "random").__enter__()


def test_pruned_restores_on_exception():
    model = TinyGPT()
    ref = snapshot(model)
    with pytest.raises(KeyError), pruned(model, "magnitude", "2:4"):
        raise KeyError("x")
    assert_same_state(model, ref)


def test_linears_sharing_a_weight_edited_once_and_skip_protects_it():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    m[1].weight = m[0].weight
    w0 = m[0].weight.detach().clone()
    with pruned(m, "magnitude", skip=()) as rec, quantized(m, QuantConfig(4, None, skip=())):
        assert len(rec.modules) == 1  # the shared Parameter is pruned once
        assert torch.equal((m[0].weight == 0).sum(1), torch.full((8,), 4))
    assert torch.equal(m[0].weight, w0) and m[1].weight is m[0].weight
    with pruned(m, "magnitude", skip=("1",)), quantized(m, QuantConfig(4, None, skip=("1",))):
        assert torch.equal(m[0].weight, w0)  # a skipped user protects the shared weight


# ----------------------------------------------------------------------------- mitigation


def test_gamma_reset_changes_exactly_the_planted_outliers():
    model = TinyGPT()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (LayerNorm, nn.LayerNorm)):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(C, generator=g))
        model.transformer.h[1].ln_2.weight[5] = 50.0
        model.transformer.ln_f.weight[2] = -40.0
    ref = snapshot(model)
    expected = {"transformer.h.1.ln_2": [5], "transformer.ln_f": [2]}
    assert find_gamma_outliers(model, tau=10.0) == expected
    for value in ("one", "mean"):
        with reset_layernorm_gamma_outliers(model, tau=10.0, value=value) as rec:
            assert rec.changed == expected
            for name, idx in expected.items():
                w = model.get_submodule(name).weight
                w0 = ref[name + ".weight"]
                keep = torch.ones(C, dtype=torch.bool)
                keep[idx] = False
                target = 1.0 if value == "one" else w0[keep].mean().item()
                assert w[idx[0]].item() == pytest.approx(target, abs=1e-6)
                assert torch.equal(w[keep], w0[keep])  # nothing else changed
            for k, v in model.state_dict().items():
                if k.removesuffix(".weight") not in expected:
                    assert torch.equal(v, ref[k]), k
        assert_same_state(model, ref)
    with pytest.raises(ValueError):
        reset_layernorm_gamma_outliers(model, value="zero").__enter__()


def _plant(model: TinyGPT, value: float = 1e4):
    """Block 0 creates a massive activation at (token 0, dim 3) of every sequence."""

    def hook(mod, args, out):
        out = out.clone()
        out[:, 0, 3] += value
        return out

    return model.transformer.h[0].register_forward_hook(hook)


def test_find_massive_activation_layer():
    model = TinyGPT()
    idx = batches(1)[0]
    assert find_massive_activation_layer(model, idx) is None
    h = _plant(model)
    assert find_massive_activation_layer(model, idx) == 0
    assert find_massive_activation_layer(model, batches(2)) == 0
    h.remove()


@pytest.mark.parametrize("mode", ["median", "clip"])
def test_residual_replacement_in_later_blocks_only(mode):
    model = TinyGPT()
    model.eval()
    idx = batches(1)[0]
    plant = _plant(model)
    outs: dict[int, torch.Tensor] = {}
    caps = [
        blk.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o.detach().clone()))
        for i, blk in enumerate(model.transformer.h)
    ]
    with torch.no_grad():
        before = model(idx)[0]
    h = model.transformer.h
    with torch.no_grad(), clip_residual_activations(model, start_layer=0, mode=mode) as rec:
        inside = model(idx)[0]
        assert rec.hooked_blocks == [1, 2]
        x0 = outs[0]  # block 0 output (massive value included)
        assert (x0[:, 0, 3] > 1e3).all()
        x1 = h[1].last_input
        if mode == "median":
            expect = x0[:, 0, :].median(dim=-1).values
        else:
            med = x0.abs().reshape(B, -1).median(dim=1).values
            expect = torch.clamp(1000.0 * med, min=100.0)
        assert torch.allclose(x1[:, 0, 3], expect)
        other = torch.ones_like(x0, dtype=torch.bool)
        other[:, 0, 3] = False
        assert torch.equal(x1[other], x0[other])  # nothing else touched
        # the massive value is not carried on (clip may re-flag the value left at the boundary)
        assert (h[2].last_input[:, 0, 3].abs() < expect.abs() + 10).all()
        if mode == "median":
            assert rec.replaced == B and rec.per_block == {1: B}
        else:
            assert rec.per_block[1] == B and rec.per_block.get(2, 0) <= B
    assert not torch.equal(inside, before)
    assert all(not blk._forward_pre_hooks for blk in h)
    with torch.no_grad():
        assert torch.equal(model(idx)[0], before)
    # start_layer=1: block 1 still receives the massive value, block 2's input is fixed
    with torch.no_grad(), clip_residual_activations(model, start_layer=1, mode=mode) as rec:
        model(idx)
        assert (h[1].last_input[:, 0, 3] > 1e3).all()
        assert (h[2].last_input[:, 0, 3].abs() < 1e3).all()
        assert rec.per_block == {2: B}
    for c in caps:
        c.remove()
    plant.remove()
    assert no_hooks(model)


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_errors():
    required = {
        "w8a8", "w6a6", "w4a8", "w4a16", "w4a4", "w8a8_per_tensor", "magnitude_50",
        "magnitude_2of4", "wanda_50", "wanda_2of4", "gamma_reset_one", "gamma_reset_mean",
        "residual_median", "residual_clip",
    }  # fmt: skip
    assert required <= set(list_methods()) == set(METHODS)
    with pytest.raises(ValueError, match="w8a8"):
        get_method("w3a3_magic")
    with pytest.raises(ValueError, match="calibration"):
        get_method("wanda_50")(TinyGPT(), None)
    prune = {"magnitude_50", "magnitude_2of4", "wanda_50", "wanda_2of4"}
    assert set(list_methods("prune")) == prune


def test_every_method_changes_the_output_and_restores():
    model = TinyGPT()
    model.eval()
    with torch.no_grad():
        model.transformer.h[1].ln_1.weight[4] = 30.0  # a gamma outlier for the gamma probes
    plant = _plant(model)  # a massive activation for the residual probes
    cal = batches(2)
    idx = batches(1, seed=7)[0]
    ref = snapshot(model)
    with torch.no_grad():
        base = model(idx)[0]
    for name in list_methods():
        with torch.no_grad(), get_method(name)(model, cal) as rec:
            out = model(idx)[0]
            assert isinstance(rec.summary(), dict)
        if name != "baseline":
            assert not torch.equal(out, base), name
        assert_same_state(model, ref)
        assert all(not m._forward_pre_hooks for m in model.modules()), name
        with torch.no_grad():
            assert torch.equal(model(idx)[0], base), name
    with torch.no_grad(), apply_methods(model, ["gamma_reset_one", "w8a8"], cal) as recs:
        model(idx)
        assert recs[0].n_changed == 1 and recs[1].config.name == "W8A8"
    assert_same_state(model, ref)
    plant.remove()


def test_per_tensor_activation_scale_is_per_sequence_so_batching_does_not_matter() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4, bias=False)
    model = torch.nn.Sequential(layer)
    calm = torch.randn(1, 5, 8)
    loud = calm.clone()
    loud[0, 0, 0] = 2000.0  # a massive activation in another window of the same batch
    cfg = QuantConfig(w_bits=None, a_bits=8, a_granularity="per_tensor")
    with quantized(model, cfg):
        alone = model(calm)
        batched = model(torch.cat([calm, loud]))[:1]
    torch.testing.assert_close(batched, alone)


def test_mitigation_thresholds_reach_the_probes() -> None:
    from sysout.compress import MitigationThresholds, get_method

    ln = torch.nn.LayerNorm(8)
    model = torch.nn.Sequential(ln)
    with torch.no_grad():
        ln.weight.fill_(1.0)
        ln.weight[3] = 5.0  # 5x the median: an outlier for tau 4, not for the default tau 10
    with get_method("gamma_reset_one")(model) as default:
        assert default.changed == {}
    with get_method("gamma_reset_one")(model, None, MitigationThresholds(gamma_tau=4.0)) as loose:
        assert loose.changed == {"0": [3]} and ln.weight[3] == 1.0
    assert ln.weight[3] == 5.0  # restored

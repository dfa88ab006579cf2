"""sysout.compress: symmetric and static quantization, the method registry.

Pruning: tests/test_compress_prune.py; mitigation probes: tests/test_compress_mitigate.py;
Hugging Face Conv1D / GPT-2: tests/test_compress_hf.py.  The helpers here (a tiny sysout GPT,
calibration batches, state snapshots) are shared with those files.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sysout.compress import (
    METHODS,
    QuantConfig,
    absmax_scale,
    apply_methods,
    asymmetric_params,
    calibrate_ranges,
    fake_quantize,
    fake_quantize_asymmetric,
    get_method,
    list_methods,
    percentile_range,
    quantized,
    select_targets,
    static_quantized,
)
from sysout.model import build_gpt
from sysout.outliers.rules import OutlierThresholds

C, V, L, T, B = 16, 64, 3, 8, 2

# ----------------------------------------------------------------------------- shared helpers


def tiny_gpt(seed: int = 0) -> nn.Module:
    """sysout's GPT (softmax attention), 3 blocks of width 16; LM head tied to wte."""
    torch.manual_seed(seed)
    model = build_gpt(
        dict(n_layer=L, n_head=2, n_embd=C, block_size=T, vocab_size=V), {"name": "softmax"}
    )
    return model.eval()


def batches(n: int = 3, seed: int = 1, b: int = B) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (b, T), generator=g) for _ in range(n)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, ref: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), f"{k} not restored bit for bit"


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def on_grid(x: torch.Tensor, scale: torch.Tensor | float, tol: float = 1e-3) -> bool:
    codes = x.float() / scale
    return bool(((codes - codes.round()).abs() < tol).all())


def record_projection_inputs(model: nn.Module) -> tuple[dict[str, list[torch.Tensor]], list]:
    """Every Linear's input as the layer received it (after any pre-hook), per call."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):

            def hook(m, args, out, name=name):
                seen.setdefault(name, []).append(args[0].detach().clone())

            handles.append(mod.register_forward_hook(hook))
    return seen, handles


def logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


# ----------------------------------------------------------------------------- symmetric RTN


def test_fake_quantize_known_values_8bit():
    x = torch.tensor([-1.0, 0.5, 0.25, 1.0])
    scale = absmax_scale(x, 8, "per_tensor")
    assert scale.item() == pytest.approx(1 / 127, rel=1e-7)
    y = fake_quantize(x, 8, "per_tensor")
    # codes -127, 63.5 -> 64 (ties to even), 31.75 -> 32, 127
    assert torch.equal(y, torch.tensor([-127.0, 64.0, 32.0, 127.0]) * scale)
    assert y.dtype == x.dtype


def test_fixed_point_dtype_and_restricted_range():
    torch.manual_seed(0)
    w = torch.randn(8, 32) * torch.rand(8, 1) * 5
    for bits, gran in [(4, "per_channel"), (8, "per_tensor"), (6, "per_token")]:
        q = fake_quantize(w, bits, gran)
        assert not torch.equal(q, w) and torch.equal(fake_quantize(q, bits, gran), q)
    assert fake_quantize(w.to(torch.bfloat16), 8, "per_token").dtype == torch.bfloat16
    x = torch.tensor([[-1.0, 1.0, 0.999, -0.2]])
    assert torch.equal(fake_quantize(x, 2), torch.tensor([[-1.0, 1.0, 1.0, 0.0]]))  # qmax 1
    assert torch.equal(fake_quantize(torch.zeros(2, 3), 8), torch.zeros(2, 3))  # no NaN
    for bad in [dict(bits=1), dict(bits=8, granularity="per_row")]:
        with pytest.raises(ValueError):
            fake_quantize(x, **bad)


def test_granularities_by_hand():
    w = torch.tensor([[1.0, 0.3], [100.0, -40.0]])
    # 4 bits: qmax 7.  per tensor: scale 100/7 -> row 0 codes 0, 0; row 1 codes 7, round(-2.8)
    pt = fake_quantize(w, 4, "per_tensor")
    assert torch.allclose(pt, torch.tensor([[0.0, 0.0], [100.0, -300 / 7]]), atol=1e-5)
    pc = fake_quantize(w, 4, "per_channel")  # row 0: scale 1/7 -> codes 7, round(2.1)=2
    assert torch.allclose(pc, torch.tensor([[1.0, 2 / 7], [100.0, -300 / 7]]), atol=1e-5)
    # per sequence: one scale per [T, C] slice; a 2-D tensor is one sequence (= per tensor)
    x = torch.stack([w, w / 100])
    ps = fake_quantize(x, 4, "per_sequence")
    assert torch.equal(ps[0], pt) and torch.allclose(ps[1], pt / 100)
    assert torch.equal(fake_quantize(w, 4, "per_sequence"), pt)


def test_parse_quant_names():
    for name, (w, a) in {"W8A8": (8, 8), "w4a16": (4, None), "W4A4": (4, 4)}.items():
        cfg = QuantConfig.from_name(name)
        assert (cfg.w_bits, cfg.a_bits, cfg.name) == (w, a, name.upper())
        assert (cfg.w_granularity, cfg.a_granularity) == ("per_channel", "per_token")
    ps = QuantConfig.from_name("W8A8_per_sequence")
    assert (ps.w_granularity, ps.a_granularity) == ("per_tensor", "per_sequence")
    for bad in ("W8", "int8", "W8A8_per_tensor", "W8A8_per_row"):
        with pytest.raises(ValueError, match="cannot parse"):
            QuantConfig.from_name(bad)
    with pytest.raises(ValueError, match="a_granularity"):
        QuantConfig(8, 8, a_granularity="per_tensor")  # ambiguous for activations: say which


def test_quantized_inputs_per_token_head_left_out_and_restored():
    model = tiny_gpt()
    ref = snapshot(model)
    idx = batches(1)[0]
    seen, handles = record_projection_inputs(model)
    with quantized(model, "W8A8") as rec:
        model(idx)
        assert rec.skipped == ["lm_head"] and "lm_head" not in rec.activations
        assert len(rec.activations) == len(rec.weights) == 4 * L
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                assert on_grid(mod.weight, absmax_scale(ref[name + ".weight"], 8, "per_channel"))
        assert torch.equal(model.transformer.wte.weight, ref["transformer.wte.weight"])
    for h in handles:
        h.remove()
    for name, (x,) in seen.items():
        s = absmax_scale(x, 8, "per_token")
        if name == "lm_head":
            assert not on_grid(x, s, tol=1e-2), "lm_head input must stay full precision"
        else:  # per token: every token's absmax sits on code +-127
            codes = (x / s).round().abs().amax(-1)
            assert on_grid(x, s) and torch.equal(codes, torch.full_like(codes, 127.0)), name
    assert_same_state(model, ref)
    assert no_hooks(model)


def test_quantized_restores_on_exception_and_head_included_quantizes_tied_weight_once():
    model = tiny_gpt()
    ref = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), quantized(model, "W4A4"):
        raise RuntimeError("boom")
    assert_same_state(model, ref) and no_hooks(model)
    with quantized(model, QuantConfig(4, 8, include_head=True)) as rec:
        assert "lm_head" in rec.weights and rec.skipped == []
        expect = fake_quantize(ref["lm_head.weight"], 4, "per_channel")
        assert torch.equal(model.transformer.wte.weight, expect)  # quantized once, not twice
    assert_same_state(model, ref)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_per_sequence_scale_does_not_depend_on_batching():
    model = tiny_gpt()
    calm = batches(1, b=1)[0]
    with torch.no_grad(), quantized(model, "W8A8_per_sequence"):
        alone = model(calm)[0]
        loud_hook = model.transformer.h[0].register_forward_hook(
            lambda m, a, o: o + torch.tensor([0.0, 1e3]).reshape(2, 1, 1)  # only sequence 1
        )
        batched = model(torch.cat([calm, calm]))[0][:1]
        loud_hook.remove()
    torch.testing.assert_close(batched, alone)


# ----------------------------------------------------------------------------- static asymmetric


def test_static_asymmetric_known_values():
    x = torch.arange(-20.0, 80.0).reshape(1, 10, 10)  # -20 .. 79, n = 100
    lo, hi = percentile_range(x, 99.0)  # k = ceil(99) = 99: 99th smallest, 99th largest
    assert (lo.item(), hi.item()) == (-19.0, 78.0)
    assert percentile_range(x, 100.0) == (torch.tensor([-20.0]), torch.tensor([79.0]))
    scale, zp = asymmetric_params(-19.0, 78.0, 8)
    assert scale == pytest.approx(97 / 255) and zp == 50  # round(19 / (97/255)) = round(49.95)
    y = fake_quantize_asymmetric(torch.tensor([-20.0, -19.0, 0.0, 1.0, 78.0, 79.0]), scale, zp, 8)
    s = 97 / 255
    # -20: code -53+50 -> clamped to 0; 0 is exact; 79: code 208+50 -> clamped to 255
    expect = torch.tensor([-50 * s, -50 * s, 0.0, 3 * s, 205 * s, 205 * s])
    torch.testing.assert_close(y, expect)
    # a range on one side of 0 is widened to contain it: zero point 0 and 0 stays exact
    assert asymmetric_params(5.0, 10.0, 8) == (pytest.approx(10 / 255), 0)
    assert asymmetric_params(0.0, 0.0, 8) == (1.0, 0)
    for bad in (0.0, 50.0, 100.5, -1.0):
        with pytest.raises(ValueError, match="percentile"):
            percentile_range(x, bad)


def test_calibrated_ranges_are_per_sequence_means_and_independent_of_batching():
    model = tiny_gpt()
    cal = batches(2)
    targets = select_targets(model)
    ranges = calibrate_ranges(model, targets.inputs, cal, 99.0)
    seen, handles = record_projection_inputs(model)
    with torch.no_grad():
        for idx in cal:
            model(idx)
    for h in handles:
        h.remove()
    name = "transformer.h.1.mlp.c_proj"
    per_seq = [percentile_range(x, 99.0) for x in seen[name]]
    lo = torch.cat([p[0] for p in per_seq]).mean().item()
    hi = torch.cat([p[1] for p in per_seq]).mean().item()
    assert ranges[name] == (pytest.approx(lo, rel=1e-6), pytest.approx(hi, rel=1e-6))
    one_by_one = [idx[i : i + 1] for idx in cal for i in range(B)]
    again = calibrate_ranges(model, targets.inputs, one_by_one, 99.0)
    for n, (a, b) in ranges.items():
        assert again[n] == (pytest.approx(a, rel=1e-6), pytest.approx(b, rel=1e-6)), n


def test_static_quantized_uses_fixed_grids_and_restores():
    model = tiny_gpt()
    ref = snapshot(model)
    cal, idx = batches(2), batches(1, seed=5)[0]
    base = logits(model, idx)
    seen, handles = record_projection_inputs(model)
    with torch.no_grad(), static_quantized(model, cal) as rec:
        inside = model(idx)[0]
        alone = model(idx[:1])[0]
        assert rec.skipped == ["lm_head"] and len(rec.ranges) == 4 * L
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                assert on_grid(mod.weight, absmax_scale(ref[name + ".weight"], 8, "per_tensor"))
    for h in handles:
        h.remove()
    for name, r in rec.ranges.items():
        x = seen[name][len(cal)]  # the first forward after the calibration passes
        assert r.lo <= 0 <= r.hi or r.zero_point in (0, 255)
        codes = x / r.scale + r.zero_point
        assert on_grid(codes, 1.0) and codes.round().min() >= 0 and codes.round().max() <= 255
    torch.testing.assert_close(alone, inside[:1])  # static: no scale depends on the batch
    assert not torch.equal(inside, base)
    assert_same_state(model, ref) and no_hooks(model)
    assert torch.equal(logits(model, idx), base)


# ----------------------------------------------------------------------------- registry


def test_registry_names_kinds_and_errors():
    required = {
        "w8a8", "w6a6", "w4a8", "w4a16", "w4a4", "w8a8_per_sequence", "w8a8_static", "w8_absmax",
        "magnitude_50", "magnitude_50_matrix", "magnitude_2of4", "wanda_50", "wanda_2of4",
        "gamma_reset_one", "gamma_reset_mean", "set_zero", "set_mean", "residual_clip",
    }  # fmt: skip
    assert required <= set(list_methods()) == set(METHODS)
    assert all(METHODS[n].anchor for n in required), "every method names its anchor"
    assert set(list_methods("prune")) == {
        "magnitude_50", "magnitude_50_matrix", "magnitude_2of4", "wanda_50", "wanda_2of4"
    }  # fmt: skip
    with pytest.raises(ValueError, match="w8a8"):
        get_method("w3a3_magic")
    for name in ("wanda_50", "w8a8_static", "set_zero", "set_mean"):
        with pytest.raises(ValueError, match="calibration"):
            get_method(name)(tiny_gpt(), None)
    with pytest.raises(ValueError, match="unknown outlier thresholds"):
        get_method("gamma_reset_one")(tiny_gpt(), None, {"gama_tau": 4})


def test_w8_absmax_is_weight_only_per_tensor():
    model = tiny_gpt()
    ref = snapshot(model)
    with get_method("w8_absmax")(model) as rec:
        assert rec.activations == [] and no_hooks(model)
        w = model.transformer.h[0].mlp.c_fc.weight
        w0 = ref["transformer.h.0.mlp.c_fc.weight"]
        assert torch.equal(w, fake_quantize(w0, 8, "per_tensor"))
    assert_same_state(model, ref)


def plant_outliers(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """A gamma outlier (ln_1 of block 1, entry 4) and a massive activation: block 0 adds 1e4 at
    (token 0, dim 3) of every sequence's output."""
    with torch.no_grad():
        model.transformer.h[1].ln_1.weight[4] = 30.0

    def hook(mod, args, out):
        out = out.clone()
        out[:, 0, 3] += 1e4
        return out

    return model.transformer.h[0].register_forward_hook(hook)


def test_every_method_changes_the_output_and_restores():
    model = tiny_gpt()
    plant = plant_outliers(model)
    cal, idx = batches(2), batches(1, seed=7)[0]
    ref = snapshot(model)
    base = logits(model, idx)
    for name in list_methods():
        with torch.no_grad(), get_method(name)(model, cal, OutlierThresholds()) as rec:
            out = model(idx)[0]
            assert isinstance(rec.summary(), dict)
        assert (name == "baseline") == torch.equal(out, base), name
        assert_same_state(model, ref)
        assert [len(m._forward_hooks) for m in model.modules()].count(1) == 1, name  # the plant
        assert torch.equal(logits(model, idx), base), name
    with torch.no_grad(), apply_methods(model, ["gamma_reset_one", "w8a8"], cal) as recs:
        model(idx)
        assert recs[0].n_changed == 1 and recs[1].config.name == "W8A8"
    assert_same_state(model, ref)
    plant.remove()

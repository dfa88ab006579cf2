"""sysout.compress mitigation probes: norm gamma resets and Sun et al.'s set_zero / set_mean."""

from __future__ import annotations

import pytest
import torch
from test_compress import B, C, T, assert_same_state, batches, logits, snapshot, tiny_gpt
from torch import nn

from sysout.compress import (
    calibrate_massive_activations,
    find_gamma_outliers,
    find_massive_activation_layer,
    get_method,
    replace_massive_activations,
    reset_gamma_outliers,
)
from sysout.outliers.rules import OutlierThresholds

# ----------------------------------------------------------------------------- gamma


def test_gamma_reset_changes_exactly_the_planted_outliers():
    model = tiny_gpt()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "weight") and mod.weight is not None and mod.weight.dim() == 1:
                mod.weight.copy_(1.0 + 0.1 * torch.randn(C, generator=g))
        model.transformer.h[1].ln_2.weight[5] = 50.0
        model.transformer.ln_f.weight[2] = -40.0
        model.transformer.h[2].ln_1.weight[7] = 9.0  # below tau = 10: not an outlier
    ref = snapshot(model)
    expected = {"transformer.h.1.ln_2": [5], "transformer.ln_f": [2]}
    assert find_gamma_outliers(model) == expected
    for value in ("one", "mean"):
        with reset_gamma_outliers(model, OutlierThresholds(), value=value) as rec:
            assert rec.changed == expected and rec.n_changed == 2
            for name, (i,) in expected.items():
                w, w0 = model.get_submodule(name).weight, ref[name + ".weight"]
                keep = torch.arange(C) != i
                target = 1.0 if value == "one" else w0[keep].mean().item()
                assert w[i].item() == pytest.approx(target, abs=1e-6)
            for k, v in model.state_dict().items():
                if k.removesuffix(".weight") not in expected:
                    assert torch.equal(v, ref[k]), k
                else:
                    keep = torch.arange(C) != expected[k.removesuffix(".weight")][0]
                    assert torch.equal(v[keep], ref[k][keep]), k  # nothing else changed
        assert_same_state(model, ref)
    with pytest.raises(ValueError, match="value"):
        reset_gamma_outliers(model, value="zero").__enter__()


def test_gamma_threshold_comes_from_outlier_thresholds_and_zero_median_has_none():
    model = tiny_gpt()
    ln = model.transformer.h[0].ln_1
    with torch.no_grad():
        ln.weight[3] = 5.0  # 5x the median (1): an outlier for tau 4, not for the default 10
    with get_method("gamma_reset_one")(model) as default:
        assert default.changed == {}
    with get_method("gamma_reset_one")(model, None, {"gamma_tau": 4.0}) as loose:
        assert loose.changed == {"transformer.h.0.ln_1": [3]} and ln.weight[3] == 1.0
    assert ln.weight[3] == 5.0
    with torch.no_grad():
        ln.weight.zero_()
        ln.weight[0] = 3.0  # median 0: the ratio is undefined, the rule flags nothing
    assert find_gamma_outliers(model, OutlierThresholds(gamma_tau=4.0)) == {}


# ----------------------------------------------------------------------------- massive


def plant(model: nn.Module, first: float = 1e4, later: float | None = None):
    """Block 1 creates massive activations in dim 3: ``first`` at token 0 of every sequence and,
    if given, ``later`` at token 2 of sequence 0 only."""

    def hook(mod, args, out):
        out = out.clone()
        out[:, 0, 3] += first
        if later is not None:
            out[0, 2, 3] += later
        return out

    return model.transformer.h[1].register_forward_hook(hook)


def capture_block_inputs(model: nn.Module) -> tuple[dict[int, torch.Tensor], list]:
    seen: dict[int, torch.Tensor] = {}
    handles = [
        blk.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach().clone()))
        for i, blk in enumerate(model.transformer.h)
    ]
    return seen, handles


def test_massive_calibration_finds_the_creating_block_and_its_means():
    model = tiny_gpt()
    cal = batches(2)
    assert find_massive_activation_layer(model, cal) is None
    h = plant(model, first=1e4, later=-3e3)
    found = calibrate_massive_activations(model, cal)
    assert found.layer == 1
    seen, handles = capture_block_inputs(model)
    firsts, laters = [], []
    with torch.no_grad():
        for idx in cal:
            model(idx)
            out1 = seen[2]  # block 1's output = block 2's input
            firsts.append(out1[:, 0, 3])
            laters.append(out1[0, 2, 3])
    for hd in handles:
        hd.remove()
    means = found.means()
    assert means[0, 3].item() == pytest.approx(torch.cat(firsts).double().mean().item(), rel=1e-6)
    assert means[1, 3].item() == pytest.approx(torch.stack(laters).double().mean().item(), rel=1e-6)
    assert torch.isnan(means[:, :3]).all() and torch.isnan(means[:, 4:]).all()  # never flagged
    assert found.counts[0, 3] == 2 * B and found.counts[1, 3] == 2
    # a stricter abs threshold than the planted values finds nothing
    assert find_massive_activation_layer(model, cal, OutlierThresholds(abs_threshold=2e4)) is None
    h.remove()


@pytest.mark.parametrize("mode", ["set_zero", "set_mean", "clip"])
def test_replacement_changes_exactly_the_planted_entries_and_restores(mode):
    model = tiny_gpt()
    h = plant(model, first=1e4)
    cal, idx = batches(2), batches(1, seed=9)[0]
    ref = snapshot(model)
    before = logits(model, idx)
    seen, handles = capture_block_inputs(model)
    with torch.no_grad():
        model(idx)
    dense_out1 = seen[2].clone()  # block 1's output with the massive value
    found = calibrate_massive_activations(model, cal)
    with torch.no_grad(), replace_massive_activations(model, found, mode) as rec:
        inside = model(idx)[0]
        got = seen[2]
        assert rec.layer == 1 and rec.replaced == B and rec.unmatched == 0
    planted = torch.zeros(B, T, C, dtype=torch.bool)
    planted[:, 0, 3] = True
    assert torch.equal(got[~planted], dense_out1[~planted])  # nothing else touched
    if mode == "set_zero":
        expect = torch.zeros(B)
    elif mode == "set_mean":
        expect = found.means()[0, 3].expand(B)
    else:
        med = dense_out1.abs().reshape(B, -1).median(dim=1).values
        expect = torch.clamp(1000.0 * med, min=100.0)
    torch.testing.assert_close(got[:, 0, 3], expect)
    assert not torch.equal(inside, before)
    for hd in handles:
        hd.remove()
    # restored: only the plant's hook is left, parameters and output as before
    assert [len(m._forward_hooks) for m in model.modules()].count(1) == 1
    assert_same_state(model, ref)
    assert torch.equal(logits(model, idx), before)
    h.remove()


def test_set_mean_group_fallback_and_unmatched_dims():
    model = tiny_gpt()
    h = plant(model, first=1e4)  # calibration sees only first-token massive values in dim 3
    found = calibrate_massive_activations(model, batches(2))
    h.remove()

    def later_only(mod, args, out):  # evaluation: a later token in dim 3, and a new dim 5
        out = out.clone()
        out[:, 4, 3] += 2e4
        out[:, 4, 5] += 2e4
        return out

    h = model.transformer.h[1].register_forward_hook(later_only)
    seen, handles = capture_block_inputs(model)
    with torch.no_grad(), replace_massive_activations(model, found, "set_mean") as rec:
        model(batches(1, seed=4)[0])
    # dim 3 at a later token takes the dim's mean over both groups (here the first-token mean)
    torch.testing.assert_close(seen[2][:, 4, 3], found.means()[0, 3].expand(B))
    assert (seen[2][:, 4, 5] > 1e4).all()  # dim 5 had no calibration mean: left unchanged
    assert rec.replaced == B and rec.unmatched == B
    for hd in handles + [h]:
        hd.remove()


def test_no_massive_activation_installs_nothing():
    model = tiny_gpt()
    ref = snapshot(model)
    idx = batches(1)[0]
    base = logits(model, idx)
    with get_method("set_zero")(model, batches(2)) as rec:
        assert rec.layer is None and not any(b._forward_hooks for b in model.transformer.h)
        assert torch.equal(logits(model, idx), base) and rec.replaced == 0
    assert_same_state(model, ref)
    with pytest.raises(ValueError, match="mode"):
        replace_massive_activations(model, rec.calibration, "set_median").__enter__()

"""w8a8_static: Bondarenko et al.'s static INT8 of every op (residual sums included), its
estimators against reference computations, and the narrower w8a8_static_linear_inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_tiny import FAMILIES, LAYERS, VOCAB, tiny_model

from sysout.adapters import adapter_for, first_tensor
from sysout.compress import (
    ActQuantizer,
    StaticInt8Config,
    get_method,
    mse_weight_range,
    percentiles,
    static_int8,
)
from sysout.compress.static_ops import fake_quant_asymmetric
from sysout.model import build_gpt


def _batches(n: int, vocab: int, seed: int = 0, shape=(2, 16)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, shape, generator=g) for _ in range(n)]


def _tiny_gpt(layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(n_layer=layers, n_head=2, n_embd=16, block_size=16, vocab_size=97)
    return build_gpt(cfg, {"name": "softmax"}).eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- estimators
def test_percentiles_are_numpys_linear_interpolation():
    x = torch.randn(7, 301, generator=torch.Generator().manual_seed(0)) ** 3
    valid = x > -0.5
    for p in (99.999, 99.0, 90.0, 100.0):
        lo, hi = percentiles(x, p)
        ref = np.percentile(x.numpy(), (100 - p, p))
        assert (lo, hi) == pytest.approx(tuple(ref), rel=1e-6, abs=1e-7)
        lo, hi = percentiles(x, p, valid)
        ref = np.percentile(x[valid].numpy(), (100 - p, p))
        assert (lo, hi) == pytest.approx(tuple(ref), rel=1e-6, abs=1e-7)


def _grid_search_reference(w: np.ndarray, candidates=100, margin=0.5) -> tuple[float, float]:
    """Bondarenko's 1-D MSE grid, written out: thresholds k (max|w| + margin) / 100."""
    one_sided = w.min() >= 0
    step = (np.abs(w).max() + margin) / candidates
    losses = []
    for k in range(1, candidates + 1):
        c = k * step
        if one_sided:
            q = np.clip(np.round(w / (c / 255)), 0, 255) * (c / 255)
        else:
            q = np.clip(np.round(w / (c / 127)), -128, 127) * (c / 127)
        losses.append(((w - q) ** 2).sum())
    c = (int(np.argmin(losses)) + 1) * step
    return (0.0 if one_sided else -c), c


def test_weight_range_is_the_mse_grid_optimum_not_absmax():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 48, generator=g) * 0.3
    w[3, 5] = 6.0  # one outlier: absmax would waste the grid on it
    neg, pos = mse_weight_range(w)
    assert (neg, pos) == pytest.approx(_grid_search_reference(w.double().numpy()), rel=1e-6)
    assert pos < 6.0 and neg == -pos
    gamma = torch.rand(40, generator=g) + 0.5  # no negative entry: the unsigned grid 0..255
    neg, pos = mse_weight_range(gamma)
    assert neg == 0.0 and pos == pytest.approx(_grid_search_reference(gamma.double().numpy())[1])


def test_activation_range_is_an_ema_of_per_batch_percentiles():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(4, 9, 33, generator=g) * (i + 1) + i for i in range(4)]
    q = ActQuantizer("x", "residual")
    for x in xs:
        q(x)
    lo, hi = np.percentile(xs[0].numpy(), (0.001, 99.999))
    for x in xs[1:]:
        blo, bhi = np.percentile(x.numpy(), (0.001, 99.999))
        lo, hi = 0.1 * blo + 0.9 * lo, 0.1 * bhi + 0.9 * hi
    assert (q.lo, q.hi) == pytest.approx((lo, hi), rel=1e-5)
    q.estimating = False
    y = torch.linspace(-20, 20, 101)
    delta = (q.hi - min(q.lo, 0.0)) / 255
    zp = round(-min(q.lo, 0.0) / delta)
    ref = (torch.clamp(torch.round(y / delta) + zp, 0, 255) - zp) * delta
    assert torch.allclose(q(y), ref, atol=1e-6) and torch.equal(
        q(y), fake_quant_asymmetric(y, lo, hi, 8)
    )
    assert len(torch.unique(q(torch.randn(10_000)))) <= 256


# ----------------------------------------------------------------------------- every op
def _on_grid(x: torch.Tensor, q: ActQuantizer) -> bool:
    delta = (q.hi - min(q.lo, 0.0)) / 255
    zp = round(-min(q.lo, 0.0) / delta)
    codes = x.double() / delta + zp
    return bool(((codes - codes.round()).abs() < 1e-3).all()) and codes.min() > -1e-3


def _residuals_seen(model, idx) -> tuple[list, list]:
    """What the MLP norms read (the mid-block sums) and the block outputs, in a forward pass."""
    ad = adapter_for(model)
    mids, outs, handles = [], [], []
    for i in range(ad.num_layers()):
        p = ad.parts(i)
        if p.mlp_norm is not None:
            handles.append(
                p.mlp_norm.register_forward_pre_hook(lambda m, a: mids.append(a[0].detach()))
            )
        handles.append(p.block.register_forward_hook(lambda m, a, o: outs.append(first_tensor(o))))
    with torch.no_grad():
        ad.logits(idx)
    for h in handles:
        h.remove()
    return mids, outs


def test_every_op_of_a_tiny_hf_llama_is_quantized_the_residual_sums_included():
    model = tiny_model("llama")
    before, hooks = _state(model), _hooks(model)
    cal = _batches(6, VOCAB)
    with static_int8(model, cal) as rec:
        count = {k: rec.count(k) for k in rec.summary()["activations"]}
        assert count == {
            "embedding": 1, "norm": 2 * LAYERS + 1, "linear": 6 * LAYERS, "act": LAYERS,
            "mlp_product": LAYERS, "context": LAYERS, "softmax_in": LAYERS,
            "softmax_out": LAYERS, "residual": 2 * LAYERS,
        }  # fmt: skip
        assert len(rec.quantizers) == 15 * LAYERS + 2 and rec.batches == 4
        assert not rec.not_reached
        # weights: 7 projections and 2 norms per block, the final norm, the embedding table
        assert len(rec.weights) == 9 * LAYERS + 2 and "lm_head" not in rec.weights
        mids, outs = _residuals_seen(model, cal[0])
        for i in range(LAYERS):
            assert _on_grid(mids[i], rec.quantizers[f"{i}.attn_residual"]), i
            assert _on_grid(outs[i], rec.quantizers[f"{i}.residual"]), i
        assert F.softmax is not None and getattr(F.softmax, "original", None) is not None
        assert all(q.batches == 4 for q in rec.quantizers.values())
    assert getattr(F.softmax, "original", None) is None  # the real softmax is back
    assert _hooks(model) == hooks
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sysout_gpt_quantizes_its_residual_sums_and_keeps_the_tied_head_in_fp32():
    model = _tiny_gpt()
    before = _state(model)
    idx = _batches(1, 97, seed=5)[0]
    with torch.no_grad():
        base = model(idx)[0]
    with static_int8(model, _batches(4, 97)) as rec:
        assert rec.count("residual") == 4 and rec.count("context") == 2
        assert rec.count("softmax_in") == 0 and any("softmax" in n for n in rec.not_reached)
        assert {"transformer.wte", "transformer.wpe"} <= set(rec.weights)
        assert torch.equal(model.lm_head.weight, before["lm_head.weight"])  # head in fp32
        mids, outs = _residuals_seen(model, idx)
        assert all(_on_grid(m, rec.quantizers[f"{i}.attn_residual"]) for i, m in enumerate(mids))
        assert all(_on_grid(o, rec.quantizers[f"{i}.residual"]) for i, o in enumerate(outs))
        with torch.no_grad():
            quantized = model(idx)[0]
    assert not torch.equal(quantized, base)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(idx)[0], base) and _hooks(model) == 0


@pytest.mark.parametrize("kind", FAMILIES)
def test_every_hf_family_reaches_its_residual_sums(kind):
    model = tiny_model(kind)
    ad = adapter_for(model)
    for i in range(LAYERS):
        out_proj = ad.parts(i).attn_out_proj
        assert out_proj is not None and out_proj in list(ad.parts(i).attn.modules())
    with static_int8(model, _batches(4, VOCAB)) as rec:
        sums = 2 * LAYERS if ad.attention_residual else LAYERS  # parallel blocks: one sum
        assert rec.count("residual") == sums and rec.count("softmax_out") == LAYERS, kind
        assert rec.count("context") == LAYERS and not rec.not_reached, rec.not_reached
    assert ad.attention_residual == (kind not in ("phi", "gpt_neox"))  # NeoX: parallel default


def test_the_method_estimates_on_the_train_set_and_the_old_scope_keeps_its_name():
    model = _tiny_gpt()
    train, val = _batches(4, 97, seed=7), _batches(4, 97, seed=8)
    with get_method("w8a8_static")(model, {"calibration": val, "train": train}) as rec:
        ranges = {n: (q.lo, q.hi) for n, q in rec.quantizers.items()}
    with static_int8(model, train, StaticInt8Config()) as ref:
        assert ranges == {n: (q.lo, q.hi) for n, q in ref.quantizers.items()}
    with pytest.raises(ValueError, match="set 'train'"):
        get_method("w8a8_static")(model, {"calibration": val})
    with get_method("w8a8_static_linear_inputs")(model, val) as old:
        # only the projections' inputs: no residual, norm or attention quantizer
        assert set(old.ranges) == {n for n, _ in adapter_for(model).projections()}
    assert get_method("w8a8_static").calibration_set == "train"
    assert get_method("w8a8_static_linear_inputs").calibration_set == "calibration"


def test_a_softmax_the_attention_never_calls_is_named_not_reached():
    model = tiny_model("llama", attn="sdpa")
    ad = adapter_for(model)
    ad.ensure_eager = lambda: None  # keep SDPA: its softmax is out of reach
    with static_int8(ad, _batches(4, VOCAB)) as rec:
        assert rec.count("softmax_in") == 0 and rec.count("residual") == 2 * LAYERS
        assert sorted(rec.not_reached) == sorted(
            f"{i}.softmax_{io}" for i in range(LAYERS) for io in ("in", "out")
        )


def test_evaluate_calibrates_w8a8_static_on_the_runs_train_split(compose_train, tmp_path):
    import json
    from pathlib import Path

    from omegaconf import OmegaConf
    from test_evaluate import _save_ckpt

    from sysout.evaluation.run import evaluate

    run = tmp_path / "run"
    _save_ckpt(run / "checkpoints" / "last.ckpt")
    enwiki = compose_train("checkpoints=x", config_name="evaluate").calibration.train.fallback.path
    (tmp_path / "train.txt").write_text(Path(enwiki).read_text()[:20_000])
    (run / ".hydra").mkdir()
    OmegaConf.save(
        {"data": {"splits": {"train": {"kind": "local", "path": str(tmp_path / "train.txt")}}}},
        run / ".hydra" / "config.yaml",
    )
    cfg = compose_train(
        f"checkpoints={run}", "logger=none", "outlier_report=false", "progress=false",
        "max_eval_tokens=200", "methods=[w8a8_static,w8a8_static_linear_inputs]",
        "batch_size=2", config_name="evaluate",
    )  # fmt: skip
    (result,) = evaluate(cfg)
    assert result.error is None, result.error
    assert result.info["train_calibration_origin"] == "run data.splits.train"
    assert result.info["train_calibration_text"] == str(tmp_path / "train.txt")
    assert result.info["train_calibration_windows"] == 4 * 2  # 4 batches of batch_size
    assert result.info["calibration_origin"] == "fallback"  # the run has no val split
    by = {m.method: m for m in result.methods}
    assert by["w8a8_static"].error is None and by["w8a8_static_linear_inputs"].error is None
    details = by["w8a8_static"].details["w8a8_static"]
    assert details["calibration_batches"] == 4 and details["activations"]["residual"] == 2
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert "train_calibration_text" in json.dumps(saved)

"""Each variant's reference implementation against its SPEC formula, written here in float64."""

from __future__ import annotations

import math

import pytest
import torch

from sysout.attention import build_variant, variant_names

B, H, T, D = 2, 3, 7, 4
C = H * D


def _mask(t: int) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool).tril()


def _formula(name: str, q, k, v, x, params: dict[str, torch.Tensor], options: dict):
    """o [B, H, T, d] computed directly from SPEC section 3, plus the weights P of real values."""
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    s = s.masked_fill(~_mask(T), float("-inf"))
    softmax = torch.softmax(s, dim=-1)
    if name in ("softmax", "value_bias", "context_bias", "ca_scaling", "gated"):
        p = softmax
        o = p @ v
        if name == "value_bias":
            o = o + params["value_bias"][None, :, None, :]
        if name == "context_bias":
            e = torch.einsum("bhtd,hd->bht", q, params["key_bias"]) / math.sqrt(D)
            p0 = torch.exp(e) / (torch.exp(e) + torch.exp(s).sum(-1))
            o = o + p0[..., None] * params["value_bias"][None, :, None, :]
        if name == "ca_scaling":
            scale = 2 * torch.sigmoid(x @ params["scale_proj.weight"].T + params["scale_proj.bias"])
            o = o * scale.transpose(1, 2)[..., None]  # [B, T, H] -> [B, H, T, 1]
        if name == "gated":
            gate = torch.sigmoid(x @ params["gate_proj.weight"].T)  # [B, T, C]
            o = o * gate.view(B, T, H, D).transpose(1, 2)
        return o, p
    if name == "kv_bias":
        e = torch.einsum("bhtd,hd->bht", q, params["key_bias"]) / math.sqrt(D)
        weights = torch.softmax(torch.cat([e[..., None], s], dim=-1), dim=-1)
        p = weights[..., 1:]
        return p @ v + weights[..., :1] * params["value_bias"][None, :, None, :], p
    if name in ("sink_logit", "softmax1"):
        z = params.get("sink_logit", torch.zeros(H, dtype=q.dtype))
        p = torch.exp(s) / (torch.exp(z)[None, :, None] + torch.exp(s).sum(-1))[..., None]
        return p @ v, p
    if name == "sigmoid":
        p = torch.sigmoid(s - math.log(T))
        return p @ v, p
    if name == "clipped_softmax":
        gamma = -options["alpha"] / T
        p = torch.clamp((options["zeta"] - gamma) * softmax + gamma, 0, 1)
        return p @ v, p
    raise AssertionError(f"no formula for {name}")


OPTIONS = {"clipped_softmax": {"zeta": 1.0, "alpha": 2.0}}


@pytest.mark.parametrize("name", variant_names())
def test_forward_and_gradients_match_formula(name: str) -> None:
    torch.manual_seed(0)
    options = OPTIONS.get(name, {})
    variant = build_variant(name, H, C, impl="reference", **options).double()
    with torch.no_grad():  # non-trivial parameter values
        for p in variant.parameters():
            p.normal_(0.0, 0.5)
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    x = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    params = {n: p.detach().clone().requires_grad_() for n, p in variant.named_parameters()}

    out = variant(q, k, v, x)
    inputs = (q, k, v, x)
    ref_inputs = tuple(t.detach().clone().requires_grad_() for t in inputs)
    expected, weights = _formula(name, *ref_inputs, params, options)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(variant.attention_weights(q, k, x), weights)

    upstream = torch.randn_like(expected)
    wrt, ref_wrt = [*inputs, *variant.parameters()], [*ref_inputs, *params.values()]
    grads = torch.autograd.grad((out * upstream).sum(), wrt, allow_unused=True)
    ref_grads = torch.autograd.grad((expected * upstream).sum(), ref_wrt, allow_unused=True)
    for t, got, want in zip(wrt, grads, ref_grads, strict=True):
        got = torch.zeros_like(t) if got is None else got  # x is unused by most variants
        want = torch.zeros_like(t) if want is None else want
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", variant_names())
def test_float32_reference_close_to_float64(name: str) -> None:
    torch.manual_seed(1)
    variant = build_variant(name, H, C, impl="reference", **OPTIONS.get(name, {}))
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    x = torch.randn(B, T, C)
    out32 = variant(q, k, v, x)
    out64 = variant.double()(q.double(), k.double(), v.double(), x.double())
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


def test_key_mass_is_column_sum_of_weights() -> None:
    variant = build_variant("sigmoid", H, C, impl="reference")
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    x = torch.randn(B, T, C)
    mass = variant.key_mass(q, k, v, x)
    assert mass.shape == (B, H, T)
    torch.testing.assert_close(mass, variant.attention_weights(q, k, x).sum(dim=-2))


def test_softmax_rows_sum_to_one_and_sinks_leave_room() -> None:
    q, k = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    x = torch.randn(B, T, C)
    p = build_variant("softmax", H, C).attention_weights(q, k, x)
    torch.testing.assert_close(p.sum(-1), torch.ones(B, H, T))
    p1 = build_variant("softmax1", H, C).attention_weights(q, k, x)
    assert (p1.sum(-1) < 1).all()  # the off-by-one slot absorbs exp(0) / (1 + sum)


def test_unknown_variant_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown attention variant 'softmaxx'") as err:
        build_variant("softmaxx", H, C)
    for name in variant_names():
        assert name in str(err.value)


def test_bad_options_and_impl_are_rejected() -> None:
    with pytest.raises(ValueError, match="rejected options"):
        build_variant("softmax", H, C, temperature=2.0)
    with pytest.raises(ValueError, match="gate must be"):
        build_variant("gated", H, C, gate="rowwise")
    with pytest.raises(ValueError, match="attention.impl='cuda'"):
        build_variant("softmax", H, C, impl="cuda")


def test_variant_bias_vectors_are_kept_out_of_weight_decay() -> None:
    from sysout.training.optim import parameter_groups

    variant = build_variant("kv_bias", H, C)
    decay, no_decay = parameter_groups(variant, 0.1)
    assert not decay["params"]
    assert len(no_decay["params"]) == 2

"""Each variant's reference implementation against its SPEC formula, written here in float64."""

from __future__ import annotations

import math

import pytest
import torch

from sysout.attention import (
    AttentionVariant,
    VariantTraits,
    build_variant,
    causal_scores,
    get_variant_class,
    register_variant,
    variant_names,
    variants_with,
)
from sysout.attention.variants import Softmax

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
    if name == "relu":  # Guo et al.'s code: divided by the keys each query sees, i + 1
        p = torch.relu(s) / torch.arange(1, T + 1, dtype=s.dtype)[:, None]
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


@pytest.mark.parametrize("name", variant_names())
def test_weights_follow_the_declared_traits(name: str) -> None:
    """Rows sum to 1 (normalised), below 1 (normalised with a slot) or freely (not normalised),
    for non-trivial parameters: a wrongly declared trait fails here."""
    torch.manual_seed(2)
    variant = build_variant(name, H, C, impl="reference", **OPTIONS.get(name, {})).double()
    with torch.no_grad():
        for p in variant.parameters():
            p.normal_(0.0, 0.5)
    q, k = (torch.randn(B, H, T, D, dtype=torch.float64) * 2 for _ in range(2))
    p = variant.attention_weights(q, k, torch.randn(B, T, C, dtype=torch.float64))
    assert (p >= 0).all() and (p.triu(1) == 0).all()  # causal, non-negative
    rows = p.sum(-1)
    traits = get_variant_class(name).traits
    if traits.normalised and not traits.has_slot:
        torch.testing.assert_close(rows, torch.ones_like(rows))
    elif traits.normalised:
        assert ((rows > 0) & (rows < 1)).all()
    else:
        assert not torch.allclose(rows, torch.ones_like(rows), atol=1e-3)


def test_variants_with_reads_the_declared_traits() -> None:
    assert variants_with(has_slot=True) == ["kv_bias", "sink_logit", "softmax1"]
    assert set(variants_with(has_slot=True)) <= set(variants_with(normalised=True))
    assert variants_with(uses_block_size=True) == ["clipped_softmax"]
    everything = variants_with(fused=True) + variants_with(fused=False)
    assert sorted(everything) == variant_names()
    with pytest.raises(ValueError, match="unknown variant trait"):
        variants_with(parks=True)


class _ReferenceOnly(AttentionVariant):
    """A variant that does not opt in to the kernel."""

    name = "reference_only_test"
    traits = VariantTraits(normalised=True)

    def reference(self, q, k, v, x):
        return torch.matmul(self.attention_weights(q, k, x), v)

    def attention_weights(self, q, k, x):
        return torch.softmax(causal_scores(q, k), dim=-1)


def test_the_base_class_is_reference_only() -> None:
    """A variant that does not declare fused=True never runs the (softmax) kernel."""
    with pytest.raises(ValueError, match="no fused kernel path"):
        _ReferenceOnly(H, C, impl="triton")
    variant = _ReferenceOnly(H, C, impl="auto")
    assert not variant.fused
    q = torch.randn(B, H, T, D)
    assert variant.resolved_impl(q) == "reference"
    with pytest.raises(NotImplementedError):
        variant.kernel_arguments(torch.randn(B, T, C))


def test_registration_refuses_unsafe_declarations() -> None:
    class NoTraits(AttentionVariant):
        name = "no_traits_test"

    class ReluOverSoftmax(Softmax):  # new weights, but the parent's (softmax) kernel switches
        name = "relu_over_softmax_test"

        def attention_weights(self, q, k, x):
            return torch.relu(causal_scores(q, k).nan_to_num(neginf=0.0))

    with pytest.raises(TypeError, match="must declare `traits"):
        register_variant(NoTraits)
    with pytest.raises(TypeError, match="kernel_arguments come from Softmax"):
        register_variant(ReluOverSoftmax)
    assert "no_traits_test" not in variant_names()
    assert "relu_over_softmax_test" not in variant_names()


@pytest.mark.parametrize("name", variant_names())
def test_options_rebuild_the_variant_and_key_the_self_check(name: str) -> None:
    variant = build_variant(name, H, C, **OPTIONS.get(name, {}))
    again = build_variant(name, H, C, **variant.options())
    assert again.options() == variant.options() and repr(again) == repr(variant)
    q = torch.randn(B, H, T, D)
    assert again._self_check_key(q) == variant._self_check_key(q)
    for key, value in variant.options().items():
        assert f"{key}={value}" in repr(variant)


def test_self_check_key_tells_options_apart() -> None:
    q = torch.randn(B, H, T, D)
    a = build_variant("clipped_softmax", H, C, alpha=2.0)
    b = build_variant("clipped_softmax", H, C, alpha=3.0)
    assert a._self_check_key(q) != b._self_check_key(q)
    reference, auto = (build_variant("softmax", H, C, impl=i) for i in ("reference", "auto"))
    assert reference._self_check_key(q) == auto._self_check_key(q)  # impl is not an option


def test_relu_attention_divides_by_the_keys_each_query_sees() -> None:
    """With every score 1, relu attention is the running mean of the values (Guo et al.'s
    divisor i + 1; the paper's 1 / T would shrink early queries' outputs)."""
    q = torch.zeros(1, H, T, D, dtype=torch.float64)
    q[..., 0] = math.sqrt(math.sqrt(D))  # s = q . k / sqrt(d) = 1 with k = q
    v = torch.randn(1, H, T, D, dtype=torch.float64)
    out = build_variant("relu", H, C, impl="reference")(q, q, v, torch.zeros(1, T, C))
    running_mean = v.cumsum(dim=2) / torch.arange(1, T + 1, dtype=torch.float64)[:, None]
    torch.testing.assert_close(out, running_mean)
    # negative scores contribute nothing
    out = build_variant("relu", H, C, impl="reference")(q, -q, v, torch.zeros(1, T, C))
    assert (out == 0).all()


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


def test_weight_decay_of_bias_variants_follows_the_official_files() -> None:
    """nanoGPT's rule decays every parameter with dim >= 2; the official k', v' are 4-D, so
    kv_bias and context_bias decay them by default; decay_bias=false exempts them; the value
    bias (an official [C] vector) is never decayed."""
    from sysout.model import GPT, GPTConfig
    from sysout.training.optim import decayed_names, parameter_groups

    for name in ("kv_bias", "context_bias"):
        model = GPT(
            GPTConfig(block_size=8, vocab_size=32, n_layer=2, n_head=H, n_embd=C, attention=name)
        )
        nanogpt = {n for n, p in model.named_parameters() if p.dim() >= 2}
        assert decayed_names(model) == nanogpt
        assert {f"transformer.h.0.attn.variant.{b}" for b in ("key_bias", "value_bias")} <= nanogpt
        exempt = build_variant(name, H, C, decay_bias=False)
        decay, no_decay = parameter_groups(exempt, 0.1)
        assert not decay["params"] and len(no_decay["params"]) == 2
    decay, no_decay = parameter_groups(build_variant("value_bias", H, C), 0.1)
    assert not decay["params"] and len(no_decay["params"]) == 1
    with pytest.raises(ValueError, match="decay_bias"):
        build_variant("kv_bias", H, C, decay_bias="yes")


def test_clipped_softmax_gamma_uses_the_block_size_not_the_sequence_length() -> None:
    """A short sequence sees the gamma the model was trained with: the output of an 8-token
    prefix equals the first 8 rows of the same layer on a block-size window."""
    torch.manual_seed(0)
    block = 64
    variant = build_variant("clipped_softmax", H, C, impl="reference", block_size=block).double()
    q, k, v = (torch.randn(1, H, block, D, dtype=torch.float64) for _ in range(3))
    x = torch.randn(1, block, C, dtype=torch.float64)
    full = variant(q, k, v, x)
    short = variant(q[:, :, :8], k[:, :, :8], v[:, :, :8], x[:, :8])
    torch.testing.assert_close(short, full[:, :, :8], rtol=0, atol=1e-12)
    assert variant.gamma(8) == -12.0 / block  # alpha 12: the anchor's OPT script
    unbound = build_variant("clipped_softmax", H, C, impl="reference").double()
    assert unbound.gamma(8) == -1.5  # no block size configured: the key count


def test_gated_conditional_per_token_is_bondarenkos_gate() -> None:
    torch.manual_seed(0)
    variant = build_variant("gated", H, C, impl="reference", gate="conditional_per_token").double()
    assert torch.allclose(
        torch.sigmoid(variant.gate_bias), torch.full((H,), 0.25, dtype=torch.float64)
    )
    with torch.no_grad():
        variant.gate_weight.normal_(0.0, 0.5)
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    x = torch.randn(B, T, C, dtype=torch.float64)
    softmax_out = (
        torch.softmax(
            (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~_mask(T), float("-inf")), -1
        )
        @ v
    )
    gates = torch.stack(
        [
            torch.sigmoid(
                x[..., h * D : (h + 1) * D] @ variant.gate_weight[h] + variant.gate_bias[h]
            )
            for h in range(H)
        ],
        dim=1,
    )  # [B, H, T]: head h's gate reads only that head's slice of the input, token by token
    torch.testing.assert_close(variant(q, k, v, x), gates[..., None] * softmax_out)
    # causal: the output of token t does not move when later tokens change
    x2 = x.clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(variant(q, k, v, x2)[:, :, :-1], variant(q, k, v, x)[:, :, :-1])


def test_gated_old_name_warns_and_names_the_new_one(caplog) -> None:
    with pytest.warns(DeprecationWarning, match="use gate='conditional_per_token'") as record:
        variant = build_variant("gated", H, C, gate="conditional_per_head")
    assert "causal" in str(record[0].message) and "mean-pools" in str(record[0].message)
    assert "deprecated" in caplog.text  # also on the console, where DeprecationWarnings hide
    assert variant.options()["gate"] == "conditional_per_token"
    assert {n for n, _ in variant.named_parameters()} == {"gate_weight", "gate_bias"}


def test_gated_gate_init_follows_the_option() -> None:
    """normal: N(0, 0.02); torch_default: nn.Linear(d, 1)'s U(-1/sqrt(d), 1/sqrt(d))."""
    torch.manual_seed(0)
    wide = build_variant("gated", 4, 4 * 64, gate="conditional_per_token").gate_weight
    assert abs(wide.std().item() - 0.02) < 0.004
    torch.manual_seed(0)
    theirs = build_variant(
        "gated", 4, 4 * 64, gate="conditional_per_token", gate_init="torch_default"
    ).gate_weight
    bound = 1 / math.sqrt(64)
    assert theirs.abs().max() <= bound and theirs.abs().max() > 0.9 * bound
    assert abs(theirs.std().item() - bound / math.sqrt(3)) < 0.02  # uniform's std
    with pytest.raises(ValueError, match="gate_init applies to the conditional_per_token"):
        build_variant("gated", H, C, gate="elementwise", gate_init="torch_default")
    with pytest.raises(ValueError, match="gate_init must be one of"):
        build_variant("gated", H, C, gate="conditional_per_token", gate_init="xavier")

"""Fused attention kernels against a float64 reference written straight from SPEC section 3.

Without a GPU the kernels run on CPU tensors in the Triton interpreter, which this module
switches on below; with one they run for real (set TRITON_INTERPRET=1 to force the CPU path).
The reference materialises the T x T matrix: that is the point of it.
"""

from __future__ import annotations

import math
import os
import sys

import torch

# The interpreter must be chosen before triton is imported anywhere in the process.
_TRITON_ALREADY_IMPORTED = "triton" in sys.modules
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if INTERPRET and _TRITON_ALREADY_IMPORTED:
    import triton.language as _tl

    if type(_tl.zeros).__name__ == "JITFunction":  # triton was imported in compiled mode
        raise RuntimeError(
            "triton was imported before TRITON_INTERPRET=1 was set, so the CPU interpreter "
            "cannot run; set it in tests/conftest.py or in the environment"
        )

import pytest  # noqa: E402

from sysout.kernels import fused_attention, kernel_supported  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"


# --------------------------------------------------------------------------------------------
# Reference (float64, T x T)
# --------------------------------------------------------------------------------------------
def reference(
    q,
    k,
    v,
    *,
    mode="softmax",
    sink_logit=None,
    extra_key=None,
    extra_value=None,
    extra_slot="kv",
    out_scale=None,
    clip=None,
    sm_scale=None,
):
    """(o, lse, key_mass) in float64, from the formulas of SPEC section 3."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, T, D = q.shape
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)
    s = q @ k.transpose(-1, -2) * scale
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    lse = None
    if mode == "sigmoid":
        p = torch.sigmoid(s - math.log(T)) * causal  # T_k = number of keys
        o = p @ v
    elif mode == "relu":  # Guo et al.: divided by the number of keys query i sees, i + 1
        p = torch.relu(s) * causal / torch.arange(1, T + 1, dtype=s.dtype, device=s.device)[:, None]
        o = p @ v
    else:
        s = s.masked_fill(~causal, float("-inf"))
        front = []  # extra softmax columns in front of the real keys
        if extra_key is not None:
            e = torch.einsum("bhtd,hd->bht", q, extra_key.double())[..., None] * scale
        if extra_key is not None and extra_slot == "kv":
            front.append(e)
        if sink_logit is not None:
            front.append(sink_logit.double()[None, :, None, None].expand(B, H, T, 1))
        logits = torch.cat([*front, s], dim=-1)
        lse = torch.logsumexp(logits, dim=-1)
        w = torch.exp(logits - lse[..., None])
        p = w[..., len(front) :]
        if clip is not None:
            zeta, gamma = clip
            p = torch.clamp((zeta - gamma) * p + gamma, 0, 1) * causal
        o = p @ v
        if extra_key is not None:
            if extra_slot == "kv":
                p0 = w[..., :1]
            else:  # context: softmax([e, s])[:, 0], the real keys keep softmax(s)
                p0 = torch.exp(e - torch.logaddexp(e, lse[..., None]))
                lse = torch.logaddexp(e[..., 0], lse)
            o = o + p0 * extra_value.double()[None, :, None, :]
    mass = p.sum(dim=-2)
    if out_scale is not None:
        s_ = out_scale.double()
        o = o * (s_[..., None] if s_.dim() == 3 else s_)
    return o, lse, mass


# --------------------------------------------------------------------------------------------
# Variants: the switch combinations the attention registry uses (plus a few free combinations)
# --------------------------------------------------------------------------------------------
def make_kwargs(name: str, B: int, H: int, T: int, D: int, dtype, gen) -> dict:
    """Kernel kwargs for a variant; learned tensors require grad."""

    def rand(*shape, scale=1.0, grad=True):
        x = (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(DEVICE, dtype)
        return x.requires_grad_(grad)

    def gate(*shape, factor=1.0):  # a sigmoid-like positive scale
        x = factor * torch.sigmoid(torch.randn(*shape, generator=gen) * 2)
        return x.to(DEVICE, dtype).requires_grad_(True)

    kv = lambda: {"extra_key": rand(H, D), "extra_value": rand(H, D)}
    clip = (1.05, -4.0 / T)  # zeta > 1 and gamma < 0: both ends of the clamp are active
    return {
        "softmax": lambda: {},
        "sigmoid": lambda: {"mode": "sigmoid"},
        "relu": lambda: {"mode": "relu"},
        "sink_logit": lambda: {"sink_logit": rand(H)},
        "softmax1": lambda: {"sink_logit": torch.zeros(H, device=DEVICE, dtype=dtype)},
        "kv_bias": lambda: {**kv(), "extra_slot": "kv"},
        "context_bias": lambda: {**kv(), "extra_slot": "context"},
        "ca_scaling": lambda: {"out_scale": gate(B, H, T, factor=2.0)},
        "gated_channel": lambda: {"out_scale": gate(B, H, T, D)},
        "clipped_softmax": lambda: {"clip": clip},
        # free combinations of the switches
        "kv_sink": lambda: {**kv(), "sink_logit": rand(H)},
        "clip_sink_scaled": lambda: {
            "clip": clip,
            "sink_logit": rand(H),
            "out_scale": gate(B, H, T),
        },
        "sigmoid_gated": lambda: {"mode": "sigmoid", "out_scale": gate(B, H, T, D)},
        "relu_scaled": lambda: {"mode": "relu", "out_scale": gate(B, H, T)},
        "context_scaled": lambda: {**kv(), "extra_slot": "context", "out_scale": gate(B, H, T)},
        "sink_gated_channel": lambda: {"sink_logit": rand(H), "out_scale": gate(B, H, T, D)},
    }[name]()


VARIANTS = [
    "softmax",
    "sigmoid",
    "sink_logit",
    "softmax1",
    "kv_bias",
    "context_bias",
    "ca_scaling",
    "gated_channel",
    "clipped_softmax",
    "relu",
    "kv_sink",
    "clip_sink_scaled",
    "sigmoid_gated",
    "relu_scaled",
    "context_scaled",
    "sink_gated_channel",
]
# (B, H, T, d, dtype): odd lengths, one block and several, a single token, d = 32 / 64 / 128.
# The interpreter's blocks are 32 x 16 (see sysout/kernels/_common.py).
SHAPES = [
    (2, 2, 1, 32, torch.float32),
    (2, 2, 17, 32, torch.float32),
    (1, 3, 40, 64, torch.float32),
    (2, 1, 33, 64, torch.float16),
    (1, 2, 64, 32, torch.float16),  # a whole number of blocks
    (1, 2, 100, 128, torch.float32),  # many blocks, d = 128
]
if DEVICE == "cuda":  # real kernels: bf16 and longer sequences, d = 128, several blocks
    SHAPES += [
        (2, 3, 257, 64, torch.bfloat16),
        (1, 2, 1000, 128, torch.float16),
        (2, 2, 300, 32, torch.float32),
    ]
# max abs error / max(1, max |reference|); observed in the interpreter: ~1e-6 fp32, ~1e-3 fp16
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def assert_close(actual, expected, tol, what):
    """Max abs error within tol relative to the reference's scale (at least 1)."""
    assert actual is not None, what
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = (actual.double() - expected).abs().max().item()
    ref = max(1.0, expected.abs().max().item())
    assert err <= tol * ref, f"{what}: max abs err {err:.3g} > {tol * ref:.3g}"


def run_case(name, B, H, T, D, dtype, seed=0, sm_scale=None):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(B, H, T, D, generator=gen).to(DEVICE, dtype).requires_grad_(True)
        for _ in range(3)
    )
    kw = make_kwargs(name, B, H, T, D, dtype, gen)
    o, lse, mass = fused_attention(
        q, k, v, **kw, sm_scale=sm_scale, return_lse=True, return_key_mass=True
    )
    assert o.dtype == dtype and o.shape == (B, H, T, D)

    # The reference sees exactly the same (rounded) inputs, as float64 leaves.
    leaves = {"q": q, "k": k, "v": v}
    leaves.update({n: t for n, t in kw.items() if torch.is_tensor(t) and t.requires_grad})
    ref_leaves = {n: t.detach().double().requires_grad_(True) for n, t in leaves.items()}
    ref_kw = {n: ref_leaves.get(n, t) for n, t in kw.items()}
    ro, rlse, rmass = reference(*(ref_leaves[n] for n in "qkv"), **ref_kw, sm_scale=sm_scale)

    tol = TOL[dtype]
    assert_close(o, ro, tol, f"{name}: output")
    if rlse is None:
        assert lse is None
    else:
        assert lse.dtype == torch.float32
        assert_close(lse, rlse, tol, f"{name}: lse")
    assert mass.dtype == torch.float32
    assert_close(mass, rmass, tol, f"{name}: key mass")

    dy = torch.randn(B, H, T, D, generator=gen).to(DEVICE, dtype)
    names = list(leaves)
    grads = torch.autograd.grad(o, [leaves[n] for n in names], dy)
    ref_grads = torch.autograd.grad(ro, [ref_leaves[n] for n in names], dy.double())
    for n, g, rg in zip(names, grads, ref_grads):
        assert g.dtype == leaves[n].dtype, f"{name}: d{n} dtype"
        assert_close(g, rg, tol, f"{name}: d{n}")


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"B{s[0]}H{s[1]}T{s[2]}d{s[3]}-{str(s[4]).split('.')[-1]}"
)
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_float64_reference(name, shape):
    run_case(name, *shape)


def test_custom_sm_scale():
    run_case("kv_bias", 1, 2, 20, 32, torch.float32, seed=3, sm_scale=0.3)


def test_key_mass_rows_sum_to_one():
    """Plain softmax: every query row sums to 1, so the key masses sum to T."""
    B, H, T, D = 2, 2, 37, 32
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE) * 2 for _ in range(3))
    _, mass = fused_attention(q, k, v, return_key_mass=True)
    torch.testing.assert_close(mass.sum(-1), torch.full((B, H), float(T), device=DEVICE))
    # causal: the last key is seen by one query only, the first by all
    assert (mass >= 0).all() and (mass[..., -1] <= 1 + 1e-5).all()


def test_token_major_layout():
    """q, k, v as views of a fused [B, T, 3, H, d] projection (what GPT-2 produces)."""
    B, H, T, D = 2, 3, 19, 32
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, T, 3, H, D, generator=gen).to(DEVICE).requires_grad_(True)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    with torch.no_grad():
        o = fused_attention(q, k, v)
    ro, _, _ = reference(q, k, v)
    assert_close(o, ro, TOL[torch.float32], "token-major output")
    # the output keeps the token-major layout: merging heads back is a free view
    assert o.transpose(1, 2).is_contiguous()

    o = fused_attention(q, k, v, sink_logit=torch.zeros(H, device=DEVICE))
    dy = torch.randn(B, T, H, D, generator=gen).to(DEVICE)
    (g,) = torch.autograd.grad(o.transpose(1, 2).reshape(B, T, H * D), qkv, dy.view(B, T, -1))
    ref_leaf = qkv.detach().double().requires_grad_(True)
    rq, rk, rv = (ref_leaf[:, :, i].transpose(1, 2) for i in range(3))
    ro, _, _ = reference(rq, rk, rv, sink_logit=torch.zeros(H, device=DEVICE))
    (rg,) = torch.autograd.grad(ro, ref_leaf, dy.double().transpose(1, 2))
    assert_close(g, rg, TOL[torch.float32], "token-major dqkv")


def test_zero_out_scale_gradient():
    """dS must come from O itself: S = 0 rows (Y = 0) still get the right gradient."""
    B, H, T, D = 1, 2, 18, 32
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, H, T, D, generator=gen).to(DEVICE) for _ in range(3))
    scale = torch.rand(B, H, T, generator=gen).to(DEVICE)
    scale[:, :, ::3] = 0.0
    scale.requires_grad_(True)
    o = fused_attention(q, k, v, out_scale=scale)
    dy = torch.randn_like(o)
    (ds,) = torch.autograd.grad(o, scale, dy)
    ro, _, _ = reference(q, k, v)
    torch.testing.assert_close(ds.double(), (dy.double() * ro).sum(-1), atol=2e-5, rtol=1e-5)
    assert (ds[:, :, ::3] != 0).all()


def test_out_scale_without_grad():
    """A fixed scale: only Y is kept, Delta = rowsum(dY * Y), dO = S dY."""
    B, H, T, D = 1, 2, 21, 32
    gen = torch.Generator().manual_seed(4)
    q, k, v = (
        torch.randn(B, H, T, D, generator=gen).to(DEVICE).requires_grad_(True) for _ in range(3)
    )
    scale = torch.rand(B, H, T, D, generator=gen).to(DEVICE)
    o = fused_attention(q, k, v, out_scale=scale)
    dy = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), dy)
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ro, _, _ = reference(*leaves, out_scale=scale)
    ref_grads = torch.autograd.grad(ro, leaves, dy.double())
    for n, g, rg in zip("qkv", grads, ref_grads):
        assert_close(g, rg, TOL[torch.float32], f"d{n}")


def test_float64_autograd_of_a_loss():
    """End to end: gradients of a scalar loss through the kernel match float64 autograd."""
    B, H, T, D = 1, 2, 24, 32
    gen = torch.Generator().manual_seed(5)
    leaves = [torch.randn(B, H, T, D, generator=gen).to(DEVICE) for _ in range(3)]
    ek, ev = (torch.randn(H, D, generator=gen).to(DEVICE) * 0.5 for _ in range(2))
    leaves += [ek, ev]
    leaves = [t.requires_grad_(True) for t in leaves]
    loss = fused_attention(*leaves[:3], extra_key=leaves[3], extra_value=leaves[4]).square().mean()
    grads = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ro, _, _ = reference(*ref_leaves[:3], extra_key=ref_leaves[3], extra_value=ref_leaves[4])
    ref_grads = torch.autograd.grad(ro.square().mean(), ref_leaves)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), rg, atol=1e-6, rtol=1e-4)


def test_return_values_and_order():
    B, H, T, D = 1, 1, 5, 16
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE) for _ in range(3))
    assert torch.is_tensor(fused_attention(q, k, v))
    o, lse = fused_attention(q, k, v, return_lse=True)
    assert lse.shape == (B, H, T)
    o2, mass = fused_attention(q, k, v, return_key_mass=True)
    assert mass.shape == (B, H, T)
    o3, lse3, mass3 = fused_attention(
        q, k, v, mode="sigmoid", return_lse=True, return_key_mass=True
    )
    assert lse3 is None and mass3.shape == (B, H, T)


def test_invalid_arguments():
    q = torch.randn(1, 2, 8, 32, device=DEVICE)
    ek = torch.randn(2, 32, device=DEVICE)
    with pytest.raises(ValueError):
        fused_attention(q, q, q, mode="tanh")
    with pytest.raises(ValueError):
        fused_attention(q, q, q, mode="sigmoid", sink_logit=torch.zeros(2, device=DEVICE))
    with pytest.raises(ValueError):
        fused_attention(q, q, q, extra_key=ek)
    with pytest.raises(ValueError):
        fused_attention(q, q, q, out_scale=torch.ones(1, 2, 7, device=DEVICE))
    with pytest.raises(NotImplementedError):
        fused_attention(q, q, q, extra_key=ek, extra_value=ek, clip=(1.0, -0.1))
    with pytest.raises(ValueError):
        x = torch.randn(1, 2, 8, 48, device=DEVICE)
        fused_attention(x, x, x)


def test_kernel_supported():
    assert kernel_supported(torch.randn(1, 2, 8, 64, device=DEVICE))
    assert kernel_supported(torch.zeros(1, device=DEVICE))  # a device probe, any shape
    assert not kernel_supported(torch.zeros(1, device="meta"))


def test_custom_op_registration():
    """The forward op's fake (meta) function, schema and autograd registration agree with the
    real kernels (what torch.compile relies on)."""
    B, H, T, D = 1, 2, 17, 32
    gen = torch.Generator().manual_seed(6)
    q, k, v = (
        torch.randn(B, H, T, D, generator=gen).to(DEVICE).requires_grad_(True) for _ in range(3)
    )
    ek, ev = (torch.randn(H, D, generator=gen).to(DEVICE).requires_grad_(True) for _ in range(2))
    scale = torch.rand(B, H, T, D, generator=gen).to(DEVICE).requires_grad_(True)
    op = torch.ops.sysout.fused_attention_fwd.default
    # context slot, per-channel scale, key mass, unscaled output stored
    torch.library.opcheck(
        op, (q, k, v, None, ek, ev, scale, 0, 2, 2, False, 0.2, 1.0, 0.0, True, True)
    )
    # clipped softmax with a sink: two forward passes, Delta pass in backward
    sink = torch.randn(H, generator=gen).to(DEVICE).requires_grad_(True)
    torch.library.opcheck(
        op, (q, k, v, sink, None, None, None, 2, 0, 0, True, 0.2, 1.1, -0.1, False, False)
    )


def test_torch_compile_fullgraph():
    """Attention is one opaque op to torch.compile: no graph break, same values and grads."""
    B, H, T, D = 1, 2, 17, 32
    gen = torch.Generator().manual_seed(7)
    leaves = [torch.randn(B, H, T, D, generator=gen).to(DEVICE) for _ in range(3)]
    leaves += [torch.randn(H, generator=gen).to(DEVICE), torch.rand(B, H, T).to(DEVICE)]
    leaves = [t.requires_grad_(True) for t in leaves]

    def f(q, k, v, z, s):
        return fused_attention(q * 2, k, v, sink_logit=z, out_scale=s).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out_c = compiled(*leaves)
    grads_c = torch.autograd.grad(out_c, leaves)
    out_e = f(*leaves)
    grads_e = torch.autograd.grad(out_e, leaves)
    torch.testing.assert_close(out_c, out_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)

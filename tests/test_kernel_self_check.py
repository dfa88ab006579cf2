"""Trust, but verify: a kernel that disagrees with the reference is caught once and replaced.

The check runs by default on the first CUDA use of each case; here it is switched on for the
CPU interpreter (``set_kernel_self_check("on")``) and the kernel is made wrong on purpose.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import sysout.kernels
from sysout.attention import base, build_variant
from sysout.kernels import kernel_supported
from sysout.model import build_gpt

pytestmark = pytest.mark.skipif(
    not kernel_supported(torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu")),
    reason="needs CUDA or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CFG = dict(n_layer=2, n_head=2, n_embd=64, block_size=24, vocab_size=128)


@pytest.fixture()
def check_on():
    base.set_kernel_self_check("on")
    yield
    base.set_kernel_self_check("auto")


@pytest.fixture()
def calls(monkeypatch):
    """Count the kernel calls made outside the self-check's own."""
    real = sysout.kernels.fused_attention
    count = {"n": 0}

    def counted(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sysout.kernels, "fused_attention", counted)
    return count


def _wrong_kernel(monkeypatch):
    real = sysout.kernels.fused_attention

    def wrong(q, k, v, **kwargs):  # the right shape, a wrong answer (a dropped causal mask)
        out = real(q, k, v, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + 0.25 * v.mean(dim=2, keepdim=True), *out[1:])
        return out + 0.25 * v.mean(dim=2, keepdim=True)

    monkeypatch.setattr(sysout.kernels, "fused_attention", wrong)


def _losses_and_grads(model, idx):
    _, loss = model(idx, idx)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, grads


def test_wrong_kernel_warns_once_and_the_model_uses_the_reference(check_on, monkeypatch):
    _wrong_kernel(monkeypatch)
    torch.manual_seed(0)
    ref = build_gpt(CFG, {"name": "kv_bias", "impl": "reference"}).to(DEVICE)
    fused = build_gpt(CFG, {"name": "kv_bias", "impl": "triton"}).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 128, (2, 21), device=DEVICE)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two steps, two layers: one warning for the one case
            loss, grads = _losses_and_grads(fused, idx)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "'kv_bias'" in messages[0] and "reference" in messages[0]

    ref_loss, ref_grads = _losses_and_grads(ref, idx)
    torch.testing.assert_close(loss, ref_loss)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg)
    q = torch.zeros(1, 2, 4, 32, device=DEVICE)
    assert fused.transformer.h[0].attn.variant.resolved_impl(q) == "reference"


def test_correct_kernel_is_kept(check_on, calls):
    torch.manual_seed(0)
    variant = build_variant("sink_logit", 2, 64, impl="triton").to(DEVICE)
    q, k, v = (torch.randn(1, 2, 19, 32, device=DEVICE) for _ in range(3))
    x = torch.randn(1, 19, 64, device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert variant.resolved_impl(q) == "triton"
        before = calls["n"]
        out = variant(q, k, v, x)
    assert calls["n"] == before + 1  # the forward itself went through the kernel
    torch.testing.assert_close(out, variant.reference(q, k, v, x), rtol=1e-4, atol=1e-4)


def test_failing_kernel_is_replaced(check_on, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly aborted")  # what a compile error looks like

    monkeypatch.setattr(sysout.kernels, "fused_attention", broken)
    variant = build_variant("softmax", 2, 64, impl="auto")
    q = torch.randn(1, 2, 9, 32, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="PTX assembly aborted"):
        impl = variant.resolved_impl(q) if DEVICE == "cuda" else variant._kernel_trusted(q)
    assert impl in ("reference", False)


def test_check_off_keeps_the_kernel_unchecked(monkeypatch):
    base.set_kernel_self_check("off")
    try:
        _wrong_kernel(monkeypatch)
        variant = build_variant("softmax", 2, 64, impl="triton")
        q = torch.randn(1, 2, 9, 32, device=DEVICE)
        assert variant.resolved_impl(q) == "triton"  # no check, no verdict
    finally:
        base.set_kernel_self_check("auto")
    with pytest.raises(ValueError):
        base.set_kernel_self_check("sometimes")


def test_the_training_config_sets_the_self_check(compose_train) -> None:
    from sysout.training.run import train

    previous = base._SELF_CHECK[0]
    try:
        with pytest.raises(ValueError, match="self-check mode 'sometimes'"):
            train(compose_train("kernel_self_check=sometimes"))
        base.set_kernel_self_check("auto")
        cfg = compose_train(
            "model=gpt2_tiny",
            "logger=none",
            "callbacks=none",
            "trainer.max_steps=1",
            "data.val_windows=1",
            "test=false",
            "kernel_self_check=off",
        )
        train(cfg)
        assert base._SELF_CHECK[0] == "off"
    finally:
        base.set_kernel_self_check(previous)

"""The registry's ``impl=triton`` path: every fused variant equals its reference implementation."""

from __future__ import annotations

import pytest
import torch

from sysout.attention import build_variant, variants_with
from sysout.kernels import kernel_supported
from sysout.model import build_gpt

B, H, T, D = 2, 2, 19, 32  # T not a multiple of any block: exercises the masks
C = H * D
FUSED = variants_with(fused=True)  # what each class declares (reference-only ones: none here)

pytestmark = pytest.mark.skipif(
    not kernel_supported(torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu")),
    reason="needs CUDA or TRITON_INTERPRET=1",
)


@pytest.mark.parametrize("name", FUSED)
def test_fused_variant_matches_reference_with_gradients(name: str) -> None:
    torch.manual_seed(0)
    reference = build_variant(name, H, C, impl="reference")
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.3)
    fused = build_variant(name, H, C, impl="triton")
    fused.load_state_dict(reference.state_dict())
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    x = torch.randn(B, T, C, requires_grad=True)
    upstream = torch.randn(B, H, T, D)

    outputs, grads = [], []
    for module in (reference, fused):
        out = module(q, k, v, x)
        wrt = [q, k, v, x, *module.parameters()]
        g = torch.autograd.grad((out * upstream).sum(), wrt, allow_unused=True)
        outputs.append(out)
        grads.append([torch.zeros_like(t) if gi is None else gi for t, gi in zip(wrt, g)])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    mass = fused.key_mass(q, k, v, x)
    torch.testing.assert_close(mass, reference.key_mass(q, k, v, x), rtol=1e-4, atol=1e-4)


def test_gpt_trains_through_the_kernel_like_the_reference() -> None:
    cfg = dict(n_layer=2, n_head=2, n_embd=64, block_size=24, vocab_size=128)
    torch.manual_seed(0)
    ref = build_gpt(cfg, {"name": "kv_bias", "impl": "reference"})
    fused = build_gpt(cfg, {"name": "kv_bias", "impl": "triton"})
    fused.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 128, (2, 21))
    losses = []
    for model in (ref, fused):
        _, loss = model(idx, idx)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (name, p_ref), p_fused in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p_fused.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)

"""The kernels' one place per mode (sysout/kernels/_modes.py): the host table and the kernels'
compile-time view agree, every pointwise mode's derivative is the derivative of its weights,
and an unknown mode does not compile."""

from __future__ import annotations

import math

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from sysout.kernels import _modes, kernel_supported  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not kernel_supported(torch.zeros(1, device=DEVICE)), reason="needs CUDA or TRITON_INTERPRET=1"
)
N, M = 16, 16  # keys x queries: a tile laid out as in the backward ([keys, queries])
LOG2E = 1.4426950408889634


@triton.jit
def _flag_kernel(Out, MODE: tl.constexpr):
    tl.store(Out, 1 if _modes.normalised(MODE) else 0)


@triton.jit
def _tile_kernel(QK, W, DS, qk_scale, log2_tk, MODE: tl.constexpr, N: tl.constexpr,
                 M: tl.constexpr):  # fmt: skip
    offs_n, offs_m = tl.arange(0, N), tl.arange(0, M)
    offs = offs_n[:, None] * M + offs_m[None, :]
    qk = tl.load(QK + offs)
    row = _modes.row_stat(QK, offs_m, offs_m < M, MODE)[None, :]  # (pointwise modes: no load)
    p = _modes.probs(qk, row, qk_scale, log2_tk, MODE, False)
    p = tl.where(offs_m[None, :] >= offs_n[:, None], p, 0.0)  # the causal mask, as the backward
    tl.store(W + offs, _modes.weights(p, 1.0, 0.0, MODE))
    ones = tl.full(qk.shape, 1.0, tl.float32)  # dL/dW = 1: score_grad is dW/ds
    tl.store(DS + offs, _modes.score_grad(ones, p, qk, row, qk_scale, MODE))


def test_the_kernels_see_the_host_table() -> None:
    out = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    for name, traits in _modes.MODES.items():
        _flag_kernel[(1,)](out, traits.id)
        assert bool(out.item()) == traits.normalised, name
    assert _modes.CALLER_MODES[0] == "softmax" and "clip" not in _modes.CALLER_MODES
    assert set(_modes.POINTWISE) == {n for n, m in _modes.MODES.items() if not m.normalised}


def _pointwise(name: str, qk: torch.Tensor, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    w, ds = torch.empty_like(qk), torch.empty_like(qk)
    args = (sm_scale * LOG2E, math.log2(37.0), _modes.MODES[name].id, N, M)
    _tile_kernel[(1,)](qk, w, ds, *args)
    return w, ds


@pytest.mark.parametrize("name", _modes.POINTWISE)
def test_pointwise_score_grad_is_the_derivative_of_the_weights(name: str) -> None:
    """dW/ds from score_grad against central differences of the weights, away from s = 0 (a
    kink for some), and 0 where the causal mask zeroed the weights: a new pointwise mode is
    checked without a line here."""
    gen = torch.Generator().manual_seed(0)
    sm_scale, h = 0.125, 1e-2
    qk = torch.randn(N, M, generator=gen, dtype=torch.float64) * 8
    qk = torch.where(qk.abs() < 4 * h, qk + 8 * h, qk).float().to(DEVICE)
    w, ds = _pointwise(name, qk, sm_scale)
    w_plus, _ = _pointwise(name, qk + h, sm_scale)
    w_minus, _ = _pointwise(name, qk - h, sm_scale)
    numeric = (w_plus.double() - w_minus.double()) / (2 * h * sm_scale)
    torch.testing.assert_close(ds.double(), numeric, rtol=2e-3, atol=1e-4)
    assert torch.isfinite(w).all() and (w >= 0).all() and (ds != 0).any()
    future = torch.ones(N, M, dtype=torch.bool, device=DEVICE).tril(-1)  # key j > query i
    assert (w[future] == 0).all() and (ds[future] == 0).all()


def test_an_unknown_mode_does_not_compile() -> None:
    qk = torch.zeros(N, M, device=DEVICE)
    with pytest.raises(Exception, match="unknown attention kernel MODE|CompilationError"):
        _tile_kernel[(1,)](qk, qk.clone(), qk.clone(), 1.0, 1.0, 99, N, M)

"""Offset arithmetic of the kernels past 2^31, and the 1-D grid, without allocating anything big.

A token-major q of [B, T, 3C] puts row t at t * 3C: past 2^31 elements at T ~ 930K for C = 768.
The kernels form every tile address with ``tile_offsets`` (64-bit block start, 32-bit offsets
inside the tile); here a tiny kernel writes those offsets out for a block that starts beyond
2^31, in the interpreter or on a GPU, and they are compared with exact integers.
"""

from __future__ import annotations

import pytest
import torch

from sysout.kernels import kernel_supported

pytestmark = pytest.mark.skipif(
    not kernel_supported(torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu")),
    reason="needs CUDA or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from sysout.kernels._common import program_block, tile_offsets, tile_offsets_t  # noqa: E402


@triton.jit
def _offsets_kernel(Out, OutT, start, stride, R: tl.constexpr, C: tl.constexpr):
    offs_r = tl.arange(0, R)
    offs_c = tl.arange(0, C)
    tl.store(
        Out + offs_r[:, None] * C + offs_c[None, :], tile_offsets(start, stride, offs_r, offs_c)
    )
    tl.store(
        OutT + offs_c[:, None] * R + offs_r[None, :], tile_offsets_t(start, stride, offs_r, offs_c)
    )


@triton.jit
def _grid_kernel(Block, Head, num_blocks, BH, HEAVY_FIRST: tl.constexpr):
    block, hz = program_block(num_blocks, BH, HEAVY_FIRST)
    tl.store(Block + tl.program_id(0), block)
    tl.store(Head + tl.program_id(0), hz)


@pytest.mark.parametrize(
    "start, stride",
    [
        (930_000, 3 * 768),  # GPT-2 small, token-major q at T = 930K: 2.14e9 > 2^31
        (2**20 + 3, 2**12 + 16),  # 4.3e9 > 2^32: a 32-bit product would wrap past zero
        (17, 48),  # an ordinary tile
    ],
)
def test_tile_offsets_are_exact_past_2_31(start: int, stride: int) -> None:
    R, C = 16, 32
    out = torch.empty(R, C, dtype=torch.int64, device=DEVICE)
    out_t = torch.empty(C, R, dtype=torch.int64, device=DEVICE)
    _offsets_kernel[(1,)](out, out_t, start, stride, R=R, C=C)
    rows = torch.arange(R, dtype=torch.int64)[:, None]
    cols = torch.arange(C, dtype=torch.int64)[None, :]
    expected = (start + rows) * stride + cols  # exact: Python-sized integers in int64
    if start * stride >= 2**31:
        assert expected.min() >= 2**31  # the case the test is about
    assert torch.equal(out.cpu(), expected)
    assert torch.equal(out_t.cpu(), expected.T)


@pytest.mark.parametrize("heavy_first", [True, False])
def test_one_dimensional_grid_covers_every_block_and_head(heavy_first: bool) -> None:
    num_blocks, bh = 3, 5  # the grid holds num_blocks * B * H programs in its first dimension
    block = torch.empty(num_blocks * bh, dtype=torch.int32, device=DEVICE)
    head = torch.empty_like(block)
    _grid_kernel[(num_blocks * bh,)](block, head, num_blocks, bh, HEAVY_FIRST=heavy_first)
    pairs = list(zip(block.tolist(), head.tolist()))
    assert sorted(pairs) == [(b, h) for b in range(num_blocks) for h in range(bh)]
    # the first wave takes one block of every head: the last block (longest causal rows) first
    assert {b for b, _ in pairs[:bh]} == {num_blocks - 1 if heavy_first else 0}

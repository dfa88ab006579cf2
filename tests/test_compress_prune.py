"""sysout.compress pruning: magnitude (per row, per matrix), Wanda, N:M, through the adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from test_compress import (
    B,
    C,
    V,
    assert_same_state,
    batches,
    no_hooks,
    snapshot,
    tiny_gpt,
)
from torch import nn

from sysout.compress import (
    build_mask,
    collect_input_norms,
    magnitude_scores,
    matrix_mask,
    pruned,
    semi_structured_mask,
    unstructured_row_mask,
    wanda_scores,
)


def test_row_mask_exact_count_and_ties():
    torch.manual_seed(0)
    s = torch.rand(6, 10)
    mask = unstructured_row_mask(s, 0.35)  # floor(3.5) = 3 removed per row
    assert torch.equal((~mask).sum(1), torch.full((6,), 3))
    for r in range(6):
        assert set(torch.nonzero(~mask[r]).flatten().tolist()) == set(s[r].argsort()[:3].tolist())
    tie = unstructured_row_mask(torch.ones(2, 6), 0.5)  # lower index removed first
    assert torch.equal(tie, torch.tensor([[False] * 3 + [True] * 3] * 2))
    assert unstructured_row_mask(s, 0.0).all()
    with pytest.raises(ValueError, match="sparsity"):
        unstructured_row_mask(s, 1.5)


def test_per_matrix_and_per_row_magnitude_choose_differently_on_a_planted_matrix():
    # row 0 holds large weights, row 1 small ones: one threshold per matrix empties row 1,
    # per row removes the two smallest of each row
    w = torch.tensor([[10.0, 9.0, 8.0, 7.0], [1.0, -4.0, 3.0, 2.0]])
    row = build_mask(magnitude_scores(w), "unstructured", 0.5)
    mat = build_mask(magnitude_scores(w), "matrix", 0.5)
    assert row.tolist() == [[True, True, False, False], [False, True, True, False]]
    assert mat.tolist() == [[True, True, True, True], [False, False, False, False]]
    assert (~mat).sum() == 4 and (~matrix_mask(w.abs(), 0.3)).sum() == 2  # floor(0.3 * 8)
    ties = matrix_mask(torch.ones(2, 3), 0.5)  # lower row-major index removed first
    assert ties.tolist() == [[False, False, False], [True, True, True]]


def test_semi_structured_mask_2of4():
    torch.manual_seed(0)
    s = torch.rand(5, 16)
    groups = semi_structured_mask(s, 2, 4).reshape(5, 4, 4)
    assert torch.equal(groups.sum(-1), torch.full((5, 4), 2))
    top2 = s.reshape(5, 4, 4).topk(2, dim=-1).indices
    assert groups.gather(-1, top2).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        semi_structured_mask(torch.rand(3, 10))
    with pytest.raises(ValueError, match="pattern"):
        build_mask(s, "per_column")


def _linears(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]


def test_pruned_magnitude_patterns_exact_sparsity_and_restore():
    model = tiny_gpt()
    ref = snapshot(model)
    with pruned(model, "magnitude", "unstructured", 0.5) as rec:
        for name, mod in _linears(model):
            zeros = (mod.weight == 0).sum(1)
            assert torch.equal(zeros, torch.full_like(zeros, mod.in_features // 2)), name
        assert rec.overall_sparsity == pytest.approx(0.5) and rec.skipped == ["lm_head"]
        assert torch.equal(model.transformer.wte.weight, ref["transformer.wte.weight"])
    assert_same_state(model, ref)
    with pruned(model, "magnitude", "matrix", 0.5):
        for name, mod in _linears(model):
            w0 = ref[name + ".weight"].abs()
            kept = mod.weight != 0
            assert kept.sum() == w0.numel() // 2, name
            assert w0[kept].min() >= w0[~kept].max(), name  # one threshold for the matrix
    assert_same_state(model, ref)
    with pruned(model, "magnitude", "2:4"):
        for name, mod in _linears(model):
            g = (mod.weight != 0).reshape(mod.out_features, -1, 4).sum(-1)
            assert torch.equal(g, torch.full_like(g, 2)), name
    assert_same_state(model, ref)
    with pytest.raises(KeyError), pruned(model, "magnitude", "2:4"):
        raise KeyError("restored on an exception too")
    assert_same_state(model, ref)


def test_collect_input_norms_matches_direct_computation():
    model = tiny_gpt()
    model.train()
    cal = batches(3)
    norms = collect_input_norms(model, cal)
    assert model.training  # mode restored
    with torch.no_grad():
        xs, fin = [], []
        for idx in cal:
            x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(idx.shape[1]))
            xs.append(model.transformer.h[0].ln_1(x).reshape(-1, C))
            for blk in model.transformer.h:
                x = blk(x)
            fin.append(model.transformer.ln_f(x).reshape(-1, C))
    direct = torch.cat(xs).norm(dim=0)
    assert torch.allclose(norms["transformer.h.0.attn.c_attn"], direct, rtol=1e-5)
    assert torch.allclose(norms["lm_head"], torch.cat(fin).norm(dim=0), rtol=1e-5)
    name = "transformer.h.1.mlp.c_proj"
    only = collect_input_norms(model, cal, [name])
    assert list(only) == [name] and only[name].shape == (4 * C,)
    assert no_hooks(model)
    with pytest.raises(KeyError, match="not a projection"):
        collect_input_norms(model, cal, ["transformer.h.0.ln_1"])
    with pytest.raises(TypeError, match="LongTensor"):
        collect_input_norms(model, [torch.rand(B, 4)])


def test_wanda_and_magnitude_choose_differently():
    w = torch.tensor([[1.0, 0.9, 0.5, 0.4]])
    norm = torch.tensor([1.0, 1.0, 1.0, 100.0])  # column 3: tiny weights, huge inputs
    assert unstructured_row_mask(magnitude_scores(w)).tolist() == [[True, True, False, False]]
    assert unstructured_row_mask(wanda_scores(w, norm)).tolist() == [[True, False, False, True]]
    model = tiny_gpt()
    attn = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        model.transformer.h[0].ln_1.weight[3] = 100.0
        attn.weight[:, 3] = 1e-3
    ref = snapshot(model)
    with pruned(model, "magnitude"):
        assert (attn.weight[:, 3] == 0).all()
    with pruned(model, "wanda", calibration=batches(2)):
        assert (attn.weight[:, 3] != 0).all()
    assert_same_state(model, ref)


def test_wanda_sequential_uses_pruned_earlier_blocks():
    model = tiny_gpt()
    cal = batches(2)
    name = "transformer.h.1.mlp.c_fc"
    dense = collect_input_norms(model, cal, [name])[name]
    with pruned(model, "wanda", calibration=cal) as rec:
        seq = rec.input_norms[name]
    ref_model = copy.deepcopy(model)  # reference: prune block 0 only, then measure block 1
    later = ("transformer.h.1.*", "transformer.h.2.*")
    with pruned(ref_model, "wanda", calibration=cal, skip=later):
        expect = collect_input_norms(ref_model, cal, [name])[name]
    assert torch.allclose(seq, expect, rtol=1e-5)
    assert not torch.allclose(seq, dense, rtol=1e-3)
    with pruned(model, "wanda", calibration=cal, sequential=False) as rec:
        assert torch.allclose(rec.input_norms[name], dense, rtol=1e-5)


def test_head_included_prunes_the_tied_embedding_once_and_bad_input_fails_early():
    model = tiny_gpt()
    ref = snapshot(model)
    wte = model.transformer.wte.weight
    with pruned(model, "magnitude", include_head=True) as rec:
        assert "lm_head" in rec.modules
        assert torch.equal((wte == 0).sum(1), torch.full((V,), C // 2))  # pruned once
    assert_same_state(model, ref)
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ValueError, match="calibration"):
        pruned(model, "wanda").__enter__()
    with pytest.raises(ValueError, match="pruning method"):
        pruned(model, "random").__enter__()
    with pytest.raises(TypeError, match="no sysout adapter"):
        pruned(nn.Sequential(nn.Linear(4, 4)), "magnitude").__enter__()

"""Outlier statistics (sysout.outliers) on synthetic tensors with planted outliers."""

from __future__ import annotations

import math

import pytest
import torch

from sysout.outliers import (
    ActivationOutlierStats,
    OutlierThresholds,
    activation_outliers,
    attention_mass,
    attention_outliers,
    channel_outliers,
    dimension_consistency,
    gamma_channel_coincidence,
    gamma_outliers,
    inf_norm,
    kurtosis,
    kurtosis_per_sample,
    moment_stats,
    outlier_consistency,
    position_consistency,
    weight_outliers,
    weight_outliers_by_name,
)


def _signed_ones(*shape: int) -> torch.Tensor:
    """+-1 background (|h| = 1 everywhere, so median |h| = 1)."""
    g = torch.Generator().manual_seed(0)
    return torch.where(torch.rand(*shape, generator=g) < 0.5, -1.0, 1.0)


def _check_scalars(s: dict[str, float]) -> None:
    assert s and all(isinstance(k, str) and "/" not in k for k in s)
    assert all(type(v) is float for v in s.values())


# ----------------------------------------------------------------------------- activations
def test_activation_planted_outliers_exact():
    h = _signed_ones(2, 8, 16)
    h[0, 0, 5] = 2000.0
    h[0, 3, 5] = -1500.0
    h[1, 2, 7] = 50.0  # large but below the absolute threshold
    st = activation_outliers(h)
    assert isinstance(st, ActivationOutlierStats)
    # Per sequence, then averaged (the anchors' layer curves): sequence 0's top-3 are
    # (2000, 1500, 1), sequence 1's (50, 1, 1); the pooled top-3 would be (2000, 1500, 50).
    assert (st.top1, st.top2, st.top3) == (1025.0, 750.5, 1.0)
    assert st.pooled_top1 == 2000.0
    assert st.median == 1.0
    assert st.mean == pytest.approx((253 + 2000 + 1500 + 50) / 256, rel=1e-12)
    assert st.ratio == 1025.0
    assert st.count == 2
    assert st.positions == [(0, 0, 5, 2000.0), (0, 3, 5, -1500.0)]
    assert all(type(v) is int for p in st.positions for v in p[:3])
    assert st.dims == [5]
    assert st.tokens == [(0, 0), (0, 3)]
    assert st.numel == 256 and not st.truncated
    # token rule: 1000 x mean = 14855 > 2000 -> nothing flagged
    assert st.token_rule_count == 0 and st.token_rule_tokens == []
    s = st.scalars()
    _check_scalars(s)
    assert s["count"] == 2.0 and s["num_dims"] == 1.0 and s["num_tokens"] == 2.0
    assert s["ratio"] == 1025.0 and s["top1"] == 1025.0 and s["pooled_top1"] == 2000.0


def test_activation_median_and_rule_are_per_sequence():
    # Sequence 0 is quiet (median 0.01), sequence 1 loud (median 1): 150 in sequence 0 is massive
    # against its own median although the pooled median (1) would not flag it.
    h = torch.cat([torch.full((1, 4, 8), 0.01), torch.ones(1, 4, 8)])
    h[0, 2, 3] = 150.0
    st = activation_outliers(h)
    assert st.median == pytest.approx((0.01 + 1.0) / 2)
    assert st.positions == [(0, 2, 3, 150.0)]
    assert st.pooled_top1 == 150.0 and st.top1 == pytest.approx((150.0 + 1.0) / 2)


def test_first_token_norm_ratio_is_the_residual_peak():
    h = torch.ones(3, 5, 4)
    h[:, 0] *= 6.0  # the first token's norm is 6x every other token's
    assert activation_outliers(h).first_token_norm_ratio == pytest.approx(6.0)


def test_activation_threshold_edges():
    # median 0.0625 -> 1000 x median = 62.5 < 100: the absolute threshold decides (strict >)
    h = torch.full((1, 4, 64), 0.0625)
    h[0, 1, 3] = 100.0  # exactly at 100: NOT an outlier
    h[0, 2, 4] = 100.5
    st = activation_outliers(h)
    assert st.count == 1 and st.positions == [(0, 2, 4, 100.5)]

    # median 0.125 -> 1000 x median = 125 > 100: the relative threshold decides (>=)
    h = torch.full((1, 4, 64), 0.125)
    h[0, 0, 1] = 125.0  # exactly 1000 x median: IS an outlier
    h[0, 3, 2] = float(torch.nextafter(torch.tensor(125.0), torch.tensor(0.0)))
    st = activation_outliers(h)
    assert st.median == 0.125
    assert st.count == 1 and st.positions == [(0, 0, 1, 125.0)]

    # a large value with a large median is not an outlier
    h = torch.full((2, 4, 8), 10.0)
    h[1, 1, 1] = 5000.0
    st = activation_outliers(h)
    assert st.count == 0 and st.positions == [] and st.dims == [] and st.tokens == []
    assert st.ratio == pytest.approx((10.0 + 5000.0) / 2 / 10.0)  # mean per-sequence top-1

    # thresholds are keyword arguments
    st = activation_outliers(h, OutlierThresholds(median_ratio=100.0))
    assert st.positions == [(1, 1, 1, 5000.0)]


def test_activation_token_rule():
    h = torch.full((1, 2000, 4), 0.01)
    h[0, 7, 2] = 100.0  # not an element outlier (strict > 100) but > 1000 x mean
    st = activation_outliers(h)
    assert st.mean == pytest.approx((7999 * 0.01 + 100) / 8000, rel=1e-6)
    assert st.count == 0
    assert st.token_rule_count == 1 and st.token_rule_tokens == [(0, 7)]
    assert st.mean_ratio == pytest.approx(100.0 / st.mean)
    assert activation_outliers(h, OutlierThresholds(token_mean_ratio=5000.0)).token_rule_count == 0


def test_activation_truncation_keeps_largest_in_row_major_order():
    h = _signed_ones(2, 4, 8)
    h[0, 0, 5] = 1500.0
    h[0, 3, 5] = 2000.0
    h[1, 1, 1] = -1800.0
    st = activation_outliers(h, OutlierThresholds(max_positions=2))
    assert st.count == 3 and st.truncated
    assert st.positions == [(0, 3, 5, 2000.0), (1, 1, 1, -1800.0)]
    assert st.dims == [1, 5]  # dims and tokens use all outliers
    assert st.tokens == [(0, 0), (0, 3), (1, 1)]


def test_activation_bf16_and_2d_input():
    h = _signed_ones(1, 6, 32)
    h[0, 2, 9] = -2048.0
    ref = activation_outliers(h)
    st = activation_outliers(h.to(torch.bfloat16))
    assert st.positions == ref.positions == [(0, 2, 9, -2048.0)]
    assert st.scalars() == ref.scalars()
    st2 = activation_outliers(h[0])  # [T, C] = one sample
    assert st2.positions == ref.positions and st2.tokens == [(0, 2)]
    with pytest.raises(ValueError):
        activation_outliers(torch.ones(2, 2, 2, 2))


# ----------------------------------------------------------------------------- weights
def test_weight_ratios_by_hand():
    w = torch.ones(4, 5)
    w[1, 2] = -9.0
    st = weight_outliers(w)
    # row 1: max 9, mean (4 + 9) / 5 = 2.6 -> 45/13; column 2: max 9, mean 12/4 = 3 -> 3
    assert st.max_row_ratio == pytest.approx(45 / 13, rel=1e-6)
    assert st.argmax_row == 1
    assert st.max_col_ratio == 3.0
    assert st.argmax_col == 2
    assert st.row_ratios.tolist() == pytest.approx([1.0, 45 / 13, 1.0, 1.0], rel=1e-6)
    assert st.col_ratios.tolist() == [1.0, 1.0, 3.0, 1.0, 1.0]
    assert st.median_row_ratio == 1.0 and st.median_col_ratio == 1.0
    assert st.outlier_rows == [1]
    assert st.outlier_cols == [2]  # exactly 3.0 x median: included (>=)
    assert st.shape == (4, 5) and st.max_abs == 9.0
    assert weight_outliers(w, OutlierThresholds(weight_rel_threshold=3.5)).outlier_rows == []
    assert weight_outliers(w, OutlierThresholds(weight_rel_threshold=3.01)).outlier_cols == []
    s = st.scalars()
    _check_scalars(s)
    assert s["num_outlier_rows"] == 1.0 and s["argmax_col"] == 2.0


def test_weight_zero_rows_bf16_and_mapping():
    w = torch.zeros(3, 4)
    w[0] = torch.tensor([1.0, 2.0, 3.0, 2.0])
    st = weight_outliers(w.to(torch.bfloat16))
    assert st.row_ratios.tolist() == [1.5, 1.0, 1.0]  # all-zero rows count as constant
    assert st.row_ratios.dtype == torch.float32
    out = weight_outliers_by_name({"a.weight": w, "a.bias": torch.ones(3), "b.weight": w.T})
    assert list(out) == ["a.weight", "b.weight"]
    assert out["b.weight"].col_ratios.tolist() == out["a.weight"].row_ratios.tolist()
    with pytest.raises(ValueError):
        weight_outliers(torch.ones(3))


# ----------------------------------------------------------------------------- attention
def _sink_attention(bsz: int = 2, t: int = 10) -> torch.Tensor:
    """Head 0 puts 0.8 on key 0, head 1 puts 1.0: every query gives key 0 a head-mean of 0.9.
    Head 0's remaining 0.2 goes to the query's own key (key 1 for query 0)."""
    a = torch.zeros(bsz, 2, t, t, dtype=torch.float64)
    a[:, 0, :, 0] = 0.8
    a[:, 1, :, 0] = 1.0
    for i in range(t):
        a[:, 0, i, max(i, 1)] += 0.2
    return a


def test_attention_sink_exact():
    a = _sink_attention()
    st = attention_outliers(a)
    assert st.num_queries == 10 and st.num_keys == 10 and st.batch_size == 2
    assert st.first_token_share == pytest.approx(0.9)
    assert st.top1_mass == pytest.approx(9.0) and st.top1_fraction == pytest.approx(0.9)
    assert st.top1_key == 0
    assert st.count == 2 and st.count_per_sample == 1.0
    assert st.positions == [(0, 0), (1, 0)]
    assert st.keys == [0]
    expected = [9.0, 0.2] + [0.1] * 8
    assert st.mean_mass.tolist() == pytest.approx(expected, rel=1e-6)
    s = st.scalars()
    _check_scalars(s)
    assert s["first_token_share"] == pytest.approx(0.9) and s["count"] == 2.0


def test_attention_mass_and_probability_paths_agree():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 16, 16, generator=g) * 3
    logits[..., 0] += 4.0  # a sink on key 0
    a = torch.softmax(logits, dim=-1)
    ref = attention_outliers(a)
    from_mass = attention_outliers(attention_mass(a), num_queries=16)
    from_head_mass = attention_outliers(a.sum(dim=2), num_queries=16)
    from_bf16 = attention_outliers(a.to(torch.bfloat16))
    for st in (from_mass, from_head_mass):
        assert st.positions == ref.positions and st.keys == ref.keys
        assert st.scalars() == pytest.approx(ref.scalars(), rel=1e-6)
    assert from_bf16.first_token_share == pytest.approx(ref.first_token_share, rel=1e-2)
    assert ref.count >= 3 and (0, 0) in ref.positions
    # first-token share is the mean of A[..., 0]
    assert ref.first_token_share == pytest.approx(a[..., 0].mean().item(), rel=1e-6)
    assert attention_mass(a).shape == (3, 16)


def test_attention_threshold_edge_and_errors():
    # mass input: exactly 0.1 x Tq is an outlier (>=)
    mass = torch.tensor([[1.0, 0.99, 5.0, 0.0]])
    st = attention_outliers(mass, num_queries=10)
    assert st.positions == [(0, 0), (0, 2)]
    assert st.first_token_share == pytest.approx(0.1)
    # probability input: 16 x 0.125 = 2.0 = 0.1 x 20 exactly; 15 x 0.125 = 1.875 is not
    a = torch.zeros(1, 1, 20, 8)
    a[0, 0, :16, 3] = 0.125
    a[0, 0, :15, 4] = 0.125
    a[0, 0, :, 0] = 0.5
    st = attention_outliers(a)
    assert st.positions == [(0, 0), (0, 3)]
    half = OutlierThresholds(attention_mass_fraction=0.5)
    assert attention_outliers(a, thresholds=half).positions == [(0, 0)]
    # unnormalised weights (sigmoid-style): every key receives 0.5 x Tq
    st = attention_outliers(torch.full((1, 2, 4, 4), 0.5))
    assert st.count == 4 and st.top1_fraction == 0.5
    with pytest.raises(ValueError):
        attention_outliers(mass)  # num_queries missing
    with pytest.raises(ValueError):
        attention_outliers(a, num_queries=19)


# ----------------------------------------------------------------------------- consistency
def test_consistency_fractions():
    act = [(0, 0), (0, 3), (1, 5)]
    assert position_consistency(act, [(0, 0), (0, 3), (1, 0)]) == pytest.approx(2 / 3)
    assert position_consistency(act, act) == 1.0
    assert position_consistency(act, [(1, 0), (0, 5)]) == 0.0  # same j, other sample: no match
    assert dimension_consistency([5], [5, 9]) == 1.0
    assert dimension_consistency([1, 2], [3]) == 0.0
    assert dimension_consistency([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 3)
    assert math.isnan(position_consistency([], [(0, 0)]))
    assert math.isnan(dimension_consistency([], [1]))


def test_outlier_consistency_from_stats():
    h = _signed_ones(2, 10, 16)
    h[0, 0, 5] = 2000.0
    h[0, 3, 5] = 2000.0
    act = activation_outliers(h)
    attn = attention_outliers(_sink_attention())  # outlier keys (0, 0), (1, 0)
    w = torch.ones(16, 64)
    w[5, 7] = 100.0
    wst = weight_outliers(w)
    assert wst.outlier_rows == [5]
    c = outlier_consistency(act, attn, wst)
    assert c.position_consistency == 0.5
    assert c.dimension_consistency == 1.0
    assert c.num_activation_tokens == 2 and c.num_activation_dims == 1
    _check_scalars(c.scalars())
    missing = outlier_consistency(act)
    assert math.isnan(missing.position_consistency) and math.isnan(missing.dimension_consistency)
    empty = outlier_consistency(activation_outliers(_signed_ones(2, 10, 16)), attn, wst)
    assert math.isnan(empty.position_consistency) and math.isnan(empty.dimension_consistency)
    assert empty.num_activation_tokens == 0


# ----------------------------------------------------------------------------- moments
def test_kurtosis_known_values():
    two_point = torch.tensor([-1.0, 1.0] * 4)  # kurtosis 1
    spike = torch.tensor([-2.0, 0, 0, 0, 0, 0, 0, 2.0])  # [-a, 0 x (n-2), a]: kurtosis n/2 = 4
    x = torch.stack([two_point, spike + 1000.0])  # shift invariant
    assert kurtosis_per_sample(x).tolist() == pytest.approx([1.0, 4.0], rel=1e-12)
    assert kurtosis(x) == pytest.approx(2.5, rel=1e-12)
    # per sample = first dim; the rest is flattened
    assert kurtosis(x.reshape(2, 2, 4)) == pytest.approx(2.5, rel=1e-12)
    assert kurtosis(spike) == pytest.approx(4.0)  # 1-D: a single sample
    g = torch.Generator().manual_seed(0)
    assert kurtosis(torch.randn(4, 50_000, generator=g)) == pytest.approx(3.0, abs=0.1)
    bf16 = torch.stack([two_point, spike]).to(torch.bfloat16)  # (1002 is not a bf16 value)
    assert kurtosis(bf16) == pytest.approx(2.5, rel=1e-12)


def test_kurtosis_constant_samples_and_inf_norm():
    x = torch.stack(
        [
            torch.tensor([-1.0, 1.0, -1.0, 1.0]),
            torch.tensor([0.0, 0.0, -2.0, 0.0]),
            torch.full((4,), 3.1),  # constant: sigma = 0
        ]
    )
    k = kurtosis_per_sample(x)
    assert math.isnan(k[2].item())
    # [0, 0, -2, 0]: mu = -0.5, deviations (0.5, 0.5, -1.5, 0.5): m2 = 0.75, m4 = 84/64 = 1.3125
    expected = 1.3125 / 0.75**2  # = 7/3
    assert k[1].item() == pytest.approx(expected, rel=1e-12)
    assert kurtosis(x) == pytest.approx((1.0 + expected) / 2)
    assert math.isnan(kurtosis(torch.full((3, 5), 7.0)))
    assert inf_norm(x) == pytest.approx((1.0 + 2.0 + 3.1) / 3, rel=1e-6)
    st = moment_stats(x)
    assert st.num_samples == 3 and st.num_constant == 1
    assert st.max_abs == pytest.approx(3.1, rel=1e-6)
    assert st.inf_norm == pytest.approx(inf_norm(x))
    assert st.kurtosis == pytest.approx(kurtosis(x))
    _check_scalars(st.scalars())


# ----------------------------------------------------------------------------- channels
def _channel_tensor() -> torch.Tensor:
    """100 tokens x 16 channels of 0.5 (median channel max 0.5, so tau x median = 5)."""
    x = torch.full((100, 16), 0.5)
    x[:30, 3] = 7.0  # 30% of tokens >= 6 and max >= 5: outlier
    x[:20, 5] = -7.0  # only 20%: not
    x[50:75, 6] = 7.0  # exactly 25%: outlier (>=)
    x[:, 1] = 4.0  # every token but max 4 < 5 (and < 6): not
    x[::2, 2] = 5.5  # max >= 5 but below the magnitude 6: fraction 0, not
    return x


def test_channel_outliers():
    x = _channel_tensor()
    st = channel_outliers(x)
    assert st.median_max == 0.5
    assert st.channels == [3, 6] and st.count == 2
    assert st.channel_fraction[3].item() == pytest.approx(0.3)
    assert st.channel_fraction[5].item() == pytest.approx(0.2)
    assert st.channel_fraction[6].item() == 0.25
    assert st.top1 == 7.0 and st.ratio == 14.0 and st.argmax in (3, 5, 6)
    assert st.num_tokens == 100
    assert channel_outliers(x, OutlierThresholds(channel_min_fraction=0.2)).channels == [3, 5, 6]
    assert channel_outliers(x, OutlierThresholds(channel_tau=15.0)).channels == []
    st3 = channel_outliers(x.reshape(4, 25, 16).to(torch.bfloat16))
    assert st3.channels == [3, 6] and st3.channel_fraction.tolist() == st.channel_fraction.tolist()
    _check_scalars(st.scalars())


def test_gamma_outliers_and_coincidence():
    gamma = torch.ones(16)
    gamma[3] = 12.0
    gamma[6] = -15.0
    gamma[9] = 10.0  # exactly tau x median: not (strict >)
    g = gamma_outliers(gamma)
    assert g.entries == [3, 6] and g.values == [12.0, -15.0]
    assert g.median_abs == 1.0 and g.max_abs == 15.0 and g.ratio == 15.0
    _check_scalars(g.scalars())

    ch = channel_outliers(_channel_tensor())
    c = gamma_channel_coincidence(g, ch)
    assert c.overlap == [3, 6] and c.coincide
    assert c.fraction_of_gamma == 1.0 and c.fraction_of_channels == 1.0 and c.jaccard == 1.0
    _check_scalars(c.scalars())

    c = gamma_channel_coincidence([3, 9], [3, 6])
    assert c.overlap == [3] and not c.coincide
    assert c.fraction_of_gamma == 0.5 and c.fraction_of_channels == 0.5
    assert c.jaccard == pytest.approx(1 / 3)
    c = gamma_channel_coincidence([], [])
    assert c.overlap == [] and not c.coincide
    assert math.isnan(c.fraction_of_gamma) and math.isnan(c.jaccard)


# ----------------------------------------------------------------------------- devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    h = _signed_ones(2, 8, 16)
    h[0, 0, 5] = 2000.0
    dev = torch.device("cuda")
    assert activation_outliers(h.to(dev, torch.bfloat16)).positions == (
        activation_outliers(h).positions
    )
    a = _sink_attention().float()
    assert attention_outliers(a.to(dev)).scalars() == pytest.approx(attention_outliers(a).scalars())
    w = torch.ones(4, 5)
    w[1, 2] = -9.0
    assert weight_outliers(w.to(dev)).scalars() == pytest.approx(weight_outliers(w).scalars())
    x = _channel_tensor()
    assert channel_outliers(x.to(dev)).channels == [3, 6]
    assert moment_stats(x.to(dev)).scalars() == pytest.approx(moment_stats(x).scalars())
    assert gamma_outliers(torch.ones(8, device=dev)).entries == []

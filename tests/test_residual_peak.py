"""Guo et al.'s residual-peak figures, where the largest activation sits, like-with-like sink
shares for unnormalised attention, each sample's top key, and the metric-name contract."""

from __future__ import annotations

import pytest
import torch

from sysout.outliers.attention import attention_outliers
from sysout.outliers.heads import group_statistics
from sysout.outliers.keys import (
    MissingMetric,
    layers_in,
    metric_key,
    parse_key,
    read_layers,
    read_metric,
    summary_key,
)
from sysout.outliers.residual import (
    first_query_stats,
    residual_peak,
    value_out_norms,
    value_out_stats,
)


def test_residual_peak_norms_and_argmax_locations_on_known_values():
    h = torch.zeros(3, 4, 2, dtype=torch.float64)
    h[:, :, 0] = 1.0  # every token norm 1 ...
    h[:, 0] = torch.tensor([3.0, 4.0])  # ... but position 0: norm 5, largest |h| 4 in dim 1
    h[2, 0] = torch.tensor([0.0, 1.0])  # sequence 2: position 0 is ordinary ...
    h[2, 2] = torch.tensor([0.0, -7.0])  # ... and its largest |h| is -7 at position 2, dim 1
    classes = [["bos", "ordinary", "delimiter", "ordinary"]] * 3
    stats = residual_peak(h, classes, ("bos", "trigger", "delimiter", "ordinary"))
    assert stats.first_token_norm == pytest.approx((5 + 5 + 1) / 3)
    # other tokens: norms 1, 1, 1 except sequence 2 position 2 (norm 7): medians 1, means 1|3
    assert stats.other_norm_median == pytest.approx(1.0)
    assert stats.other_norm_mean == pytest.approx((1 + 1 + 3) / 3)
    assert stats.first_token_excess == pytest.approx(stats.first_token_norm - 1.0)
    assert stats.argmax_positions == [0, 0, 2] and stats.argmax_dims == [1, 1, 1]
    assert stats.argmax_values == [4.0, 4.0, -7.0]
    s = stats.scalars()
    assert s["argmax_dim"] == 1 and s["argmax_dim_share"] == 1.0
    assert s["argmax_position"] == 0 and s["argmax_position_share"] == pytest.approx(2 / 3)
    assert s["argmax_first_token_share"] == pytest.approx(2 / 3)
    assert s["argmax_first_delimiter_share"] == pytest.approx(1 / 3)  # position 2 is the first
    assert s["argmax_class_share_bos"] == pytest.approx(2 / 3)
    assert s["argmax_class_share_delimiter"] == pytest.approx(1 / 3)
    assert s["argmax_class_share_trigger"] == 0.0
    assert s["argmax_abs"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="token_classes"):
        residual_peak(h, classes[:2])


def test_value_out_norm_is_the_output_projection_of_the_concatenated_heads():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 5, 4, dtype=torch.float64)  # [B, H, T, d]
    w = torch.randn(7, 12, dtype=torch.float64)  # W_O [C, H*d]
    expected = torch.stack(
        [torch.stack([(w @ v[b, :, t].reshape(-1)).norm() for t in range(5)]) for b in range(2)]
    )
    torch.testing.assert_close(value_out_norms(v, w), expected)
    s = value_out_stats(v, w)
    assert s["first_token_value_out_norm"] == pytest.approx(expected[:, 0].mean().item())
    ratio = (expected[:, 0] / expected.median(dim=1).values).mean().item()
    assert s["first_token_value_out_ratio"] == pytest.approx(ratio)


def _causal_uniform(t: int) -> torch.Tensor:
    return torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]


def test_group_statistics_compare_normalised_and_unnormalised_weights_alike():
    # (shares of the weight spent, pooled: a row that spends nothing weighs nothing)
    t = 6
    uniform = _causal_uniform(t)[None, None]  # [1, 1, T, T]
    every = torch.ones(1, t, dtype=torch.bool)
    base = group_statistics(uniform, every)
    # uniform weights: no preference for position 0, whatever their scale
    assert base["first_token_weight_vs_uniform"].item() == pytest.approx(1.0)
    assert base["row_weight"].item() == pytest.approx(1.0)
    scaled = group_statistics(0.01 * uniform, every)  # sigmoid-like: rows far below one
    assert scaled["first_token_share"].item() == pytest.approx(0.01 * base["first_token_share"])
    assert scaled["first_token_share_of_weight"].item() == pytest.approx(
        base["first_token_share_of_weight"].item()
    )
    assert scaled["first_token_weight_vs_uniform"].item() == pytest.approx(1.0)
    assert scaled["row_weight"].item() == pytest.approx(0.01)
    assert scaled["top_key_share_of_weight"].item() == pytest.approx(
        base["top_key_share_of_weight"].item()
    )
    # a sink: every query puts 0.9 of its row on position 0 and the rest evenly elsewhere
    sink = torch.zeros(t, t)
    sink[0, 0] = 1.0
    for i in range(1, t):
        sink[i, 0], sink[i, 1 : i + 1] = 0.9, 0.1 / i
    later = torch.zeros(1, t, dtype=torch.bool)
    later[0, 1:] = True
    s = group_statistics(0.5 * sink[None, None], later)  # half the weight on a slot
    assert s["first_token_share_of_weight"].item() == pytest.approx(0.9)
    assert s["top_key_share_of_weight"].item() == pytest.approx(0.9)  # the sink is the top key
    assert s["row_weight"].item() == pytest.approx(0.5)
    # position 0 gets 0.45 of each later row; spread evenly it would get 0.5 / (i + 1)
    vs = 0.45 * (t - 1) / sum(0.5 / (i + 1) for i in range(1, t))
    assert s["first_token_weight_vs_uniform"].item() == pytest.approx(vs)
    # a head that does nothing by spending nothing (sigmoid's way) has no sink, even where its
    # rounding noise all lands on position 0: rows of 1e-9 there weigh nothing
    quiet = torch.zeros(t, t)
    quiet[:, 0] = 1e-9
    quiet[t - 1] = 1.0 / t  # one query spends weight, evenly
    q = group_statistics(quiet[None, None], later)
    assert q["top_key_share_of_weight"].item() == pytest.approx(1.0 / t, rel=1e-3)


def test_each_samples_top_key_is_reported_with_its_mode():
    mass = torch.tensor([[5.0, 1, 0, 0], [0, 1, 6, 0], [0, 0, 7, 1], [0, 9, 0, 0]])
    stats = attention_outliers(mass, num_queries=10)
    assert stats.top_keys == [0, 2, 2, 1]
    s = stats.scalars()
    assert s["top_key_mode"] == 2 and s["top_key_mode_share"] == 0.5
    assert s["top_key_first_token_share"] == 0.25


def test_metric_names_round_trip_and_a_missing_one_is_an_error():
    key = metric_key("residual", "first_token_norm", 3)
    assert key == "outliers/residual/layer_03/first_token_norm"
    assert parse_key(key) == ("residual", 3, "first_token_norm")
    assert parse_key(summary_key("max_top1")) == ("summary", None, "max_top1")
    scoped = metric_key("channel", "out/count", scope="ln_f")
    assert parse_key(scoped) == ("channel", None, "ln_f/out/count")
    metrics = {metric_key("residual", "first_token_norm", i): float(i) for i in range(3)}
    assert layers_in(metrics) == 3
    assert read_metric(metrics, "residual", "first_token_norm", 2) == 2.0
    assert read_layers(metrics, "residual", "first_token_norm") == [0.0, 1.0, 2.0]
    with pytest.raises(MissingMetric, match="first_token_nrom"):
        read_metric(metrics, "residual", "first_token_nrom", 0)
    with pytest.raises(ValueError, match="unknown metric group"):
        metric_key("residuals", "x")
    with pytest.raises(ValueError, match="not an outlier-probe metric"):
        parse_key("val/loss")


def test_bigram_backcopy_token_classes(shared_dir):
    from sysout.data.bigram_task import TOKEN_CLASSES, BigramBackcopy

    task = BigramBackcopy.from_file(shared_dir / "data" / "tinyshakespeare" / "input.txt")
    index = {c: i for i, c in enumerate(task.chars)}
    assert task.token_class(0, task.bos_id) == "bos"
    assert {task.token_class(5, t) for t in task.triggers} == {"trigger"}
    assert task.token_class(5, index["\n"]) == "delimiter"
    assert task.token_class(5, index[","]) == "delimiter"
    assert task.token_class(5, index["q"]) == "ordinary"
    assert set(TOKEN_CLASSES) == {"bos", "trigger", "delimiter", "ordinary"}


def test_first_query_figures_follow_query_zero_alone():
    torch.manual_seed(0)
    b, h, t, d = 2, 3, 5, 4
    q, k, v = (torch.randn(b, h, t, d, dtype=torch.float64) for _ in range(3))
    w = torch.randn(7, h * d, dtype=torch.float64)  # W_O [C, H*d]
    s = (q @ k.transpose(-1, -2)) / d**0.5
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    # softmax: query 0 sees only key 0 with weight one, so it writes exactly W_O v_0
    soft = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
    got = first_query_stats(soft, v, w)
    assert got["first_query_weight"] == pytest.approx(1.0)
    ref = value_out_stats(v, w)["first_token_value_out_norm"]
    assert got["first_query_out_norm"] == pytest.approx(ref)
    # ReLU attention (Guo et al.): relu(s_00) / 1, unbounded; |relu(s_00)| scales W_O v_0
    relu = torch.relu(s.masked_fill(~causal, 0.0)) / torch.arange(1, t + 1)[:, None]
    got = first_query_stats(relu, v, w)
    s00 = torch.relu(s[:, :, 0, 0])  # [B, H]
    assert got["first_query_weight"] == pytest.approx(s00.mean().item())
    written = torch.stack([w @ (s00[i, :, None] * v[i, :, 0]).reshape(-1) for i in range(b)])
    assert got["first_query_out_norm"] == pytest.approx(written.norm(dim=-1).mean().item())
    # two queries aligned with the last of four keys (a cache): query 0 sees keys 0..2
    cached = torch.rand(b, h, 2, 4, dtype=torch.float64)
    got = first_query_stats(cached, v[:, :, :4], w)
    assert got["first_query_weight"] == pytest.approx(cached[:, :, 0, :3].sum(-1).mean().item())

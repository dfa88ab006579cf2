"""The outlier probe on GPTs whose weights plant known outliers, and on every attention variant.

The planted model: position 0 gets a +1 in feature E of the position embedding and every other
position a -1, so after ln_2 only token 0 fires hidden unit U of layer 0's MLP (50 x ~7.9 through
GELU), and c_proj row D turns it into |h| ~ 2000 in residual dim D: a massive activation at
(token 0, dim D) from layer 0 on, carried by the residual stream into layer 1, where queries that
read E and keys that read D make every query attend to token 0 (an attention sink).
"""

from __future__ import annotations

import math
import os

# The fused-kernel comparison below runs Triton's interpreter on CPU; set before triton loads.
os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ.get("SYSOUT_TEST_CUDA") else "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sysout.attention import get_variant_class, variant_names  # noqa: E402
from sysout.callbacks.outliers import wandb_key  # noqa: E402
from sysout.model import GPT, GPTConfig  # noqa: E402
from sysout.outliers import PROBE_SENTENCE, OutlierThresholds, run_probe  # noqa: E402
from sysout.outliers.keys import GROUPS

E, U, D = 3, 5, 7  # position-marker feature, MLP hidden unit, massive residual dim
C, T, B = 64, 32, 4


def _tokenizer():
    from sysout.data import get_tokenizer

    return get_tokenizer(os.environ.get("TIKTOKEN_CACHE_DIR"))


def planted_gpt(attention: str = "softmax") -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=T, n_layer=2, n_head=2, n_embd=C, attention=attention))
    tr = model.transformer
    with torch.no_grad():
        tr.wte.weight[:, E] = 0.0
        tr.wpe.weight[:, E] = -1.0
        tr.wpe.weight[0, E] = 1.0
        mlp = tr.h[0].mlp
        mlp.c_fc.weight[U].zero_()
        mlp.c_fc.weight[U, E] = 50.0
        mlp.c_proj.weight[D, U] = 5.0
        # Layer 1, both heads (head dims 0 and 32): q reads -E (> 0 for tokens t > 0), k reads D.
        w = tr.h[1].attn.c_attn.weight  # rows: q [0, C), k [C, 2C), v [2C, 3C)
        for row in (0, 32):
            w[row].zero_()
            w[row, E] = -3.0
            w[C + row].zero_()
            w[C + row, D] = 3.0
    return model


@pytest.fixture(scope="module")
def planted():
    enc = _tokenizer()
    model = planted_gpt()
    batch = torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(1))
    sentence = enc.encode(PROBE_SENTENCE)
    report = run_probe(model, batch, sentence, decode=lambda i: enc.decode([i]), step=7)
    return model, batch, sentence, report


def test_planted_massive_activation_is_found_at_its_layer_position_and_dim(planted) -> None:
    _, _, _, report = planted
    first = report.layers[0].activation
    assert first.dims == [D]
    assert first.tokens == [(b, 0) for b in range(B)]  # token 0 of every window, nothing else
    assert first.count == B and [p[:3] for p in first.positions] == [(b, 0, D) for b in range(B)]
    assert first.top1 > 1000 and first.ratio > 1000
    # carried by the residual stream into layer 1, same place
    assert report.layers[1].activation.dims == [D]
    assert report.layers[1].activation.tokens == first.tokens
    assert report.embedding.count == 0  # the embeddings themselves are ordinary
    # the MLP down-projection input carries it in hidden unit U, in layer 0 only
    assert report.layers[0].mlp_input.dims == [U]
    assert report.layers[0].mlp_input.tokens == first.tokens
    assert report.layers[1].mlp_input.count == 0
    assert report.max_layer in (0, 1) and report.summary()["max_top1"] == pytest.approx(
        max(first.top1, report.layers[1].activation.top1)
    )


def test_planted_weight_outlier_row_and_column_of_c_proj(planted) -> None:
    _, _, _, report = planted
    c_proj = report.layers[0].c_proj
    assert c_proj.shape == (C, 4 * C)
    assert c_proj.outlier_rows == [D] and c_proj.argmax_row == D  # the residual dim
    assert c_proj.outlier_cols == [U] and c_proj.argmax_col == U  # the hidden unit
    assert D not in report.layers[1].c_proj.outlier_rows
    assert set(report.layers[0].weights) >= {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert "lm_head" in report.other_weights


def test_planted_attention_sink_and_consistency(planted) -> None:
    _, _, _, report = planted
    sink = report.layers[1].attention
    assert sink.keys == [0] and sink.top1_key == 0
    assert sink.positions == [(b, 0) for b in range(B)]
    assert sink.first_token_share > 0.99  # every query of layer 1 attends to token 0
    assert sink.top1_mass == pytest.approx(T, rel=0.01)
    assert report.layers[0].attention.first_token_share < 0.5  # ordinary causal attention
    assert report.layers[1].weight_sum == pytest.approx(1.0, abs=1e-5)  # softmax sums to one
    # position: layer-1 attention reads h_0, whose outlier tokens are exactly its sink keys
    assert report.layers[1].consistency.position_consistency == 1.0
    assert math.isnan(report.layers[0].consistency.position_consistency)  # embeddings: none
    # dimension: the outlier dim of h_0 is the outlier row of layer 0's c_proj, not layer 1's
    assert report.layers[0].consistency.dimension_consistency == 1.0
    assert report.layers[1].consistency.dimension_consistency == 0.0
    summary = report.summary()
    assert summary["position_consistency"] == 1.0 and summary["dimension_consistency"] == 1.0


def test_planted_sink_heads_their_large_keys_and_column_consistency(planted) -> None:
    _, _, _, report = planted
    heads = report.layers[1].heads
    assert heads.sink_heads == [0, 1] and heads.top_key == [0, 0]
    assert all(share > 0.99 for share in heads.first_token_share.tolist())
    # the sink token's keys read the massive dim: far larger than the other tokens' keys
    assert all(ratio > 5.0 for ratio in heads.first_token_ratio["key"].tolist())
    assert heads.sink_ratio["key"].tolist() == heads.first_token_ratio["key"].tolist()
    assert report.layers[0].heads.sink_heads == []  # ordinary causal attention
    scalars = report.scalars()
    assert scalars["outliers/heads/layer_01/head_00/first_token_share"] > 0.99
    # the down-projection column that creates the outlier is the outlier channel of its input
    assert report.layers[0].consistency.column_consistency == 1.0
    assert report.summary()["column_consistency"] == 1.0


def test_query_groups_split_the_first_token_share(planted) -> None:
    model, batch, _, report = planted
    even = torch.zeros(batch.shape, dtype=torch.bool)
    even[:, ::2] = True
    split = run_probe(model, batch, query_groups={"even": even, "odd": ~even})
    weights = report.layers[0]  # layer 0: ordinary causal softmax, query t gives key 0 ~1/(t+1)
    assert weights.heads.group_stats == {}
    shares = {g: s["first_token_share"] for g, s in split.layers[0].heads.group_stats.items()}
    assert set(shares) == {"even", "odd"}
    # query 0 (even) puts all its weight on key 0: the even group's share is the larger
    assert (shares["even"] > shares["odd"]).all()
    # the two groups average back to the overall share (equal sizes)
    overall = split.layers[0].heads.first_token_share
    assert torch.allclose((shares["even"] + shares["odd"]) / 2, overall, atol=1e-5)
    with pytest.raises(ValueError, match="query group"):
        run_probe(model, batch, query_groups={"bad": even[:, :3]})


def test_planted_outlier_records_and_sentence(planted) -> None:
    _, batch, sentence, report = planted
    sent = report.sentence
    assert sent.tokens[0] == "Summer" and sent.token_ids == sentence
    assert sent.hidden.shape == (2, len(sentence), C)
    assert sent.max_layer in (0, 1) and sent.hidden[0].abs().argmax() == D  # (token 0, dim D)
    assert sent.attention.shape == (2, len(sentence), len(sentence))
    assert torch.allclose(sent.attention[1][1:, 0], torch.ones(len(sentence) - 1), atol=1e-3)
    mine = [r for r in report.outliers if r.source == "sentence" and r.kind == "block_output"]
    assert [(r.layer, r.position, r.token, r.dim) for r in mine] == [
        (0, 0, "Summer", D),
        (1, 0, "Summer", D),
    ]
    val = [r for r in report.outliers if r.source == "val" and r.kind == "block_output"]
    assert {(r.sample, r.position, r.dim) for r in val} == {(b, 0, D) for b in range(B)}
    enc = _tokenizer()
    assert all(r.token == enc.decode([int(batch[r.sample, 0])]) for r in val)
    assert all(r.token_id == int(batch[r.sample, r.position]) for r in val)
    assert all(abs(r.value) > 1000 for r in val)
    assert {r.dim for r in report.outliers if r.kind == "mlp_input"} == {U}


def test_scalars_are_flat_grouped_and_match_the_report(planted) -> None:
    _, _, _, report = planted
    s = report.scalars()
    assert all(type(v) is float for v in s.values())
    groups = {k.split("/")[1] for k in s}
    assert groups == set(GROUPS)
    # the planted massive activation is every sequence's largest, at position 0 in dim D
    for key, value in (("argmax_first_token_share", 1.0), ("argmax_dim", D),
                       ("argmax_dim_share", 1.0), ("argmax_position", 0.0)):  # fmt: skip
        assert s[f"outliers/residual/layer_00/{key}"] == value, key
    assert s["outliers/residual/layer_00/first_token_norm"] > 1000
    assert s["outliers/residual/layer_00/argmax_class_share_initial"] == 1.0
    assert s["outliers/activation/layer_00/top1"] == report.layers[0].activation.top1
    assert s["outliers/activation/layer_00/count"] == B
    assert s["outliers/mlp_input/layer_00/num_dims"] == 1.0
    assert s["outliers/attention/layer_01/first_token_share"] > 0.99
    assert s["outliers/weight/layer_00/mlp_c_proj/argmax_row"] == D
    assert s["outliers/weight/layer_00/attn_c_attn/max_row_ratio"] > 1.0
    assert s["outliers/consistency/layer_01/position"] == 1.0
    assert s["outliers/summary/max_top1"] > 1000
    assert s["outliers/summary/max_c_proj_row_ratio"] == report.layers[0].c_proj.max_row_ratio
    assert "outliers/moments/layer_00/block/kurtosis" in s
    assert (
        "outliers/channel/layer_00/ln_2/gamma/count" in s and "outliers/channel/ln_f/in/count" in s
    )
    # the massive dim dominates the kurtosis of h_0
    assert s["outliers/moments/layer_00/block/kurtosis"] > 100
    assert wandb_key("outliers/activation/layer_00/top1") == "outliers-activation/layer_00/top1"
    assert wandb_key("train/loss") == "train/loss"


def test_thresholds_are_passed_through(planted) -> None:
    model, batch, _, report = planted
    strict = run_probe(
        model, batch, thresholds={"abs_threshold": 1e5, "attention_mass_fraction": 2.0}
    )
    assert strict.layers[0].activation.count == 0 and strict.layers[1].attention.count == 0
    # the continuous figures do not depend on thresholds
    assert strict.layers[0].activation.top1 == pytest.approx(report.layers[0].activation.top1)
    assert strict.thresholds == OutlierThresholds(abs_threshold=1e5, attention_mass_fraction=2.0)
    assert math.isnan(strict.summary()["position_consistency"])
    with pytest.raises(ValueError, match="unknown outlier thresholds"):
        run_probe(model, batch, thresholds={"abs_treshold": 1.0})


def test_probe_restores_modes_and_leaves_no_hooks_or_grads() -> None:
    model = planted_gpt()
    batch = torch.randint(0, 1000, (2, T))
    model.train()
    model.transformer.h[1].mlp.eval()  # a mixed state must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    run_probe(model, batch, [1, 2, 3])
    assert {name: m.training for name, m in model.named_modules()} == before
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    model.eval()
    run_probe(model, batch)
    assert not any(m.training for m in model.modules())


def test_probe_reaches_the_uncompiled_module() -> None:
    class Wrapper(torch.nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    model = planted_gpt()
    batch = torch.randint(0, 1000, (2, T))
    direct = run_probe(model, batch)
    wrapped = run_probe(Wrapper(model), batch)
    assert wrapped.layers[0].activation.top1 == direct.layers[0].activation.top1

    def compiled(*args, **kwargs):  # nn.Module.compile() routes __call__ here
        raise AssertionError("the probe ran the compiled graph")

    model._compiled_call_impl = compiled
    in_place = run_probe(model, batch)
    assert in_place.layers[0].activation.top1 == direct.layers[0].activation.top1


def _manual_layer_inputs(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """ln_1 outputs (the attention inputs) of every block, by a hand-written forward."""
    tr = model.transformer
    x = tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1]))
    inputs = []
    for block in tr.h:
        inputs.append(block.ln_1(x))
        x = block(x)
    return inputs


@pytest.mark.parametrize("variant", variant_names())
def test_attention_mass_is_the_variants_own(variant: str) -> None:
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(block_size=16, vocab_size=512, n_layer=2, n_head=2, n_embd=32, attention=variant)
    ).eval()
    idx = torch.randint(0, 512, (3, 16))
    report = run_probe(model, idx)
    with torch.no_grad():
        for layer, a in zip(report.layers, _manual_layer_inputs(model, idx)):
            attn = model.transformer.h[layer.index].attn
            q, k, _ = attn.heads(a)
            p = attn.variant.attention_weights(q, k, a)  # [B, H, T, T]
            expected = p.sum(dim=2).mean(dim=1)  # [B, T]
            assert torch.allclose(layer.attention.mean_mass, expected.mean(0), atol=1e-5)
            assert layer.attention.first_token_share == pytest.approx(
                float(expected[:, 0].mean()) / 16, abs=1e-6
            )
            rows = float(p.sum(-1).mean())
            assert layer.weight_sum == pytest.approx(rows, abs=1e-5)
            # The row sums the probe reports follow what the variant declares.
            traits = get_variant_class(variant).traits
            if traits.normalised and not traits.has_slot:
                assert rows == pytest.approx(1.0, abs=1e-5)
            elif traits.normalised:
                assert 0.0 < rows < 0.99  # weight parked on the slot / sink
            else:
                assert rows != pytest.approx(1.0, abs=1e-3)  # free row sums, not renormalised


def test_sigmoid_mass_follows_the_sigmoid_formula() -> None:
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            block_size=16, vocab_size=512, n_layer=2, n_head=2, n_embd=32, attention="sigmoid"
        )
    ).eval()
    idx = torch.randint(0, 512, (2, 16))
    report = run_probe(model, idx)
    causal = torch.ones(16, 16).tril().bool()
    with torch.no_grad():
        for layer, a in zip(report.layers, _manual_layer_inputs(model, idx)):
            q, k, _ = model.transformer.h[layer.index].attn.heads(a)
            s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            p = torch.sigmoid(s - math.log(16)) * causal  # SPEC (f), written out
            mass = p.sum(dim=2).mean(dim=1).mean(0)
            assert torch.allclose(layer.attention.mean_mass, mass, atol=1e-5)
            softmax_mass = torch.softmax(s.masked_fill(~causal, -math.inf), -1).sum(2).mean(1)
            assert not torch.allclose(layer.attention.mean_mass, softmax_mass.mean(0), atol=1e-2)


@pytest.mark.parametrize("variant", ["sigmoid", "kv_bias", "clipped_softmax"])
def test_fused_key_mass_path_equals_the_weights_path(variant: str) -> None:
    """impl=triton takes the kernel's key mass (linear memory); impl=reference sums the weights.
    The sentence pass also checks its heat map against its key mass."""
    from sysout.kernels import kernel_supported

    cfg = dict(block_size=16, vocab_size=512, n_layer=2, n_head=2, n_embd=32, attention=variant)
    fused = GPT(GPTConfig(**cfg, attention_impl="triton"))
    if not kernel_supported(torch.zeros(1, 2, 16, 16)):
        pytest.skip("no Triton backend for CPU tensors (TRITON_INTERPRET is not 1)")
    reference = GPT(GPTConfig(**cfg, attention_impl="reference"))
    reference.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 512, (2, 16))
    a = run_probe(fused, idx, [5, 6, 7, 8, 9])
    b = run_probe(reference, idx, [5, 6, 7, 8, 9])
    for x, y in zip(a.layers, b.layers):
        assert torch.allclose(x.attention.mean_mass, y.attention.mean_mass, atol=1e-4)
    assert torch.allclose(a.sentence.attention.sum(dim=1), a.sentence.key_mass, atol=1e-4)


def test_outlier_report_files_carry_lifecycle_and_token_classes(planted, tmp_path) -> None:
    import csv

    from sysout.evaluation.outlier_report import outlier_report

    model, batch, sentence, _ = planted
    enc = _tokenizer()
    summary, files = outlier_report(
        model, tmp_path, batch, sentence, decode=lambda i: enc.decode([i])
    )
    with open(files["lifecycle_csv"]) as f:
        rows = list(csv.DictReader(f))
    # the planted activation (token 0, dim D) is born in block 0 by column U of its c_proj
    born = [r for r in rows if (r["token"], r["dim"]) == ("0", str(D))]
    assert born and born[0]["created"] == "0" and born[0]["column"] == str(U)
    assert files["lifecycle"].stat().st_size > 0
    with open(files["outliers"]) as f:
        records = list(csv.DictReader(f))
    assert records and {r["token_class"] for r in records if r["kind"] == "block_output"} == {
        "initial"
    }
    assert summary["outlier_tokens_initial"] == B and summary["outlier_tokens_other"] == 0


def test_probe_aligns_a_models_own_sink_token_with_the_inputs() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=T, n_layer=2, n_head=2, n_embd=C, sink_tokens=1))
    with torch.no_grad():
        model.reg_token[0, 0, D] = 5000.0  # a massive value carried by the sink token itself
    batch = torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(1))
    groups = {"all": torch.ones(B, T, dtype=torch.bool)}
    report = run_probe(model, batch, [11, 12, 13], query_groups=groups)
    assert report.batch_shape == (B, T)
    # position 0 of the residual stream is the sink token, shown as such, not as an input token
    sink = [r for r in report.outliers if r.source == "val" and r.position == 0]
    assert sink and {(r.token, r.token_id) for r in sink} == {("<sink>", -1)}
    assert report.sentence.tokens[0] == "<sink>" and report.sentence.hidden.shape[1] == 4
    # the group holds every input query but not the sink's own (which sees only itself, weight
    # 1): overall share x (T + 1) queries = group share x T + 1
    heads = report.layers[0].heads
    overall, group = heads.first_token_share, heads.group_stats["all"]["first_token_share"]
    torch.testing.assert_close(group, (overall * (T + 1) - 1) / T, atol=1e-5, rtol=0)

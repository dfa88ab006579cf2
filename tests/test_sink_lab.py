"""The sink lab: the probe's sink figures against a direct computation, the report from
committed files, and end to end a learned attention sink at each of seeds 1-5.

The end-to-end tests are 600-step runs of experiment=sink_lab (about 2.5 minutes each on one idle
CPU thread), one per seed and variant, marked slow: ``make test-slow`` or ``make test-lab`` run
them, and SYSOUT_LAB_TESTS=0 skips them. Their assertions choose the layer by the metric (the sink
sits in different layers at different seeds) and hold at every seed of 1-5, which the committed
sink-lab sweep (docs/results/sink-lab/, the same runs) shows too.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from torch import Tensor

from sysout.outliers.keys import layers_in, read_metric
from sysout.training.run import train

lab_training = pytest.mark.skipif(
    os.environ.get("SYSOUT_LAB_TESTS") == "0",
    reason="600-step training skipped by SYSOUT_LAB_TESTS=0",
)


def _median_ratio(norms: Tensor) -> Tensor:
    """Norm at position 0 / median norm over positions: [..., T] -> [...]."""
    return norms[..., 0] / norms.median(dim=-1).values.clamp_min(1e-12)


@torch.no_grad()
def reference_sinks(
    model: torch.nn.Module, windows: Tensor, query_groups: dict[str, Tensor] | None = None
) -> dict[str, float]:
    """An independent implementation of the probe's sink figures (full weights, no hooks of the
    probe): per layer and head, attention weight on position 0 (all queries and each query
    group), total weight on real tokens, value/key/query norm at position 0 against the median
    position, and the residual-state ratio of each block's output, under the probe's keys."""
    model.eval()
    captured: list[tuple[Tensor, Tensor]] = []
    hooks = []
    for block in model.transformer.h:
        attn = block.attn

        def grab(module, args, output, attn=attn) -> None:
            captured.append(("attn", args[0]))

        def grab_out(module, args, output) -> None:
            captured.append(("block", output))

        hooks.append(attn.register_forward_hook(grab))
        hooks.append(block.register_forward_hook(grab_out))
    try:
        model(windows)
    finally:
        for h in hooks:
            h.remove()
    attn_inputs = [t for kind, t in captured if kind == "attn"]
    block_outputs = [t for kind, t in captured if kind == "block"]
    groups = dict(query_groups or {})
    out: dict[str, float] = {}
    for layer, (block, x, h) in enumerate(zip(model.transformer.h, attn_inputs, block_outputs)):
        q, k, v = block.attn.heads(x)  # [B, H, T, d]
        p = block.attn.variant.attention_weights(q, k, x).float()  # [B, H, T, T]
        first = p[..., 0]  # [B, H, T] weight of each query on position 0
        lay = f"layer_{layer:02d}"
        out[f"outliers/attention/{lay}/first_token_share"] = float(first.mean())
        out[f"outliers/attention/{lay}/weight_sum"] = float(p.sum(-1).mean())
        for name, mask in groups.items():
            m = mask.to(first.device)[:, None, :].expand_as(first)
            per_head = (first * m).sum((0, 2)) / m.sum((0, 2)).clamp_min(1)
            for head, value in enumerate(per_head.tolist()):
                out[f"outliers/heads/{lay}/head_{head:02d}/first_token_share_{name}"] = value
            out[f"outliers/heads/{lay}/first_token_share_{name}"] = float(per_head.mean())
        ratios = {}
        for kind, t in (("value", v), ("key", k), ("query", q)):
            r = _median_ratio(t.float().norm(dim=-1)).mean(0)  # [H], mean over windows
            ratios[kind] = r
            for head, value in enumerate(r.tolist()):
                out[f"outliers/heads/{lay}/head_{head:02d}/first_token_{kind}_ratio"] = value
        for head, value in enumerate(first.mean((0, 2)).tolist()):
            out[f"outliers/heads/{lay}/head_{head:02d}/first_token_share"] = value
        out[f"outliers/heads/{lay}/first_token_value_ratio"] = float(ratios["value"].mean())
        residual = _median_ratio(h.float().norm(dim=-1)).mean()
        out[f"outliers/activation/{lay}/first_token_norm_ratio"] = float(residual)
        out[f"outliers/activation/{lay}/ratio"] = float(
            (h.abs().amax((1, 2)) / h.abs().flatten(1).median(1).values.clamp_min(1e-12)).mean()
        )
    return out


def probe_rows(output_dir) -> list[dict[str, float]]:
    """The probe's logged scalars, one dict per probe step, in training order."""
    with open(output_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    key = "outliers/attention/layer_00/first_token_share"
    return [
        {k: float(v) for k, v in row.items() if k.startswith("outliers/") and v not in ("", None)}
        for row in rows
        if row.get(key)
    ]


def run_lab(compose_train, variant: str, seed: int):
    torch.set_num_threads(1)
    cfg = compose_train(
        "experiment=sink_lab",
        f"attention={variant}",
        f"seed={seed}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.outliers.every_n_steps=200",
        "callbacks.outliers.log_images=false",
    )
    metrics = train(cfg)
    return metrics, probe_rows(Path(cfg.paths.output_dir))


SEEDS = [1, 2, 3, 4, 5]


def _layers(row: dict[str, float]) -> range:
    return range(layers_in(row))


@pytest.mark.slow
@lab_training
@pytest.mark.parametrize("seed", SEEDS)
def test_softmax_grows_a_bos_sink_with_a_value_drain(compose_train, seed: int) -> None:
    _, rows = run_lab(compose_train, "softmax", seed)
    first, last = rows[0], rows[-1]
    share = lambda row, layer, group="non_trigger": read_metric(
        row, "heads", f"first_token_share_{group}", layer
    )
    sink = max(_layers(last), key=lambda layer: share(last, layer))  # the sink's layer
    assert share(last, sink) > 0.4, (sink, share(last, sink))
    assert read_metric(last, "heads", "first_token_value_ratio", sink) < 0.3
    assert share(last, sink) > share(first, sink) + 0.3  # it grew during training
    # Active-dormant: trigger queries (which must copy) do not park on BOS as much.
    assert share(last, sink, "trigger") < share(last, sink)


@pytest.mark.slow
@lab_training
@pytest.mark.parametrize("seed", SEEDS)
def test_sigmoid_makes_no_sink(compose_train, seed: int) -> None:
    _, rows = run_lab(compose_train, "sigmoid", seed)
    last = rows[-1]
    for layer in _layers(last):
        # Like with like: each row's weights normalised to one (sigmoid's do not sum to one, and
        # an absolute weight near 1/T is what initialisation already gives).
        top = read_metric(last, "heads", "top_key_share_of_weight_non_trigger", layer)
        assert top < 0.3, (layer, top)


@pytest.mark.parametrize("variant", ["softmax", "kv_bias", "sigmoid"])
def test_the_probes_sink_figures_match_a_direct_computation(shared_dir, variant: str) -> None:
    from sysout.data import BigramBackcopyDataModule
    from sysout.model import build_gpt
    from sysout.outliers import run_probe

    torch.manual_seed(0)
    model = build_gpt(
        {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 48, "vocab_size": 66},
        {"name": variant},
    )
    with torch.no_grad():  # a planted sink: position 0's embedding dominates the keys
        model.transformer.wpe.weight[0] *= 40
        if variant == "kv_bias":
            for block in model.transformer.h:
                block.attn.variant.key_bias.normal_(0, 1.0)
    dm = BigramBackcopyDataModule(str(shared_dir / "data/tinyshakespeare/input.txt"), block_size=48)
    inputs = dm.probe_inputs(4)
    ours = reference_sinks(model, inputs.windows, inputs.query_groups)
    probe = run_probe(model, inputs.windows, query_groups=inputs.query_groups).scalars()
    compared = [k for k in ours if not k.endswith("/ratio")]
    assert len(compared) > 20
    for key in compared:
        assert ours[key] == pytest.approx(probe[key], rel=1e-4, abs=1e-6), key
    if variant == "kv_bias":
        assert ours["outliers/attention/layer_00/weight_sum"] < 0.99  # the slot takes weight


def test_sink_report_from_committed_files(tmp_path, shared_dir) -> None:
    from lab_fakes import fake_run, probe_scalars, run_record

    from sysout.lab.collect import collect_run
    from sysout.lab.report import write_report
    from sysout.outliers.keys import metric_key

    scalars = probe_scalars()
    out, results = tmp_path / "out", tmp_path / "docs" / "sink-lab"

    def planted(share: float, value: float):
        def plant(step: int) -> dict[str, float]:
            got = {}
            for layer in range(3):
                s = share * step / 200 if layer == 0 else 0.1
                got[metric_key("attention", "first_token_share", layer)] = s * 0.8
                got[metric_key("attention", "weight_sum", layer)] = 1.0
                got[metric_key("heads", "first_token_share_non_trigger", layer)] = s
                got[metric_key("heads", "first_token_share_trigger", layer)] = 0.01
                got[metric_key("heads", "first_token_value_ratio", layer)] = (
                    value if layer == 0 else 1.0
                )
                got[metric_key("activation", "first_token_norm_ratio", layer)] = 0.5 + layer
                got[metric_key("activation", "ratio", layer)] = 8.0
                got[metric_key("heads", "top_key_share_of_weight_non_trigger", layer)] = max(
                    s, 0.05
                )
            return got

        return plant

    for variant, seed, share, value in (("softmax", 1, 0.62, 0.14), ("softmax", 2, 0.55, 0.21),
                                        ("sigmoid", 1, 0.02, 0.9)):  # fmt: skip
        record = run_record("sink_lab", "main", variant, seed)
        collect_run(*fake_run(out, scalars, record, planted(share, value)), results)
    (results / "sweep.json").write_text('{"sweeps": [{"jobs": 2, "wall_s": 120.0}]}')
    text = write_report(results).read_text()
    assert "sweep wall time 2 min (1 invocation(s))" in text
    assert "| softmax | 1 | 0.10 | 0.02 / 2.00 | 0.50 | 0.62 | 0.01 | 0.14 |" in text
    assert "| softmax | 2 | 0.10 | 0.02 / 2.00 | 0.44 | 0.55 | 0.01 | 0.21 |" in text
    assert "**Attention sink on BOS** (softmax, layer-0 non-trigger share > 0.3 in every " in text
    assert "seed): supported — 0.55-0.62." in text
    assert "**Value-state drain**" in text and "supported — 0.14-0.21" in text
    assert "steps): supported — largest ratio 2.50" in text  # residual peak: layer 2, 0.5 + 2
    assert "**sigmoid attention has no sink** (each non-trigger row normalised to one" in text
    assert "and seed): supported — largest 0.10 per seed" in text  # layers 1-2 plant 0.1
    assert (results / "curves-main.png").is_file()

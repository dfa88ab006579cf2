"""The lab's pipeline without training: plans from the registry's traits, a finished run's
CSV log collected into the committed files, and the reports regenerated from those files alone
(with every figure a known function of the planted values)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lab_fakes
import pytest

from sysout.attention import variant_names
from sysout.lab.collect import collect_run, read_log
from sysout.lab.plans import lab_plan, parking_variants
from sysout.lab.report import write_report
from sysout.lab.runs import load_results
from sysout.outliers.keys import MissingMetric, metric_key


def test_massive_lab_plan_comes_from_the_registry():
    runs = lab_plan("massive_lab", ["controls", "factors", "nobos"], [1, 2, 3, 4, 5])
    names = {r.config.name for r in runs}
    assert {"softmax", "sgd", "relu_attention", "clip", "gelu", "tied", "gpt2_init"} <= names
    nobos = {r.config.variant for r in runs if r.plan == "nobos"}
    assert nobos == {"softmax", "sigmoid", "relu", *parking_variants()}
    assert set(parking_variants()) == {"kv_bias", "sink_logit", "softmax1"}
    assert len(runs) == 5 * len({(r.plan, r.config.name) for r in runs})
    sgd = next(r for r in runs if r.config.name == "sgd" and r.seed == 3)
    overrides = sgd.overrides(Path("/o"))
    assert overrides[0] == "experiment=massive_lab" and "optim=sgd" in overrides
    assert "seed=3" in overrides and "trainer.max_steps=5000" in overrides
    assert {o for r in runs if r.plan == "nobos" for o in r.overrides(Path("/o"))} >= {
        "data.bos=false"
    }
    sink = lab_plan("sink_lab", ["main", "longer"], [1, 2])
    assert len([r for r in sink if r.plan == "main"]) == 2 * len(variant_names())
    with pytest.raises(ValueError, match="no plan"):
        lab_plan("massive_lab", ["main"], [1])


@pytest.fixture(scope="module")
def probe_scalars(shared_dir) -> dict[str, float]:
    return lab_fakes.probe_scalars()


def fake_run(
    out: Path,
    scalars: dict,
    plan: str,
    config: str,
    variant: str,
    seed: int,
    growth: float,
    bos: bool = True,
    from_layer: int = 1,
) -> tuple[Path, dict]:
    """The BOS norm after layers ``from_layer``.. grows linearly to ``growth`` x its step-0
    value of 10 (earlier layers stay at 10); the other tokens' median stays 5."""

    def plant(step: int) -> dict[str, float]:
        out = {}
        for layer in range(3):
            norm = 10.0 * (1 + (growth - 1) * step / 200) if layer >= from_layer else 10.0
            out[metric_key("residual", "first_token_norm", layer)] = norm
            out[metric_key("residual", "other_norm_median", layer)] = 5.0
        return out

    record = lab_fakes.run_record("massive_lab", plan, config, seed, variant, bos)
    return lab_fakes.fake_run(out, scalars, record, plant)


def test_collect_keeps_the_reported_figures_at_their_optimizer_steps(tmp_path, probe_scalars):
    folder, record = fake_run(tmp_path / "out", probe_scalars, "controls", "softmax", "softmax",
                              1, growth=3.0)  # fmt: skip
    rows = read_log(folder / "csv" / "metrics.csv")
    assert [r["step"] for r in rows] == [0, 100, 200]
    assert rows[1]["val/loss_gap"] == 0.1  # logged at step 99, the 100th optimizer step
    assert not any("head_" in k for k in rows[0])  # head means only
    results = tmp_path / "results"
    csv_path = collect_run(folder, record, results)
    assert csv_path == results / "runs" / "controls" / "softmax_s1.csv"
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert meta["block_size"] == 32 and meta["batch_size"] == 4 and meta["torch"]
    (run,) = load_results(results)
    key = metric_key("residual", "first_token_norm", 1)
    assert [run.stats[s][key] for s in (0, 100, 200)] == [10.0, 20.0, 30.0]
    assert run.metric("residual", "first_token_norm", 1, step=100) == 20.0
    with pytest.raises(MissingMetric, match="first_token_nrom"):
        run.metric("residual", "first_token_nrom", 1)


def test_massive_report_regenerates_from_the_committed_files(tmp_path, probe_scalars):
    out, results = tmp_path / "out", tmp_path / "docs" / "massive-lab"
    for seed in (1, 2, 3):
        for config, variant, growth in (("softmax", "softmax", 3.0 + seed), ("sgd", "softmax", 1.0),
                                        ("relu_attention", "relu", 1.5)):  # fmt: skip
            # softmax at seed 3 peaks one layer later: each seed is judged at its own peak
            late = 2 if (config, seed) == ("softmax", 3) else 1
            collect_run(*fake_run(out, probe_scalars, "controls", config, variant, seed, growth,
                                  from_layer=late), results)  # fmt: skip
        collect_run(*fake_run(out, probe_scalars, "nobos", "softmax", "softmax", seed, 1.0, False),
                    results)  # fmt: skip
    (results / "sweep.json").write_text(json.dumps({"sweeps": [{"jobs": 2, "wall_s": 900.0}]}))
    guo = "guo2024-bos-norm.csv"  # Guo et al.'s committed trajectories, as the report reads them
    (results / guo).write_text(
        (Path(__file__).parents[1] / "docs" / "results" / "massive-lab" / guo).read_text()
    )
    md = write_report(results)
    assert md == tmp_path / "docs" / "massive-lab.md"
    text = md.read_text()
    # peak layer 1 (layer 0 does not grow; layers 1 and 2 tie, the first wins), 2 at seed 3
    # (layer 1 stays flat there); growth 4, 5, 6 at those layers
    assert "BOS norm after each seed's peak layer (seed 1: 1, seed 2: 1, seed 3: 2)" in text
    assert "supported — 5.00 ± 1.00 [4.00–6.00] (3 seeds; per seed 4.00, 5.00, 6.00)" in text
    # softmax / sgd at the end: 10 x growth / 10 = 4, 5, 6; / relu: growth / 1.5
    assert "**SGD keeps the BOS norm flat**" in text and "softmax / sgd: 5.00 ± 1.00" in text
    assert "softmax / relu_attention: 3.33 ± 0.67 [2.67–4.00]" in text
    assert "ReLU attention keeps the BOS norm flat** (softmax's BOS norm >= 3.0x" in text
    assert ": not supported — softmax / relu_attention" in text  # seed 1 is 2.67 < 3
    assert "under 3.0x: seed 1: softmax 4.00x, relu_attention 1.50x." in text  # and only seed 1
    assert "| softmax | AdamW" not in text  # 'about' comes from the record: here the name
    assert "## Without BOS" in text
    assert "2 at a time); sweep wall time 0.2 h over 1 invocation(s)" in text  # 900 s
    assert "- **Against Guo et al.** (their committed AdamW run" in text
    # what the plan still lacks, seed by seed (3 configurations x 3 seeds + no-BOS softmax x 3)
    assert "Coverage: 12 of the 65 planned runs" in text
    assert "controls/softmax (seeds 4-5); controls/sgd (seeds 4-5)" in text
    assert "controls/clip (seeds 1-5)" in text and "nobos/kv_bias (seeds 1-5)" in text
    assert (results / "growth-controls.png").stat().st_size > 1000
    # the same files give the same report: it is a function of the committed data alone
    assert write_report(results).read_text() == text


def test_no_bos_sink_is_judged_on_what_the_rows_spend_slot_included(tmp_path, probe_scalars):
    # kv_bias parks 0.99 of layer 1's rows on its slot; its real keys' leftover is concentrated
    # (top key 0.6 of the weight on tokens) but that is 0.006 of the row: no token is a sink.
    # sigmoid's rows spend 0.2 in all, 0.35 of it on one key: a sink on a token (rows of an
    # unnormalised variant are judged on what they spend on tokens).
    out, results = tmp_path / "out", tmp_path / "docs" / "massive-lab"
    heads = {  # variant -> per layer (top key's share of the weight on tokens, row weight)
        "softmax": [(0.1, 1.0), (0.4, 1.0), (0.2, 1.0)],
        "kv_bias": [(0.1, 0.9), (0.6, 0.01), (0.2, 0.95)],
        "sigmoid": [(0.1, 0.3), (0.35, 0.2), (0.2, 0.3)],
    }

    def planted(variant):
        def plant(step):
            got = {}
            for layer, (top, row) in enumerate(heads[variant]):
                got[metric_key("heads", "top_key_share_of_weight_non_trigger", layer)] = top
                got[metric_key("heads", "row_weight_non_trigger", layer)] = row
            return got

        return plant

    for seed in (1, 2):
        collect_run(*fake_run(out, probe_scalars, "controls", "softmax", "softmax", seed, 3.0),
                    results)  # fmt: skip
        for variant in heads:
            record = lab_fakes.run_record("massive_lab", "nobos", variant, seed, bos=False)
            collect_run(*lab_fakes.fake_run(out, probe_scalars, record, planted(variant)), results)
    text = write_report(results).read_text()
    assert "**Without BOS, softmax still makes a sink** (one real key takes > 0.3" in text
    assert "supported — 0.40 ± 0.00 [0.40–0.40] (seeds 1, 2)" in text
    # kv_bias: largest over layers max(0.1 x 0.9, 0.6 x 0.01, 0.2 x 0.95) = 0.19
    assert "**kv_bias without BOS**: sink on a token prevented" in text
    assert "every seed): yes (0.19 ± 0.00 [0.19–0.19] vs softmax 0.40" in text
    assert "**sigmoid without BOS**: sink on a token prevented" in text
    assert "every seed): no (0.35 ± 0.00 [0.35–0.35] vs softmax 0.40" in text
    # the table reads kv_bias at layer 1, where the slot holds 0.99 of the row
    row = next(line for line in text.splitlines() if line.startswith("| kv_bias |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:6] == ["L1", "0.99 ± 0.00 [0.99–0.99]", "0.01 ± 0.00 [0.01–0.01]",
                          "0.60 ± 0.00 [0.60–0.60]"]  # fmt: skip


def test_no_bos_peak_is_read_where_the_activation_stands_out_most(tmp_path, probe_scalars):
    # each run's largest activation is described at the layer with the largest Sun top-1 /
    # median, seed by seed: softmax's layer 1, sigmoid's layer 2 at seed 1 and layer 0 at seed 2
    out, results = tmp_path / "out", tmp_path / "docs" / "massive-lab"
    planted = {  # (variant, seed) -> (ratio per layer, |h| there, modal dim's share, class shares)
        ("softmax", 1): ([5.0, 14.0, 12.0], 70.0, 1.0, {"ordinary": 0.75, "trigger": 0.25}),
        ("softmax", 2): ([5.0, 16.0, 12.0], 80.0, 1.0, {"ordinary": 1.0}),
        ("sigmoid", 1): ([5.0, 8.0, 600.0], 4000.0, 1.0, {"delimiter": 1.0}),
        ("sigmoid", 2): ([30.0, 8.0, 20.0], 20.0, 0.5, {"trigger": 0.5, "ordinary": 0.25}),
    }

    def plant(variant, seed):
        ratios, top, dim_share, classes = planted[variant, seed]
        at = ratios.index(max(ratios))

        def values(step):
            got = {metric_key("activation", "ratio", i): r for i, r in enumerate(ratios)}
            got[metric_key("residual", "argmax_abs", at)] = top
            got[metric_key("residual", "argmax_dim_share", at)] = dim_share
            for cls in ("bos", "trigger", "delimiter", "ordinary"):
                key = metric_key("residual", f"argmax_class_share_{cls}", at)
                got[key] = classes.get(cls, 0.0)
            return got

        return values

    for seed in (1, 2):
        collect_run(*fake_run(out, probe_scalars, "controls", "softmax", "softmax", seed, 3.0),
                    results)  # fmt: skip
    for variant, seed in planted:
        record = lab_fakes.run_record("massive_lab", "nobos", variant, seed, bos=False)
        collect_run(*lab_fakes.fake_run(out, probe_scalars, record, plant(variant, seed)), results)
    text = write_report(results).read_text()
    table = text[text.index("### Where the largest activation sits") :]
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| s")
    }
    soft = ["14.0, 16.0", "1, 1", "75.0 ± 7.1 [70.0–80.0]", "1.00 ± 0.00 [1.00–1.00]"]
    assert cells["softmax"][1:7] == ["2", *soft, "ordinary 0.75, ordinary 1.00"]
    sig = ["600.0, 30.0", "2, 0", "2010 ± 2814 [20.0–4000]", "0.75 ± 0.35 [0.50–1.00]"]
    assert cells["sigmoid"][2:7] == [*sig, "delimiter 1.00, trigger 0.50"]
    # the verdict compares the same figures: sigmoid's mean 315.0 is not below half of 15.0
    assert "peak reduced (Sun top-1/median below half of softmax's, mean over seeds): no" in text


def test_a_factor_is_judged_at_its_own_peak_layer_on_size_layer_and_timing(tmp_path, probe_scalars):
    # BOS / median token per step (0, 100, 200) at the planted layer; other layers stay at 1.
    # softmax stands out 1, 2, 3 after layer 0: it forms at step 100 with size 3 (both seeds).
    # gelu is smaller (2.0 and 1.8: 0.67x and 0.6x) and forms later (step 200) at both seeds,
    # but moves the peak to layer 1 at seed 2 only. tied is 1.33x at seed 2 but 0.47x at seed
    # 1, where BOS never stands out 1.5x (no peak, so no layer to move): no change. gpt2_init
    # starts BOS tiny (0.1 of the median), 30x growth vs step 0, yet ends at softmax's size and
    # time: the init's scale is no change in the peak.
    out, results = tmp_path / "out", tmp_path / "docs" / "massive-lab"
    planted = {  # (config, seed) -> (layer, standout per step)
        **{("softmax", s): (0, (1.0, 2.0, 3.0)) for s in (1, 2)},
        ("gelu", 1): (0, (1.0, 1.2, 2.0)),
        ("gelu", 2): (1, (1.0, 1.4, 1.8)),
        ("tied", 1): (0, (1.0, 1.2, 1.4)),
        ("tied", 2): (0, (1.0, 2.5, 4.0)),
        **{("gpt2_init", s): (0, (0.1, 2.0, 3.0)) for s in (1, 2)},
    }

    def plant(config, seed):
        layer, standout = planted[config, seed]

        def values(step):
            got = {}
            for i in range(3):
                bos = 5.0 * standout[lab_fakes.STEPS.index(step)] if i == layer else 5.0
                got[metric_key("residual", "first_token_norm", i)] = bos
                got[metric_key("residual", "other_norm_median", i)] = 5.0
            return got

        return values

    def report(runs, out, results):
        for config, seed in runs:
            plan = "controls" if config == "softmax" else "factors"
            record = lab_fakes.run_record("massive_lab", plan, config, seed, "softmax")
            collect_run(*lab_fakes.fake_run(out, probe_scalars, record, plant(config, seed)),
                        results)  # fmt: skip
        return write_report(results).read_text()

    text = report(planted, out, results)
    lines = {
        line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **Factor ")
    }
    gelu, tied, init = (lines[f"Factor {n}"] for n in ("gelu", "tied", "gpt2_init"))
    table = {line.split("|")[1].strip(): line.split("|")[4].strip()
             for line in text.splitlines() if line.startswith("| ")}  # fmt: skip
    assert table["gelu"] == "0, 1" and table["tied"] == "none, 0"  # the peak layer column
    assert "changes the peak's size (BOS / median token): yes, smaller — gelu 1.90" in gelu
    assert "gelu / softmax per seed 0.67, 0.60" in gelu
    assert "moves the peak layer (every seed pair where both have a peak): no — in 1 of 2 " in gelu
    assert "(per seed 0, 1 vs 0, 0)" in gelu
    assert "): yes, later — per seed 200, 200 vs 100, 100." in gelu
    assert "size (BOS / median token): no — tied" in tied and "per seed 0.47, 1.33" in tied
    assert "have a peak): no — in 0 of 1 (per seed none, 0 vs 0, 0)" in tied
    assert "): no — per seed never, 100 vs 100, 100." in tied
    assert "size (BOS / median token): no — gpt2_init 3.00" in init
    assert "when it forms (first step BOS > 1.5x the median token): no" in init
    # a factor whose BOS never stands out at any seed: no peak to time
    out, results = tmp_path / "out2", tmp_path / "docs2" / "massive-lab"
    planted |= {("gpt2_init", s): (0, (1.0, 1.1, 1.2)) for s in (1, 2)}
    text = report(
        [("softmax", 1), ("softmax", 2), ("gpt2_init", 1), ("gpt2_init", 2)], out, results
    )
    flat = next(line for line in text.splitlines() if "Factor gpt2_init" in line)
    assert "the median token): yes, it never forms — per seed never, never vs 100, 100." in flat


def test_sweep_skips_only_runs_committed_by_the_same_command(tmp_path, monkeypatch):
    from sysout.lab import sweep

    run = lab_plan("massive_lab", ["controls"], [2])[0]
    results, out = tmp_path / "results", tmp_path / "out"
    stem = results / "runs" / run.plan / f"{run.config.name}_s{run.seed}"
    stem.parent.mkdir(parents=True)
    trained: list[list[str]] = []

    class Done:
        returncode = 1  # a failed run is not collected, so no fake log is needed

    def fake_train(cmd, **_):
        trained.append(cmd)
        return Done()

    monkeypatch.setattr(sweep.subprocess, "run", fake_train)
    # Committed by the same overrides on another machine (another output folder): skipped.
    other = " ".join(["train.py", *run.overrides(Path("/elsewhere"))])
    stem.with_suffix(".json").write_text(
        json.dumps({"returncode": 0, "wall_s": 9.0, "command": other})
    )
    assert sweep.run_one(run, out, results)["wall_s"] == 9.0 and trained == []
    # ... unless asked to redo it.
    assert sweep.run_one(run, out, results, redo=True)["returncode"] == 1 and len(trained) == 1
    # Committed by a different command (another step count): trained again.
    longer = " ".join(["train.py", *run.overrides(out)]).replace("max_steps=5000", "max_steps=6000")
    stem.with_suffix(".json").write_text(
        json.dumps({"returncode": 0, "wall_s": 9.0, "command": longer})
    )
    (out / run.name / "run.json").unlink()
    assert sweep.run_one(run, out, results)["returncode"] == 1 and len(trained) == 2


def test_sweep_wall_time_counts_invocations_that_ran_side_by_side_once(tmp_path):
    from sysout.lab.sweep import record_sweep
    from sysout.lab.text import busy_seconds

    # 10:00-10:20 and 10:10-10:30 overlap (30 min in all); 11:00-11:05 stands apart; an
    # invocation recorded without its end time (a reconstructed one) counts alone
    sweeps = [{"wall_s": 1200.0, "ended": "2026-12-07 10:20:00"},
              {"wall_s": 1200.0, "ended": "2026-12-07 10:30:00"},
              {"wall_s": 300.0, "ended": "2026-12-07 11:05:00"}, {"wall_s": 60.0}]  # fmt: skip
    assert busy_seconds(sweeps) == 1800.0 + 300.0 + 60.0
    assert busy_seconds(sweeps[1::-1]) == 1800.0  # order of the file is not time order
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"sweeps": sweeps[:2]}))
    record_sweep(path, 5.0, 1, 0, 1)  # ends now, long after: adds its own 5 s
    assert json.loads(path.read_text())["wall_s"] == 1805.0


def test_massive_lab_is_guos_setting_and_logs_the_residual_figures(compose_train, tmp_path):
    """A few steps of `python train.py experiment=massive_lab` (its default seed): Guo et al.'s
    parametrisation, and the probe's residual-peak figures in the CSV log for every layer."""
    import csv

    import torch

    from sysout.outliers.keys import read_metric
    from sysout.training.run import train

    torch.set_num_threads(1)
    cfg = compose_train(
        "experiment=massive_lab",
        "logger=csv",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "data.val_sequences=2",
        "trainer.enable_progress_bar=false",
        "data.batch_size=2",
        "callbacks.outliers.every_n_steps=1",
        "callbacks.outliers.probe_windows=2",
        "~callbacks.step_checkpoints",
    )
    m = cfg.model
    assert (m.activation, m.tie_embeddings, m.init, m.norm_bias, m.bias) == (
        "relu", False, "torch_default", True, False,
    )  # fmt: skip
    assert cfg.optim.name == "adamw" and cfg.optim.decay_params == "all"
    assert cfg.optim.schedule == "constant" and cfg.trainer.gradient_clip_val is None
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [
            r for r in csv.DictReader(f) if r.get("outliers/residual/layer_00/first_token_norm")
        ]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    last = {k: float(v) for k, v in rows[-1].items() if v not in ("", None)}
    for layer in range(3):
        bos = read_metric(last, "residual", "first_token_norm", layer)
        median = read_metric(last, "residual", "other_norm_median", layer)
        assert bos > 0 and median > 0 and read_metric(last, "residual", "other_norm_mean", layer)
        excess = read_metric(last, "residual", "first_token_excess", layer)
        assert excess == pytest.approx(bos - median, rel=1e-4, abs=1e-4)  # Guo's difference
        # softmax with BOS: query 0 sees itself alone, with weight one
        assert read_metric(last, "attention", "first_query_weight", layer) == pytest.approx(1.0)
        assert 0 <= read_metric(last, "residual", "argmax_class_share_bos", layer) <= 1


@pytest.mark.parametrize("lab", ["massive-lab", "sink-lab"])
def test_committed_report_is_what_its_committed_runs_regenerate(tmp_path, lab):
    # Runs committed without rewriting the report (or a report edited by hand) fail here.
    committed = Path(__file__).parents[1] / "docs" / "results"
    copy = tmp_path / lab
    shutil.copytree(committed / lab, copy)
    written = write_report(copy)
    assert written == copy.with_suffix(".md")
    # The report names the folder it was written from: the copy's, here.
    text = written.read_text().replace(str(copy), f"docs/results/{lab}")
    assert text == (committed / f"{lab}.md").read_text()

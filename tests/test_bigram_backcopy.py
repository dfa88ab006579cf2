"""The Bigram-Backcopy task: tables, the generator's rules, the true loss, the data module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sysout.data import BigramBackcopyDataModule
from sysout.data.bigram_task import BigramBackcopy, TaskError, sequence_uniforms


@pytest.fixture(scope="module")
def text(shared_dir) -> str:
    return (shared_dir / "data" / "tinyshakespeare" / "input.txt").read_text()


@pytest.fixture(scope="module")
def task(text) -> BigramBackcopy:
    return BigramBackcopy.from_text(text)


def sample(task: BigramBackcopy, n: int, length: int = 257, seed: int = 0) -> np.ndarray:
    return task.generate(np.stack([sequence_uniforms(seed, 1, i, length) for i in range(n)]))


def test_tables_from_tiny_shakespeare(task, text) -> None:
    assert task.vocab_size == len(set(text)) + 1 == 66 and task.bos_id == 65
    assert np.allclose(task.bigram.sum(1), 1.0) and np.isclose(task.marginal.sum(), 1.0)
    counts = {c: text.count(c) for c in set(text)}
    top3 = sorted(counts, key=lambda c: -counts[c])[:3]
    assert [task.chars[i] for i in task.triggers] == top3 == [" ", "e", "t"]
    # One bigram entry against a direct count.
    h, e = task.chars.index("h"), task.chars.index("e")
    pairs_h = sum(1 for a, b in zip(text, text[1:]) if a == "h")
    assert task.bigram[h, e] == pytest.approx(text.count("he") / pairs_h)
    assert task.first_char[list(task.triggers)].sum() == 0


def test_generated_sequences_follow_the_trigger_rule(task) -> None:
    seqs = sample(task, 200)
    assert (seqs[:, 0] == task.bos_id).all() and (seqs[:, 1:] != task.bos_id).all()
    assert not task.is_trigger(seqs[:, 1]).any()  # first character: frequencies w/o triggers
    trig = task.is_trigger(seqs[:, 1:-1])
    rows, cols = np.nonzero(trig)
    cols = cols + 1  # positions in seqs
    assert len(cols) > 1000
    assert (seqs[rows, cols + 1] == seqs[rows, cols - 1]).all()  # copy the token before
    assert not (task.is_trigger(seqs[:, 1:]) & task.is_trigger(seqs[:, :-1])).any()


def test_non_trigger_transitions_follow_the_bigram_table(task) -> None:
    seqs = sample(task, 400)
    x, y = seqs[:, 1:-1].ravel(), seqs[:, 2:].ravel()
    h = task.chars.index("h")
    follow = y[x == h]
    empirical = np.bincount(follow, minlength=task.vocab_size)[:-1] / len(follow)
    assert len(follow) > 1000
    assert np.abs(empirical - task.bigram[h]).max() < 0.05


def test_true_loss_against_a_direct_computation(task) -> None:
    seqs = sample(task, 3, length=60)
    nll = task.true_nll(seqs)
    for s, seq in enumerate(seqs):
        for i in range(len(seq) - 1):
            a, b = int(seq[i]), int(seq[i + 1])
            if a == task.bos_id:
                expected = -math.log(task.first_char[b])
            elif a in task.triggers:
                expected = 0.0
            else:
                expected = -math.log(task.bigram[a, b])
            assert nll[s, i] == pytest.approx(expected)


def test_sequence_depends_only_on_its_index(task, shared_dir) -> None:
    dm = BigramBackcopyDataModule(
        str(shared_dir / "data/tinyshakespeare/input.txt"), block_size=32, batch_size=4
    )
    dm.setup()
    train = dm.train_dataloader().dataset
    batch = train.__getitems__([3, 7, 11])
    alone = train.__getitems__([7])[0]
    assert torch.equal(batch[1][0], alone[0]) and torch.equal(batch[1][1], alone[1])
    assert torch.equal(batch[0][0][1:], batch[0][1][:-1])  # target = input shifted by one
    val_a = next(iter(dm.val_dataloader()))
    val_b = next(iter(dm.val_dataloader()))
    assert torch.equal(val_a[0], val_b[0]) and set(val_a[2]) == {
        "true_nll",
        "trigger",
        "non_trigger",
    }


@pytest.mark.parametrize("bos", [True, False])
def test_probe_inputs(shared_dir, bos: bool) -> None:
    dm = BigramBackcopyDataModule(
        str(shared_dir / "data/tinyshakespeare/input.txt"), block_size=64, bos=bos
    )
    probe = dm.probe_inputs(5, "Summer is warm. Winter is cold.\u2603")
    assert probe.windows.shape == (5, 64)
    assert torch.equal(probe.windows, dm.probe_inputs(5).windows)  # fixed
    assert ((probe.windows[:, 0] == dm.task.bos_id).all()) == bos
    assert "".join(probe.decode(i) for i in probe.sentence) == (
        "<BOS>" * bos + "Summer is warm. Winter is cold."  # the snowman is not in the vocabulary
    )
    trig, non = probe.query_groups["trigger"], probe.query_groups["non_trigger"]
    assert torch.equal(trig, torch.from_numpy(dm.task.is_trigger(probe.windows.numpy())))
    assert not (trig & non).any()
    assert bool(non[:, 0].any()) != bos  # position 0 is a query only when it is a character
    assert (trig | non)[:, 1:].all()


def test_bad_options_fail_early_saying_what_to_do(shared_dir, tmp_path) -> None:
    path = str(shared_dir / "data/tinyshakespeare/input.txt")
    with pytest.raises(TaskError, match="data.bos must be true or false"):
        BigramBackcopyDataModule(path, block_size=64, bos="yes")
    with pytest.raises(TaskError, match="data.text_path"):
        BigramBackcopyDataModule(str(tmp_path / "missing.txt"), block_size=64)
    with pytest.raises(TaskError, match="block size between"):
        BigramBackcopyDataModule(path, block_size=10**9)


def test_sink_lab_trains_with_the_data_vocabulary_and_reports_the_gap(compose_train, tmp_path):
    from sysout.training.run import train

    cfg = compose_train(
        "experiment=sink_lab",
        "logger=csv",
        "~callbacks.outliers",
        "model.block_size=64",
        "data.val_sequences=8",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.enable_progress_bar=false",
    )
    assert cfg.model.n_layer == 3 and cfg.optim.betas == [0.9, 0.99] and cfg.data.bos is True
    metrics = train(cfg)
    assert metrics["val/loss_gap"] == pytest.approx(
        metrics["val/loss"] - metrics["val/true_loss"], abs=1e-5
    )
    assert 1.0 < metrics["val/true_loss"] < 2.5  # the task's entropy, nats per character
    assert metrics["val/loss_trigger"] > 0 and metrics["val/loss_non_trigger"] > 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["vocab_size"] == 66

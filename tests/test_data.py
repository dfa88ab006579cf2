"""Data: token cache round trip and invalidation, windows, and clear errors for bad sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sysout.data import (
    EOT_TOKEN,
    DataSourceError,
    FixedWindows,
    RandomWindows,
    TextDataModule,
    TextSource,
    get_tokenizer,
    load_tokens,
)
from sysout.data.token_cache import cache_paths

TEXT = "Summer is warm. Winter is cold.\nThe sun rises in the east.\r\nIt sets in the west.\n" * 20


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT.encode())
    return path


def local(path) -> TextSource:
    return TextSource.from_config({"kind": "local", "path": str(path)})


def test_cache_round_trip_equals_direct_tokenization(corpus, tmp_path) -> None:
    tokens = load_tokens(local(corpus), "train", tmp_path / "cache")
    expected = get_tokenizer().encode_ordinary(TEXT.replace("\r\n", "\n")) + [EOT_TOKEN]
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == expected
    bin_path, meta_path = cache_paths(local(corpus), "train", tmp_path / "cache", "data")
    assert bin_path.is_file() and json.loads(meta_path.read_text())["num_tokens"] == len(expected)


def test_second_load_reads_the_cache_without_tokenizing(corpus, tmp_path, monkeypatch) -> None:
    first = load_tokens(local(corpus), "train", tmp_path / "cache")

    def no_reading(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(TextSource, "load_documents", no_reading)
    second = load_tokens(local(corpus), "train", tmp_path / "cache")
    assert np.array_equal(first, second)


def test_changed_source_never_reuses_a_stale_cache(corpus, tmp_path) -> None:
    before = load_tokens(local(corpus), "train", tmp_path / "cache")
    corpus.write_text("Entirely different words now.")
    after = load_tokens(local(corpus), "train", tmp_path / "cache")
    assert after.tolist() == get_tokenizer().encode_ordinary("Entirely different words now.") + [
        EOT_TOKEN
    ]
    assert len(before) != len(after)
    assert len(list((tmp_path / "cache").glob("*.bin"))) == 2  # keyed by content
    other_split = cache_paths(local(corpus), "val", tmp_path / "cache", "data")[0]
    assert other_split != cache_paths(local(corpus), "train", tmp_path / "cache", "data")[0]


def test_corrupt_cache_is_rebuilt(corpus, tmp_path) -> None:
    good = load_tokens(local(corpus), "train", tmp_path / "cache").tolist()
    bin_path, _ = cache_paths(local(corpus), "train", tmp_path / "cache", "data")
    bin_path.write_bytes(bin_path.read_bytes()[:10])  # an interrupted write
    assert load_tokens(local(corpus), "train", tmp_path / "cache").tolist() == good


def test_folder_and_jsonl_sources(tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("first document")
    (folder / "b.txt").write_text("second document")
    enc = get_tokenizer()
    tokens = load_tokens(local(folder), "train", tmp_path / "cache").tolist()
    doc = lambda t: enc.encode_ordinary(t) + [EOT_TOKEN]  # noqa: E731
    assert sorted([tokens[: len(doc("first document"))], tokens[len(doc("first document")) :]]) == (
        sorted([doc("first document"), doc("second document")])
    )
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one"}\n{"text": "two"}\n')
    tokens = load_tokens(local(jsonl), "train", tmp_path / "cache").tolist()
    assert tokens == doc("one") + doc("two")


def test_missing_folder_says_where_it_looked_and_how_to_fix(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "train.txt"
    module = TextDataModule(
        {
            "train": {"kind": "local", "path": str(missing)},
            "val": {"kind": "local", "path": str(missing)},
        },
        block_size=8,
    )
    with pytest.raises(DataSourceError) as err:
        module.check_sources()
    message = str(err.value)
    assert str(missing) in message and "SYSOUT_SHARED_DIR" in message
    assert "data.splits.train" in message


def test_empty_text_and_bad_keys_are_rejected(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataSourceError, match="empty"):
        load_tokens(local(empty), "train", tmp_path / "cache")
    with pytest.raises(DataSourceError, match="unknown keys"):
        TextSource.from_config({"kind": "local", "path": "x", "fiels": "text"})
    with pytest.raises(DataSourceError, match="kind must be"):
        TextSource.from_config({"kind": "s3", "path": "x"})


def test_block_size_longer_than_data_is_rejected(corpus, tmp_path) -> None:
    module = TextDataModule(
        {
            "train": {"kind": "local", "path": str(corpus)},
            "val": {"kind": "local", "path": str(corpus)},
        },
        block_size=5000,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DataSourceError, match="fewer than block_size"):
        module.prepare_data()


def test_random_windows_are_deterministic_shifted_and_in_range() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    data = RandomWindows(tokens, block_size=16, num_samples=50, seed=3)
    x, y = data[7]
    assert torch.equal(y[:-1], x[1:]) and y[-1] == x[-1] + 1
    assert torch.equal(data[7][0], RandomWindows(tokens, 16, 50, seed=3)[7][0])
    starts = {data.start(i) for i in range(50)}
    assert len(starts) > 40 and max(starts) <= 1000 - 17
    assert RandomWindows(tokens, 16, 50, seed=4).start(7) != data.start(7) or data.start(8) != (
        RandomWindows(tokens, 16, 50, seed=4).start(8)
    )


def test_fixed_windows_tile_the_text_without_overlap() -> None:
    tokens = np.arange(100, dtype=np.uint16)
    data = FixedWindows(tokens, block_size=10)
    assert len(data) == 9  # 9 full windows of 10 + 1 target token fit in 100
    assert data[1][0].tolist() == list(range(10, 20)) and data[1][1].tolist() == list(range(11, 21))
    assert len(FixedWindows(tokens, block_size=10, limit=3)) == 3

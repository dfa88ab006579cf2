"""Token ids of a source, tokenized once and cached as a uint16 memmap (nanoGPT's layout).

The file name carries a hash of the source's content, the tokenizer and the split, so a changed
source never reuses a stale cache. Files are written under a temporary name and renamed, so an
interrupted tokenization leaves no half-written cache behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sysout.data.sources import DataSourceError, TextSource, cache_key
from sysout.data.tokenizer import ENCODING, EOT_TOKEN, get_tokenizer

log = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[-40:] or "source"


def cache_paths(
    source: TextSource,
    split: str,
    cache_dir: str | Path,
    where: str,
    identity: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """The .bin and .json paths; ``identity`` (from :meth:`TextSource.identity`) if known."""
    key = cache_key(source.identity(where) if identity is None else identity, ENCODING)
    stem = (
        f"{split}-{_slug(Path(source.path).name if source.kind == 'local' else source.path)}-{key}"
    )
    base = Path(cache_dir).expanduser()
    return base / f"{stem}.bin", base / f"{stem}.json"


def _valid_cache(bin_path: Path, meta_path: Path) -> bool:
    if not (bin_path.is_file() and meta_path.is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
        return bin_path.stat().st_size == 2 * int(meta["num_tokens"])
    except (ValueError, KeyError, OSError):
        return False


def load_tokens(
    source: TextSource,
    split: str,
    cache_dir: str | Path,
    tiktoken_cache_dir: str | None = None,
    num_proc: int | None = None,
    where: str = "data",
) -> np.memmap:
    """Token ids of ``source`` as a read-only uint16 memmap, tokenizing on first use."""
    identity = source.identity(where)  # hashes the files once: for the key and the metadata
    bin_path, meta_path = cache_paths(source, split, cache_dir, where, identity)
    if _valid_cache(bin_path, meta_path):
        return np.memmap(bin_path, dtype=np.uint16, mode="r")
    if bin_path.exists():
        log.warning("token cache %s is incomplete or corrupt; rebuilding it", bin_path)

    enc = get_tokenizer(tiktoken_cache_dir)
    docs = source.load_documents(where)
    field, join_eot = source.text_field, source.join == "eot"

    def tokenize(batch: dict) -> dict:
        ids = enc.encode_ordinary_batch([t.replace("\r\n", "\n") for t in batch[field]])
        if join_eot:  # an empty document adds nothing, not a lone separator
            ids = [d + [EOT_TOKEN] if d else d for d in ids]
        return {"ids": ids, "len": [len(d) for d in ids]}

    tokenized = docs.map(
        tokenize,
        batched=True,
        remove_columns=docs.column_names,
        num_proc=num_proc if num_proc and len(docs) > 1000 else None,
        desc=f"tokenizing {split}",
        load_from_cache_file=False,
    )
    total = int(np.sum(tokenized["len"], dtype=np.int64))
    if total == 0:
        raise DataSourceError(f"{where}: the text is empty ({split} split): {source.path}")

    bin_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = bin_path.with_suffix(f".tmp{os.getpid()}")
    out = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(total,))
    pos = 0
    shards = max(1, min(1024, len(tokenized) // 1000))
    for i in range(shards):
        chunk = tokenized.shard(shards, i, contiguous=True).with_format("numpy")
        if len(chunk) == 0:
            continue
        ids = np.concatenate(list(chunk["ids"])).astype(np.uint16)
        out[pos : pos + len(ids)] = ids
        pos += len(ids)
    out.flush()
    del out
    os.replace(tmp, bin_path)
    meta = {
        "num_tokens": total,
        "split": split,
        "tokenizer": ENCODING,
        "source": identity,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    log.info("tokenized %s split: %d tokens -> %s", split, total, bin_path)
    return np.memmap(bin_path, dtype=np.uint16, mode="r")

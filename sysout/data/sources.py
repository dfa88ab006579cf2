"""Where text comes from: a local file or folder, or a Hugging Face hub dataset.

Everything is read through HF ``datasets`` so local corpora and hub corpora take the same path.
A source is described by a plain dict (from a Hydra config) and turned into a :class:`TextSource`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LOCAL_TEXT_SUFFIXES = (".txt", ".raw", ".text")
LOCAL_JSON_SUFFIXES = (".jsonl", ".json")


class DataSourceError(ValueError):
    """A data source that cannot be read, with what to do about it."""


@dataclass(frozen=True)
class TextSource:
    kind: str  # "local" or "hub"
    path: str  # a file or folder (local) or a hub dataset name
    name: str | None = None  # hub dataset config, e.g. "wikitext-2-raw-v1"
    split: str = "train"  # hub split expression, e.g. "train[:8000000]"
    text_field: str = "text"
    # How documents are joined: "eot" puts GPT-2's <|endoftext|> between documents, "concat"
    # concatenates them as they are (WikiText rows are lines that carry their own newline).
    join: str = "eot"
    pattern: str = "*.txt"  # files of a local folder

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | TextSource, where: str = "data") -> TextSource:
        if isinstance(cfg, TextSource):
            return cfg
        cfg = dict(cfg)
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise DataSourceError(
                f"{where}: unknown keys {sorted(unknown)}; "
                f"valid: {sorted(cls.__dataclass_fields__)}"
            )
        source = cls(**cfg)
        if source.kind not in ("local", "hub"):
            raise DataSourceError(f"{where}.kind must be 'local' or 'hub', got {source.kind!r}")
        if source.join not in ("eot", "concat"):
            raise DataSourceError(f"{where}.join must be 'eot' or 'concat', got {source.join!r}")
        return source

    def local_files(self, where: str = "data") -> list[Path]:
        """The files of a local source, or a clear error saying where we looked."""
        path = Path(self.path).expanduser()
        if path.is_file():
            return [path]
        if path.is_dir():
            files = sorted(p for p in path.glob(self.pattern) if p.is_file())
            if files:
                return files
            raise DataSourceError(
                f"{where}: the folder {path.resolve()} holds no files matching {self.pattern!r}; "
                f"set {where}.pattern or put text files there"
            )
        raise DataSourceError(
            f"{where}: no such file or folder: {path.resolve()}. "
            "Looked there for the local corpus. "
            "Fix: set SYSOUT_SHARED_DIR to the folder that holds data/ (the repository's "
            f"../shared by default), or point {where}.path at your own text file or folder."
        )

    def identity(self, where: str = "data") -> dict[str, Any]:
        """What the cached tokens depend on: the description plus the content (local files'
        bytes, or the hub dataset's fingerprint)."""
        ident: dict[str, Any] = asdict(self)
        if self.kind == "local":
            ident["path"] = str(Path(self.path).expanduser().resolve())
            ident["files"] = {str(p): _sha256(p) for p in self.local_files(where)}
        else:
            ident["fingerprint"] = self.load_documents(where)._fingerprint
        return ident

    def load_documents(self, where: str = "data"):
        """A ``datasets.Dataset`` with one text column ``text_field``."""
        import datasets

        if self.kind == "local":
            files = [str(p) for p in self.local_files(where)]
            if all(f.endswith(LOCAL_JSON_SUFFIXES) for f in files):
                ds = datasets.load_dataset("json", data_files=files, split="train")
            else:
                ds = datasets.load_dataset(
                    "text", data_files=files, sample_by="document", split="train"
                )
                ds = ds.rename_column("text", self.text_field) if self.text_field != "text" else ds
        else:
            try:
                ds = datasets.load_dataset(self.path, self.name, split=self.split)
            except Exception as err:
                raise DataSourceError(
                    f"{where}: could not load hub dataset {self.path!r} (config {self.name!r}, "
                    f"split {self.split!r}): {err}. Without network, use a local source "
                    f"({where}.kind=local {where}.path=/path/to/text)."
                ) from err
        if self.text_field not in ds.column_names:
            raise DataSourceError(
                f"{where}: dataset has no column {self.text_field!r} (columns: {ds.column_names}); "
                f"set {where}.text_field"
            )
        return ds


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(identity: dict[str, Any], tokenizer: str) -> str:
    """A short hash of a source's :meth:`TextSource.identity` and the tokenizer: it changes
    whenever the content or the tokenizer does."""
    blob = json.dumps({**identity, "tokenizer": tokenizer}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]

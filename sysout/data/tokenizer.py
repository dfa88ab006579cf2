"""The GPT-2 byte-pair encoding (tiktoken ``r50k_base``), loadable offline from a local cache."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import tiktoken

ENCODING = "r50k_base"  # identical to GPT-2's BPE
EOT_TOKEN = 50256


@lru_cache(maxsize=4)
def get_tokenizer(cache_dir: str | None = None) -> tiktoken.Encoding:
    """Return the GPT-2 BPE. ``cache_dir`` (a tiktoken cache folder) is used when given and
    TIKTOKEN_CACHE_DIR is not already set; otherwise tiktoken downloads it itself."""
    if cache_dir and not os.environ.get("TIKTOKEN_CACHE_DIR") and Path(cache_dir).is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    try:
        return tiktoken.get_encoding(ENCODING)
    except Exception as err:  # network errors come in many types
        where = os.environ.get("TIKTOKEN_CACHE_DIR", "<unset>")
        raise RuntimeError(
            f"could not load the GPT-2 tokenizer ({ENCODING}): {err}. TIKTOKEN_CACHE_DIR={where}. "
            "Without network, point TIKTOKEN_CACHE_DIR (or paths.shared_dir) at a tiktoken cache "
            "holding r50k_base, such as ../shared/tiktoken."
        ) from err

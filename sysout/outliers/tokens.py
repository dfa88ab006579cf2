"""Which tokens carry outliers: initial / delimiter / weak-semantic / other (SPEC 1, claim 1).

The papers find massive activations and attention sinks at the start token and at tokens of
little meaning: delimiters ('.', ',', '\\n') and weak-semantic words ('the', 'and', 'of').
:func:`token_class` names the class of one token from its position and its string;
:func:`class_counts` tallies a list of (position, string) pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

CLASSES = ("initial", "delimiter", "weak_semantic", "other")
DELIMITERS = frozenset(".,;:!?-–—()[]{}\"'`/\\|<>")
# Function words and special tokens (BOS/EOS of the common tokenizers).
WEAK_SEMANTIC = frozenset(
    (
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "he",
        "she",
        "they",
        "we",
        "i",
        "you",
        "his",
        "her",
        "their",
        "our",
        "my",
        "your",
        "not",
        "no",
        "so",
        "than",
        "then",
        "also",
    )
) | frozenset({"<s>", "</s>", "<|endoftext|>", "<|begin_of_text|>", "<bos>", "<eos>"})


def token_class(position: int, text: str) -> str:
    """``initial`` at position 0; ``delimiter`` for whitespace or punctuation only (including
    newlines); ``weak_semantic`` for a function word or a special token; else ``other``."""
    if position == 0:
        return "initial"
    stripped = text.replace("Ġ", " ").replace("▁", " ").strip()
    if not stripped or all(ch in DELIMITERS for ch in stripped):
        return "delimiter"
    if stripped.lower() in WEAK_SEMANTIC or text.strip() in WEAK_SEMANTIC:
        return "weak_semantic"
    return "other"


def class_counts(tokens: Iterable[tuple[int, str]]) -> dict[str, int]:
    """How many of the (position, string) pairs fall in each class (every class present)."""
    counts = Counter(token_class(p, s) for p, s in tokens)
    return {c: counts.get(c, 0) for c in CLASSES}

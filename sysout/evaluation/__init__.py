"""Evaluation of trained checkpoints (SPEC section 5): perplexity, validation loss, compression
robustness (quantization, pruning, mitigation probes) and the outlier report.

``evaluate.py`` calls :func:`sysout.evaluation.run.evaluate`; the pieces are usable alone:

    from sysout.evaluation import load_checkpoint, perplexity
    model = load_checkpoint("runs/x/checkpoints/last.ckpt").model
    print(perplexity(model, tokens, block_size=model.config.block_size).ppl)
"""

from sysout.evaluation.checkpoints import (
    CheckpointEntry,
    CheckpointError,
    LoadedCheckpoint,
    load_checkpoint,
    make_label,
    resolve_checkpoints,
    select_checkpoint,
)
from sysout.evaluation.perplexity import PerplexityResult, Window, perplexity, window_plan
from sysout.evaluation.robustness import (
    CheckpointResult,
    MethodResult,
    evaluate_methods,
    normalize_methods,
    parse_method_spec,
)

__all__ = [
    "CheckpointEntry",
    "CheckpointError",
    "CheckpointResult",
    "LoadedCheckpoint",
    "MethodResult",
    "PerplexityResult",
    "Window",
    "evaluate_methods",
    "load_checkpoint",
    "make_label",
    "normalize_methods",
    "parse_method_spec",
    "perplexity",
    "resolve_checkpoints",
    "select_checkpoint",
    "window_plan",
]

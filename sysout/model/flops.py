"""Model FLOPs for MFU: the PaLM / nanoGPT estimate, attention included."""

from __future__ import annotations

from sysout.model.gpt import GPT


def flops_per_token(model: GPT, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 N (matmuls, forward + backward) + 12 L C T (attention scores
    and weighted values, forward + backward), N the non-position-embedding parameters."""
    cfg = model.config
    t = seq_len or cfg.block_size
    return 6.0 * model.num_parameters(non_embedding=True) + 12.0 * cfg.n_layer * cfg.n_embd * t

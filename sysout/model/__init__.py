from sysout.model.gpt import GPT, MLP, Block, CausalSelfAttention, GPTConfig, LayerNorm, build_gpt

__all__ = ["GPT", "MLP", "Block", "CausalSelfAttention", "GPTConfig", "LayerNorm", "build_gpt"]

from sysout.model.flops import flops_per_token
from sysout.model.gpt import GPT, MLP, Block, CausalSelfAttention, GPTConfig, LayerNorm, build_gpt

__all__ = [
    "flops_per_token",
    "GPT",
    "MLP",
    "Block",
    "CausalSelfAttention",
    "GPTConfig",
    "LayerNorm",
    "build_gpt",
]

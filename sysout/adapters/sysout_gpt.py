"""The adapter of sysout's own GPT (nanoGPT names; attention measured by the variant's formula)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sysout.adapters.base import AttentionCapture, BlockParts, ModelAdapter, register_adapter
from sysout.model import GPT


@register_adapter
class SysoutGPTAdapter(ModelAdapter):
    family = "sysout"
    description = "sysout GPT, any attention variant"

    model: GPT

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, GPT)

    @property
    def name(self) -> str:
        return str(self.model.config.attention)

    @property
    def prefix_tokens(self) -> int:
        return int(self.model.config.sink_tokens)

    @property
    def max_length(self) -> int:
        return int(self.model.config.block_size)

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.transformer.h)

    def parts(self, index: int) -> BlockParts:
        b = self.model.transformer.h[index]
        return BlockParts(
            block=b,
            attn=b.attn,
            down_proj=b.mlp.c_proj,
            up_proj=b.mlp.c_fc,
            gate_proj=None,
            act=b.mlp.act,
            attn_norm=b.ln_1,
            mlp_norm=b.ln_2,
            attn_out_proj=b.attn.c_proj,
        )

    @property
    def attention_residual(self) -> bool:
        return True  # Block.forward: x = x + attn(ln_1(x)); x + mlp(ln_2(x))

    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f

    def output_head(self) -> nn.Module:
        return self.model.lm_head

    def capture_attention(
        self, index: int, callback: Callable[[AttentionCapture], None]
    ) -> list[RemovableHandle]:
        attn = self.model.transformer.h[index].attn
        variant = attn.variant

        def hook(_m: nn.Module, args: tuple, _out: Tensor) -> None:
            q, k, v, x = args
            callback(
                AttentionCapture(
                    q=q,
                    k=k,
                    v=v,
                    weights=lambda: variant.attention_weights(q, k, x),
                    key_mass=lambda: variant.key_mass(q, k, v, x).float(),
                    out_proj=attn.c_proj,
                )
            )

        return [variant.register_forward_hook(hook)]

    def logits(self, idx: Tensor) -> Tensor:
        # .forward, not __call__: a model compiled in place (nn.Module.compile) would otherwise
        # run its compiled graph; the submodules' __call__ still fires the hooks.
        return self.model.forward(idx)[0]

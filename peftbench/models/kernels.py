"""The same mathematics in fewer saved activations: kernels for the eager code paths of GPT-Neo's family.

**Attention.** transformers runs GPT-Neo's attention only eagerly (or with flash-attn installed). The eager
path upcasts queries and keys to fp32 and keeps fp32 copies of them and the softmaxed score matrix for
backward: 11 MiB a layer per 256-token sequence of GPT-Neo-1.3B in bf16, 0.25 GiB over its 24 layers
(``peftbench bench memory`` counts them). torch's ``scaled_dot_product_attention`` computes the same thing
(softmax of unscaled scores in fp32, with the causal window and the padding mask) without keeping them.

**GELU.** GPT-Neo's (and GPT-2's, GPT-J's) ``gelu_new`` is the tanh approximation of GELU written as eight
tensor operations, several of which keep an intermediate-sized tensor for backward (12 MiB a layer, 0.28 GiB
per sequence over GPT-Neo-1.3B's layers). transformers' ``GELUTanh``
is the same function in one torch kernel that keeps only its input ("equivalent to NewGELU", transformers
says; it rounds once instead of at every step).

The swaps keep every weight and the model's config, so checkpoints are unchanged; evaluation gets them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention

SDPA = "sdpa"


class GPTNeoSdpaAttention(GPTNeoSelfAttention):
    """GPTNeoSelfAttention whose scores go through ``F.scaled_dot_product_attention``."""

    def _attn(self, query, key, value, attention_mask=None):  # noqa: ANN001, ANN202 -- GPTNeoSelfAttention's
        query_length, key_length = query.size(-2), key.size(-2)
        # The layer's own causal window (local layers see the last window_size tokens), as the eager path's
        # ``bias`` buffer holds it, built here for any length: packed rows may outgrow the buffer's
        # max_position_embeddings, as their positions restart.
        distance = torch.arange(key_length - query_length, key_length, device=query.device)[:, None] - torch.arange(
            key_length, device=query.device
        )
        allowed = distance >= 0
        if self.attention_type == "local":
            allowed &= distance < self.config.window_size
        if attention_mask is not None:  # transformers' eager mask: 0 where attended, the dtype's minimum elsewhere
            allowed = allowed & (attention_mask == 0)
        # A row that sees nothing (a padding query before its sequence starts) would give NaN, and NaN values
        # poison every query through 0 × NaN; letting it see everything keeps it finite and changes no real token.
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        dropout = self.attn_dropout.p if self.training else 0.0
        # GPT-Neo does not scale its scores by 1/sqrt(head_dim): in fp16 they can pass 65504, which is why the
        # eager path computes them in fp32 (bf16 has fp32's range). A kernel that materialises fp16 scores (the
        # math backend) would overflow where eager does not.
        inputs = (query, key, value) if query.dtype != torch.float16 else (query.float(), key.float(), value.float())
        output = F.scaled_dot_product_attention(*inputs, attn_mask=allowed, dropout_p=dropout, scale=1.0)
        return output.to(value.dtype), None


def use_sdpa_attention(model: nn.Module) -> None:
    """Give a GPT-Neo model's eager attention layers the SDPA ``_attn`` (other models are left as they are)."""
    for module in model.modules():
        if type(module) is GPTNeoSelfAttention:  # not the flash-attention subclass
            module.__class__ = GPTNeoSdpaAttention  # same weights and buffers, only the method changes


def use_fused_gelu(model: nn.Module) -> None:
    """Replace every ``gelu_new`` module by transformers' one-kernel ``GELUTanh``."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())


def use_efficient_kernels(model: nn.Module) -> None:
    use_sdpa_attention(model)
    use_fused_gelu(model)


def kernel_names(model: nn.Module) -> dict[str, str]:
    """The attention and activation implementations a loaded model runs, as output.jsonl records them."""
    modules = list(model.modules())
    if any(isinstance(m, GPTNeoSdpaAttention) for m in modules):
        attention = SDPA
    else:
        attention = str(getattr(model.config, "_attn_implementation", None) or "eager")
    activations = sorted({type(m).__name__ for m in modules if type(m).__module__ == "transformers.activations"})
    return {"attention": attention, "activation": ",".join(activations) or "torch"}

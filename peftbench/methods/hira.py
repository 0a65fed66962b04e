"""HiRA: Hadamard high-rank adaptation, y = x (W0 ⊙ (1 + B A))ᵀ + b.

ΔW = W0 ⊙ (B A) has full rank although A (r × in) and B (out × r) hold only r·(in + out)
parameters. B starts at zero, so training starts exactly at the base model.

PEFT's ``HiraConfig`` places the layers and defines the adapter file format, so our checkpoints
load in ``peft.PeftModel.from_pretrained``. PEFT's forward runs the base layer plus a second
matmul with a materialised W0 ⊙ (B A) that autograd keeps for backward; ours swaps in
``HiraLinearFunction``, which keeps nothing of size out × in between forward and backward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import HiraConfig, PeftModel
from peft.tuners.hira.layer import Linear as PeftHiraLinear
from torch import nn
from transformers import PreTrainedModel

from peftbench.config import RunConfig
from peftbench.methods.common import load_adapter, resolve_targets, wrap


def _oriented(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """The base weight as (out, in); Conv1D layers store it as (in, out)."""
    return weight.T if fan_in_fan_out else weight


class HiraLinearFunction(torch.autograd.Function):
    """y = x (W0 + W0 ⊙ B A)ᵀ + b, with gradients for x, A and B only (W0 and b are frozen).

    Backward: grad_x = g (W0 ⊙ (1 + B A)); with G = (gᵀ x) ⊙ W0, grad_A = Bᵀ G and grad_B = G Aᵀ.
    The product B A is recomputed in backward rather than saved.
    """

    @staticmethod
    def forward(ctx: Any, x, weight, bias, hira_a, hira_b, fan_in_fan_out: bool):  # noqa: ANN001
        w0 = _oriented(weight, fan_in_fan_out)
        x = x.to(w0.dtype)
        delta = w0 * (hira_b @ hira_a).to(w0.dtype)
        if w0.dtype == torch.float32:
            out = F.linear(x, w0 + delta, bias)
        else:
            # In half precision W0 + ΔW would round small updates away; keep ΔW in its own matmul.
            out = F.linear(x, w0, bias) + F.linear(x, delta)
        ctx.save_for_backward(x, weight, hira_a, hira_b)
        ctx.fan_in_fan_out = fan_in_fan_out
        ctx.bias_needs_grad = bias is not None and ctx.needs_input_grad[2]
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x, weight, hira_a, hira_b = ctx.saved_tensors
        w0 = _oriented(weight, ctx.fan_in_fan_out)
        grad_out = grad_out.to(w0.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ (w0 + w0 * (hira_b @ hira_a).to(w0.dtype))
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        flat_x = x.reshape(-1, x.shape[-1])
        # G = ∂L/∂(ΔW) ⊙ W0 in the adapter's precision (fp32 under mixed precision).
        g_delta = (flat_grad.T @ flat_x).to(hira_a.dtype) * w0.to(hira_a.dtype)
        grad_a = hira_b.T @ g_delta
        grad_b = g_delta @ hira_a.T
        grad_bias = flat_grad.sum(0) if ctx.bias_needs_grad else None
        return grad_x, None, grad_bias, grad_a, grad_b, None


class FusedHiraLinear(PeftHiraLinear):
    """PEFT's HiRA linear layer with our forward; PEFT's merge, state-dict names and file format stay."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = [name for name in self.active_adapters if name in self.hira_A]
        dropout_active = self.training and any(
            isinstance(self.hira_dropout[name], nn.Dropout) and self.hira_dropout[name].p > 0 for name in adapters
        )
        if self.disable_adapters or self.merged or len(adapters) != 1 or dropout_active or args or kwargs:
            return super().forward(x, *args, **kwargs)  # PEFT's general (slower) path
        base = self.get_base_layer()
        adapter = adapters[0]
        return HiraLinearFunction.apply(
            x, base.weight, base.bias, self.hira_A[adapter], self.hira_B[adapter], self.fan_in_fan_out
        )


def use_fused_layers(model: nn.Module) -> nn.Module:
    """Give every PEFT HiRA linear layer our forward (same parameters, same state-dict keys)."""
    for module in model.modules():
        if type(module) is PeftHiraLinear:
            module.__class__ = FusedHiraLinear
    return model


def apply(model: PreTrainedModel, config: RunConfig) -> PeftModel:
    targets = config.target_module_list
    hira_config = HiraConfig(
        r=config.r_ab,
        target_modules=targets,
        hira_dropout=config.hira_dropout,
        fan_in_fan_out=resolve_targets(model, targets),
        task_type="CAUSAL_LM",
    )
    return use_fused_layers(wrap(model, hira_config))


def load(ckpt: Path, base_model_path: str, dtype: torch.dtype) -> PeftModel:
    return use_fused_layers(load_adapter(ckpt, base_model_path, dtype))

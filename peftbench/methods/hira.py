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
from peft import HiraConfig, PeftModel, get_peft_model
from peft.tuners.hira.layer import Linear as PeftHiraLinear
from torch import nn
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings, load_adapter, resolve_targets


def _oriented(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """The base weight as (out, in); Conv1D layers store it as (in, out)."""
    return weight.T if fan_in_fan_out else weight


def fused_weight(w0: torch.Tensor, hira_a: torch.Tensor, hira_b: torch.Tensor) -> torch.Tensor:
    """W0 ⊙ (1 + B A) in W0's dtype, built in place in one out × in buffer."""
    product = torch.mm(hira_b, hira_a)
    if product.dtype == w0.dtype:
        return product.mul_(w0).add_(w0)
    return torch.addcmul(w0, w0, product.to(w0.dtype))


class HiraLinearFunction(torch.autograd.Function):
    """y = x (W0 ⊙ (1 + B A))ᵀ + b, with gradients for x, A and B (W0 and b are frozen).

    Backward: grad_x = g (W0 ⊙ (1 + B A)); with G = (gᵀ x) ⊙ W0, grad_A = Bᵀ G and grad_B = G Aᵀ.
    Autograd saves only x, W0, A and B; the out × in fused weight is rebuilt in backward unless
    ``keep_product`` saves it (faster by one r-rank product per layer, one out × in matrix more memory).
    """

    @staticmethod
    def forward(ctx: Any, x, weight, bias, hira_a, hira_b, fan_in_fan_out: bool, keep_product: bool):  # noqa: ANN001
        w0 = _oriented(weight, fan_in_fan_out)
        x = x.to(w0.dtype)
        if w0.dtype not in (torch.float16, torch.bfloat16):
            fused = fused_weight(w0, hira_a, hira_b)
            out = F.linear(x, fused, bias)
        else:
            # In half precision, rounding W0 + ΔW per element would drop every update below W0's last bit, for
            # every token alike; a separate ΔW matmul keeps them (PEFT's HiRA does the same).
            delta = torch.mm(hira_b, hira_a).to(w0.dtype).mul_(w0)
            out = F.linear(x, w0, bias).add_(F.linear(x, delta))
            fused = delta.add_(w0) if keep_product else None
        ctx.save_for_backward(x, weight, hira_a, hira_b, fused if keep_product else None)
        ctx.fan_in_fan_out = fan_in_fan_out
        ctx.bias_needs_grad = bias is not None and ctx.needs_input_grad[2]
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x, weight, hira_a, hira_b, fused = ctx.saved_tensors
        w0 = _oriented(weight, ctx.fan_in_fan_out)
        grad_out = grad_out.to(w0.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.matmul(fused if fused is not None else fused_weight(w0, hira_a, hira_b))
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        # G = ∂L/∂ΔW ⊙ W0, accumulated in the adapters' precision (fp32 under mixed precision).
        g_delta = torch.mm(flat_grad.t(), x.reshape(-1, x.shape[-1])).to(hira_a.dtype).mul_(w0)
        grad_a = torch.mm(hira_b.t(), g_delta)
        grad_b = torch.mm(g_delta, hira_a.t())
        grad_bias = flat_grad.sum(0) if ctx.bias_needs_grad else None
        return grad_x, None, grad_bias, grad_a, grad_b, None, None


class FusedHiraLinear(PeftHiraLinear):
    """PEFT's HiRA linear layer with our forward; PEFT's merge, state-dict names and file format stay."""

    keep_product: bool = False  # set per layer by use_fused_layers

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = [name for name in self.active_adapters if name in self.hira_A]
        dropout_active = self.training and any(
            isinstance(self.hira_dropout[name], nn.Dropout) and self.hira_dropout[name].p > 0 for name in adapters
        )
        if self.disable_adapters or self.merged or len(adapters) != 1 or dropout_active or args or kwargs:
            return super().forward(x, *args, **kwargs)  # PEFT's general (slower) path
        base = self.get_base_layer()
        adapter = adapters[0]
        a, b = self.hira_A[adapter], self.hira_B[adapter]
        return HiraLinearFunction.apply(x, base.weight, base.bias, a, b, self.fan_in_fan_out, self.keep_product)


def use_fused_layers(model: nn.Module, keep_product: bool = False) -> nn.Module:
    """Give every PEFT HiRA linear layer our forward (same parameters, same state-dict keys)."""
    for module in model.modules():
        if isinstance(module, PeftHiraLinear):
            module.__class__ = FusedHiraLinear
            module.keep_product = keep_product
    return model


def peft_config(model: PreTrainedModel, settings: AdapterSettings) -> HiraConfig:
    targets = list(settings.targets)
    return HiraConfig(
        r=settings.rank,
        target_modules=targets,
        hira_dropout=settings.dropout,
        fan_in_fan_out=resolve_targets(model, targets),
        task_type="CAUSAL_LM",
    )


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    return use_fused_layers(get_peft_model(model, peft_config(model, settings)), settings.keep_product)


def load(ckpt: Path, base_model_path: str, dtype: torch.dtype) -> PeftModel:
    return use_fused_layers(load_adapter(ckpt, base_model_path, dtype))

"""How the model computes, not what: GPT-Neo's SDPA attention and one-kernel GELU, and the loss from
label-position logits only, equal transformers' eager attention, gelu_new and full-logit loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import right_padded
from transformers import AutoModelForCausalLM, GPTNeoConfig

from peftbench.models.kernels import GPTNeoSdpaAttention, kernel_names, use_efficient_kernels
from peftbench.models.load import load_base_model


def _neo_pair(window_size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same random GPT-Neo twice: transformers' eager attention, and ours."""
    config = GPTNeoConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
                          attention_types=[[["global", "local"], 1]], window_size=window_size)  # fmt: skip
    torch.manual_seed(0)
    eager = AutoModelForCausalLM.from_config(config)
    ours = AutoModelForCausalLM.from_config(config)
    ours.load_state_dict(eager.state_dict())
    use_efficient_kernels(ours)
    return eager, ours


@pytest.mark.parametrize("window_size", [4, 256])  # a local window shorter than the sequences, and one longer
def test_sdpa_attention_and_fused_gelu_give_gpt_neos_eager_logits_and_gradients(window_size: int) -> None:
    eager, ours = _neo_pair(window_size)
    assert kernel_names(ours) == {"attention": "sdpa", "activation": "GELUTanh"}
    assert kernel_names(eager) == {"attention": "eager", "activation": "NewGELUActivation"}
    ids, mask = right_padded([12, 7, 3])
    real = mask.bool()
    outputs = {}
    for name, model in (("eager", eager), ("ours", ours)):
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[real].square().sum().backward()
        outputs[name] = logits[real].detach(), {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(outputs["ours"][0], outputs["eager"][0], rtol=1e-5, atol=1e-5)
    for name, grad in outputs["eager"][1].items():
        torch.testing.assert_close(outputs["ours"][1][name], grad, rtol=1e-4, atol=1e-5)


def test_sdpa_attention_generates_what_eager_generates_from_left_padded_prompts() -> None:
    eager, ours = _neo_pair(window_size=4)
    ids, mask = right_padded([9, 4, 6])
    lengths = mask.sum(1)
    left_ids, left_mask = torch.zeros_like(ids), torch.zeros_like(mask)  # the same prompts padded on the left
    for row, length in enumerate(lengths.tolist()):
        left_ids[row, -length:], left_mask[row, -length:] = ids[row, :length], 1
    settings = {"max_new_tokens": 6, "num_beams": 2, "do_sample": False, "pad_token_id": 0}
    generated = [m.eval().generate(input_ids=left_ids, attention_mask=left_mask, **settings) for m in (eager, ours)]
    assert torch.equal(generated[0], generated[1])
    logits = ours(input_ids=left_ids, attention_mask=left_mask).logits
    assert torch.isfinite(logits).all()  # rows of padding see something: no NaN leaks through 0 × NaN


def test_every_loaded_gpt_neo_runs_our_kernels_and_llama_keeps_its_own(tiny_neo: Path, tiny_llama: Path) -> None:
    neo = load_base_model(str(tiny_neo), torch.float32)
    assert sum(isinstance(m, GPTNeoSdpaAttention) for m in neo.modules()) == neo.config.num_layers
    assert kernel_names(neo) == {"attention": "sdpa", "activation": "GELUTanh"}
    assert kernel_names(load_base_model(str(tiny_llama), torch.float32))["attention"] == "sdpa"  # transformers' own


def test_sdpa_attention_in_fp16_computes_gpt_neos_unscaled_scores_in_fp32_as_eager_does() -> None:
    """GPT-Neo's scores are not divided by sqrt(head_dim): in fp16 they pass 65504, and eager computes them in fp32.
    (On a CPU the math kernel accumulates in fp32 either way; a GPU kernel that materialises fp16 scores does not.)"""
    eager, ours = _neo_pair(256)
    for model in (eager, ours):
        for layer in model.transformer.h:
            layer.attn.attention.q_proj.weight.data.mul_(300)  # scores of about 1e5, beyond fp16's 65504
        model.half().eval()
    ids, mask = right_padded([12, 7])
    with torch.no_grad():
        expected = eager(input_ids=ids, attention_mask=mask).logits.float()
        got = ours(input_ids=ids, attention_mask=mask).logits.float()
    real = mask.bool()
    assert torch.isfinite(expected[real]).all() and torch.isfinite(got[real]).all()
    torch.testing.assert_close(got[real], expected[real], rtol=2e-2, atol=2e-2)

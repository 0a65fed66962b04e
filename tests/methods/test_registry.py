"""Every method on tiny random models: what trains, that it learns, checkpointing, PEFT compatibility."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config

from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.methods import METHOD_FLAGS, get_method
from peftbench.methods.hira import FusedHiraLinear, HiraLinearFunction

# name -> (RunConfig settings, names that must train, learning rate, least relative loss drop in 15 steps).
# HiRA needs far larger rates than LoRA (its update is scaled by W0); IA3 can only rescale, so it moves least.
CASES = {
    "hira": ({"r_ab": 4}, ("hira_A", "hira_B"), 0.3, 0.05),
    "lora": ({"r_ab": 4, "lora_dropout": 0.0}, ("lora_A", "lora_B"), 1e-2, 0.05),
    "dora": ({"r_ab": 4, "lora_dropout": 0.0}, ("lora_A", "lora_B", "lora_magnitude_vector"), 1e-2, 0.05),
    "pissa": ({"r_ab": 4}, ("lora_A", "lora_B"), 1e-2, 0.05),
    "mora": ({"r_ab": 4, "lora_dropout": 0.0}, ("lora_A",), 1e-2, 0.05),  # lora_B is the same module
    "adalora": ({"r_ab": 4, "lora_dropout": 0.0}, ("lora_A", "lora_B", "lora_E"), 1e-2, 0.05),
    "vera": ({"r_ab": 8}, ("vera_lambda_b", "vera_lambda_d"), 0.1, 0.02),
    "loha": ({"r_ab": 4}, ("hada_w",), 0.1, 0.05),
    "lokr": ({"r_ab": 4}, ("lokr_w",), 0.1, 0.05),
    "oft": ({}, ("oft_R",), 1e-2, 0.02),
    "ia3": ({}, ("ia3_l",), 0.3, 0.02),
    "prefix": ({"virtual_tokens": 4}, ("prompt_encoder",), 0.1, 0.05),
    "prompt": ({"virtual_tokens": 4}, ("prompt_encoder",), 0.3, 0.02),
    "ptuning": ({"virtual_tokens": 4}, ("prompt_encoder",), 1e-2, 0.02),
    "fft": ({}, None, 1e-3, 0.05),  # None: every parameter
}
ADAPTERS = [name for name in CASES if not get_method(name).full_finetune]
TOTAL_STEPS = 100  # AdaLoRA's schedule length


def build(method: str, model_dir: Path, **overrides) -> torch.nn.Module:
    """The method on a fresh copy of the model; overrides of method flags it is not built from are left out."""
    settings = {**CASES[method][0], **overrides}
    takes = get_method(method).flags
    settings = {k: v for k, v in settings.items() if k not in METHOD_FLAGS or k in takes}
    config = RunConfig(peft_type=method, model_name=str(model_dir), **settings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return get_method(method).apply(model, config.adapter_settings(total_steps=TOTAL_STEPS))


def batch(vocab_size: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def perturb_trainable(model: torch.nn.Module) -> None:
    """Move adapters away from their no-op initialisation so comparisons mean something."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("method", CASES)
def test_only_the_intended_parameters_get_gradients(method: str, tiny_neo: Path) -> None:
    model = build(method, tiny_neo)
    perturb_trainable(model)
    model(**batch(model.config.vocab_size)).loss.backward()
    trainable_names = CASES[method][1]
    for name, parameter in model.named_parameters():
        intended = trainable_names is None or any(part in name for part in trainable_names)
        assert parameter.requires_grad == intended, name
        assert (parameter.grad is not None) == intended, name
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert with_grad, "no parameter received a non-zero gradient"


@pytest.mark.parametrize("method", CASES)
def test_loss_falls_over_a_few_steps(method: str, tiny_llama: Path) -> None:
    model = build(method, tiny_llama)
    data = batch(model.config.vocab_size)
    _, _, lr, least_drop = CASES[method]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    after_step = get_method(method).after_optimizer_step
    losses = []
    for step in range(15):
        loss = model(**data).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(model, step)
        optimizer.zero_grad()
    assert losses[-1] < (1 - least_drop) * losses[0], losses


def test_prefix_tuning_refuses_gradient_checkpointing() -> None:
    with pytest.raises(UserError, match="prefix cannot train with --enable_grad_ckpt: gradient checkpointing drops"):
        RunConfig(peft_type="prefix", enable_grad_ckpt=True)


@pytest.mark.parametrize("method", [name for name in CASES if "enable_grad_ckpt" not in get_method(name).refuses])
@pytest.mark.parametrize("architecture", ["tiny_neo", "tiny_llama"])
def test_gradient_checkpointing_gives_the_same_gradients(method: str, architecture: str, request) -> None:
    model_dir = request.getfixturevalue(architecture)
    data = batch(128)

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = build(method, model_dir, target_modules="q_proj,v_proj")
        perturb_trainable(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**data).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", CASES)
def test_save_then_load_gives_the_same_logits(method: str, tiny_neo: Path, tmp_path: Path) -> None:
    model = build(method, tiny_neo)
    perturb_trainable(model)
    model.eval()
    data = batch(model.config.vocab_size)
    expected = model(input_ids=data["input_ids"]).logits
    model.save_pretrained(tmp_path)
    reloaded = get_method(method).load(tmp_path, str(tiny_neo), torch.float32).eval()
    torch.testing.assert_close(reloaded(input_ids=data["input_ids"]).logits, expected)


@pytest.mark.parametrize("method", [name for name in ADAPTERS if get_method(name).peft_load_limit is None])
def test_adapters_load_in_plain_peft_with_equal_logits(method: str, tiny_llama: Path, tmp_path: Path) -> None:
    model = build(method, tiny_llama, target_modules="q_proj,v_proj,down_proj")
    perturb_trainable(model)
    model.eval()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path).eval()
    assert not any(isinstance(m, FusedHiraLinear) for m in peft_model.modules())  # PEFT's own layers
    ids = batch(128)["input_ids"]
    torch.testing.assert_close(peft_model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_hira_starts_exactly_at_the_base_model(tiny_neo: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_neo).eval()
    model = build("hira", tiny_neo).eval()
    ids = batch(128)["input_ids"]
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_hira_has_lora_parameter_count(tiny_neo: Path) -> None:
    model = build("hira", tiny_neo, r_ab=4)
    hidden, layers, r = 64, 2, 4
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == layers * 2 * r * (hidden + hidden)  # q_proj and v_proj in every layer


def test_hira_layer_computes_the_formula(tiny_neo: Path) -> None:
    model = build("hira", tiny_neo)
    perturb_trainable(model)
    layer = next(m for m in model.modules() if isinstance(m, FusedHiraLinear))
    w0, a, b = layer.base_layer.weight, layer.hira_A["default"], layer.hira_B["default"]
    x = torch.randn(3, 5, w0.shape[1])
    expected = x @ (w0 * (1 + b @ a)).T + (layer.base_layer.bias if layer.base_layer.bias is not None else 0)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_hira_gradients_pass_float64_gradcheck(fan_in_fan_out: bool, keep: bool) -> None:
    generator = torch.Generator().manual_seed(3)

    def randn(*shape, grad=False):
        return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_(grad)

    weight = randn(6, 5) if fan_in_fan_out else randn(5, 6)  # Conv1D stores (in, out)
    bias, x, a, b = randn(5), randn(2, 3, 6, grad=True), randn(2, 6, grad=True), randn(5, 2, grad=True)
    assert torch.autograd.gradcheck(
        lambda x, a, b: HiraLinearFunction.apply(x, weight, bias, a, b, fan_in_fan_out, keep), (x, a, b)
    )


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_hira_forward_and_gradients_match_a_float64_reference(dtype: torch.dtype, keep: bool) -> None:
    """Base weights in `dtype`, adapters in fp32 (as PEFT keeps them under mixed precision)."""
    generator = torch.Generator().manual_seed(4)
    w0 = (0.05 * torch.randn(48, 64, generator=generator)).to(dtype)
    bias = (0.1 * torch.randn(48, generator=generator)).to(dtype)
    a = (0.2 * torch.randn(8, 64, generator=generator)).requires_grad_()
    b = (0.2 * torch.randn(48, 8, generator=generator)).requires_grad_()
    x = torch.randn(3, 10, 64, generator=generator).to(dtype).requires_grad_()
    upstream = torch.randn(3, 10, 48, generator=generator)

    out = HiraLinearFunction.apply(x, w0, bias, a, b, False, keep)
    (out.float() * upstream).sum().backward()

    ref = [t.detach().double().requires_grad_() for t in (x, a, b)]
    expected = ref[0] @ (w0.double() * (1 + ref[2] @ ref[1])).T + bias.double()
    (expected * upstream.double()).sum().backward()
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, **tolerance)
    for ours, reference in zip((x.grad, a.grad, b.grad), (r.grad for r in ref), strict=True):
        scale = reference.abs().max()
        torch.testing.assert_close(ours.double() / scale, reference / scale, **tolerance)


def test_hira_on_conv1d_layers_matches_peft(tmp_path: Path) -> None:
    """GPT-2 stores weights as (in, out) in Conv1D layers: fan_in_fan_out is detected and handled."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)).save_pretrained(
        tmp_path
    )
    config = RunConfig(peft_type="hira", model_name=str(tmp_path), r_ab=2, target_modules="c_attn")
    model = get_method("hira").apply(AutoModelForCausalLM.from_pretrained(tmp_path), config.adapter_settings())
    perturb_trainable(model)
    assert model.peft_config["default"].fan_in_fan_out
    ids = torch.randint(0, 64, (1, 7))
    ours = model(input_ids=ids).logits
    for module in model.modules():
        if isinstance(module, FusedHiraLinear):
            module.__class__ = FusedHiraLinear.__bases__[0]  # PEFT's own forward
    torch.testing.assert_close(ours, model(input_ids=ids).logits)


def test_unknown_target_module_names_the_existing_ones(tiny_llama: Path) -> None:
    expected = "query not found in the model; its linear modules are: down_proj,gate_proj,k_proj,lm_head,o_proj,q_proj"
    with pytest.raises(UserError, match=expected):
        build("lora", tiny_llama, target_modules="q_proj,query")


def test_hira_merge_unmerge_and_merged_export(tiny_llama: Path, tmp_path: Path) -> None:
    model = build("hira", tiny_llama, target_modules="q_proj,v_proj,down_proj")
    perturb_trainable(model)
    model.eval()
    ids = batch(128)["input_ids"]
    adapted = model(input_ids=ids).logits
    layer = next(m for m in model.modules() if isinstance(m, FusedHiraLinear))
    w0 = layer.base_layer.weight.detach().clone()
    a, b = layer.hira_A["default"].detach(), layer.hira_B["default"].detach()

    model.merge_adapter()
    torch.testing.assert_close(layer.base_layer.weight.detach(), w0 * (1 + b @ a))
    torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(layer.base_layer.weight.detach(), w0)
    torch.testing.assert_close(model(input_ids=ids).logits, adapted)

    merged = model.merge_and_unload()
    assert not any("hira" in name for name, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(plain(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)

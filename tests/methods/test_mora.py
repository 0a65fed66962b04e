"""MoRA against the equations: the update a reference written from the paper computes, the delta weight it merges,
r̂² parameters per layer, and the HiRA paper's parameter shares on the real Llama geometries (meta device)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.methods.mora import MoraLinear, mora_delta_weight, mora_update, square_side

# (d_in, d_out, r̂): sizes that need the input extended, the output cut, the output repeated, a square wider than
# the input, and none of these.
SHAPES = [(37, 23, 6), (19, 50, 6), (64, 40, 8), (10, 31, 12), (48, 48, 8)]


def reference_update(x: torch.Tensor, square: torch.Tensor, out_features: int, mora_type: int) -> torch.Tensor:
    """One input vector through the paper's maps, by the definitions: cyclic extension, chunks, Eq. 6 (sum) or
    Eq. 9 (RoPE rotation matrix R_i on the pairs (m, m + r̂/2) of chunk i), M, cyclic output."""
    side, in_features = square.shape[0], x.shape[0]
    chunk_count = math.ceil(in_features / side)
    chunks = torch.stack([x[p % in_features] for p in range(chunk_count * side)]).view(chunk_count, side)
    if mora_type == 1:
        outputs = [square @ chunks.sum(0)]
    else:
        outputs, half = [], side // 2
        for i in range(chunk_count):
            rotation = torch.zeros(side, side, dtype=x.dtype)
            for m in range(half):
                angle = torch.tensor(i / 10000 ** (2 * m / side), dtype=x.dtype)
                rotation[m, m], rotation[m, m + half] = angle.cos(), -angle.sin()
                rotation[m + half, m], rotation[m + half, m + half] = angle.sin(), angle.cos()
            outputs.append(square @ rotation @ chunks[i])
    flat = torch.cat(outputs)
    return torch.stack([flat[o % flat.shape[0]] for o in range(out_features)])


def random_square(side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mora_type", [1, 6])
@pytest.mark.parametrize(("in_features", "out_features", "side"), SHAPES)
def test_update_equals_the_equations(in_features: int, out_features: int, side: int, mora_type: int) -> None:
    square = random_square(side)
    x = torch.randn(3, in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([reference_update(row, square, out_features, mora_type) for row in x])
    # RoPE's angles are computed in fp32, as in the official code: agreement to fp32's precision.
    torch.testing.assert_close(mora_update(x, square, out_features, mora_type), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mora_type", [1, 6])
@pytest.mark.parametrize(("in_features", "out_features", "side"), SHAPES)
def test_delta_weight_is_the_update_expanded(in_features: int, out_features: int, side: int, mora_type: int) -> None:
    """Column k of ΔW is the update of the k-th unit vector."""
    square = random_square(side)
    expanded = mora_update(torch.eye(in_features, dtype=torch.float64), square, out_features, mora_type).T
    delta = mora_delta_weight(square, in_features, out_features, mora_type)
    assert delta.shape == (out_features, in_features)
    torch.testing.assert_close(delta, expanded)


def test_square_sides_follow_the_official_formula() -> None:
    """int(√((d_in + d_out)·r) + 0.5), made even for type 6: Llama's q (4096²), up (4096 → 11008), k (4096 → 1024)."""
    assert [square_side(4096, 4096, 32, t) for t in (1, 6)] == [512, 512]
    assert [square_side(4096, 11008, 32, t) for t in (1, 6)] == [695, 694]
    assert [square_side(4096, 1024, 32, t) for t in (1, 6)] == [405, 404]


def build_mora(model_dir: Path, **settings) -> PeftModel:
    config = RunConfig(peft_type="mora", model_name=str(model_dir), **settings)
    torch.manual_seed(0)
    return get_method("mora").apply(AutoModelForCausalLM.from_pretrained(model_dir), config.adapter_settings())


@pytest.mark.parametrize("mora_type", [1, 6])
def test_layers_hold_one_zero_square_of_side_r_hat(mora_type: int, tiny_llama: Path) -> None:
    model = build_mora(tiny_llama, r_ab=4, mora_type=mora_type, target_modules="q_proj,k_proj,down_proj")
    layers = [m for m in model.modules() if isinstance(m, MoraLinear)]
    expected = 0
    for layer in layers:
        square = layer.lora_A["default"]
        side = square_side(layer.in_features, layer.out_features, 4, mora_type)
        assert square is layer.lora_B["default"] and square.weight.shape == (side, side)
        assert not square.weight.any() and layer.scaling["default"] == 1.0
        expected += side**2
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected and layers


@pytest.mark.parametrize("mora_type", [1, 6])
def test_merged_forward_equals_the_unmerged_one(mora_type: int, tiny_llama: Path, tmp_path: Path) -> None:
    model = build_mora(tiny_llama, r_ab=3, mora_type=mora_type, target_modules="q_proj,v_proj,up_proj,down_proj")
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)))
    model.eval()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    adapted = model(input_ids=ids).logits
    layer = next(m for m in model.modules() if isinstance(m, MoraLinear) and m.in_features != m.out_features)
    w0 = layer.base_layer.weight.detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(layer.base_layer.weight.detach(), w0 + layer.get_delta_weight("default"))
    torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(layer.base_layer.weight.detach(), w0)
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(plain(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)


def test_files_are_the_official_format_and_plain_peft_refuses_them(tiny_llama: Path, tmp_path: Path) -> None:
    model = build_mora(tiny_llama, r_ab=4, mora_type=1)
    model.save_pretrained(tmp_path)
    saved = (tmp_path / "adapter_config.json").read_text()
    assert '"use_mora": true' in saved and '"mora_type": 1' in saved and '"peft_type": "LORA"' in saved
    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path)


def test_an_unknown_type_is_one_error_line() -> None:
    with pytest.raises(UserError, match="--mora_type must be one of 1, 6, got 3"):
        RunConfig(peft_type="mora", mora_type=3)
    with pytest.raises(UserError, match="--mora_type does not apply to lora"):
        RunConfig(peft_type="lora", mora_type=6)


# (LlamaConfig, published share in % of all parameters, adapters included): hira_iclr2025_table1.csv, MoRA r 32.
LLAMA = {
    "Llama-2-7B": (dict(intermediate_size=11008, vocab_size=32000), 0.8241),
    "Llama-3-8B": (dict(intermediate_size=14336, vocab_size=128256, num_key_value_heads=8), 0.6997),
}


def llama_on_meta(sizes: dict) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, **sizes)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def share_percent(model: torch.nn.Module) -> float:
    """Trainable share of all parameters, as the official HiRA code prints it (print_trainable_parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return round(100 * trainable / sum(p.numel() for p in model.parameters()), 4)


@pytest.mark.parametrize("name", LLAMA)
def test_llama_share_at_rank_32_equals_the_published_one(name: str) -> None:
    sizes, published = LLAMA[name]
    config = RunConfig(peft_type="mora", r_ab=32, target_modules="q_proj,k_proj,v_proj,up_proj,down_proj")
    model = get_method("mora").apply(llama_on_meta(sizes), config.adapter_settings())
    assert share_percent(model) == published

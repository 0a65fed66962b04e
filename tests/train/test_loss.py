"""How the model computes, not what: GPT-Neo's SDPA attention and one-kernel GELU, and the loss from
label-position logits only, equal transformers' eager attention, gelu_new and full-logit loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers.masking_utils
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file
from tiny import right_padded

import peftbench.train.recipe
import peftbench.train.trainer
from peftbench.config import RunConfig
from peftbench.data.prompts import IGNORE_INDEX
from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.models.load import load_base_model
from peftbench.runs.records import read_records
from peftbench.train.loss import (
    keeps_packed_sequences_apart,
    label_positions,
    label_token_loss,
    logits_at_labels_only,
)
from peftbench.train.recipe import train


def _labels(ids: torch.Tensor, mask: torch.Tensor, prompt: int) -> torch.Tensor:
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :prompt] = IGNORE_INDEX
    return labels


@pytest.mark.parametrize("model", ["tiny_neo", "tiny_llama"])
@pytest.mark.parametrize("adapter", [None, "lora"])
def test_the_loss_from_label_position_logits_equals_transformers_loss_and_gradient(model, adapter, request) -> None:
    base = load_base_model(str(request.getfixturevalue(model)), torch.float32)
    if adapter:
        base = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert logits_at_labels_only(base)
    ids, mask = right_padded([20, 14, 9], vocabulary=base.get_input_embeddings().num_embeddings)
    labels = _labels(ids, mask, prompt=5)
    tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    results = []
    for ours in (False, True):
        base.zero_grad()
        if ours:
            outputs = base(input_ids=ids, attention_mask=mask, logits_to_keep=label_positions(labels))
            assert outputs.logits.shape[0] == tokens  # one logit row per label token, not per position
            loss = label_token_loss(outputs, labels, torch.tensor(tokens))
        else:
            loss = base(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(tokens)).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in base.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5, atol=1e-7)


def test_prompt_tuning_and_adalora_keep_the_models_own_loss(tiny_llama: Path) -> None:
    prompt_tuning = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    assert not logits_at_labels_only(get_peft_model(load_base_model(str(tiny_llama), torch.float32), prompt_tuning))
    # AdaLoRA adds its orthogonality penalty to outputs.loss, which a loss computed outside the model would drop.
    adalora = get_method("adalora").apply(
        load_base_model(str(tiny_llama), torch.float32),
        RunConfig(peft_type="adalora", target_modules="q_proj,v_proj").adapter_settings(total_steps=10),
    )
    assert not logits_at_labels_only(adalora)


def _lora_run(tmp_path: Path, model: Path, data_dir: str, name: str) -> Path:
    config = RunConfig(peft_type="lora", model_name=str(model), r_ab=4, lora_dropout=0.0, lr=1e-2, max_steps=2,
                       batch=4, grad_acc=2, max_train_samples=16, val_set_size=0, logging_steps=1, data_dir=data_dir,
                       output_folder=str(tmp_path / name))  # fmt: skip
    return train(config).run_dir


def test_training_on_label_position_logits_reaches_the_weights_and_losses_of_full_logits(
    tiny_neo, data_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    ours = _lora_run(tmp_path, tiny_neo, data_dir, "ours")
    monkeypatch.setattr(peftbench.train.recipe, "logits_at_labels_only", lambda model: False)
    full = _lora_run(tmp_path, tiny_neo, data_dir, "full")
    assert read_records(ours / "output.jsonl")[0]["compute"] == {
        "attention": "sdpa",
        "activation": "GELUTanh",
        "logits": "label positions",
    }
    assert read_records(full / "output.jsonl")[0]["compute"]["logits"] == "all"
    reference = load_file(full / "checkpoint-2" / "adapter_model.safetensors")
    for name, value in load_file(ours / "checkpoint-2" / "adapter_model.safetensors").items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-6)
    losses = [[log["loss"] for log in json.loads((run / "trainer_state.json").read_text())["log_history"]
               if "loss" in log] for run in (ours, full)]  # fmt: skip
    assert len(losses[0]) == 2
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize("model", ["tiny_neo", "tiny_llama"])
def test_packed_sequences_stay_apart_in_gpt_neo_and_llama_with_or_without_lora(model, request) -> None:
    base = load_base_model(str(request.getfixturevalue(model)), torch.float32)
    assert keeps_packed_sequences_apart(base)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert keeps_packed_sequences_apart(lora)
    assert lora.training  # the check runs without dropout and hands the model back as it was


def test_a_model_that_lets_packed_sequences_see_each_other_is_not_packed(tiny_llama, tiny_neo, monkeypatch) -> None:
    # transformers without its packed-sequence mask: every token attends to the whole row.
    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    for model in (tiny_llama, tiny_neo):
        assert not keeps_packed_sequences_apart(load_base_model(str(model), torch.float32))


def test_prompt_tuning_is_not_packed_and_asking_for_it_is_an_error(tiny_llama, data_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    prompt_tuning = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    base = load_base_model(str(tiny_llama), torch.float32)
    assert not keeps_packed_sequences_apart(get_peft_model(base, prompt_tuning))
    config = RunConfig(peft_type="prompt", model_name=str(tiny_llama), packing=True, max_steps=1, batch=2,
                       grad_acc=1, max_train_samples=4, val_set_size=0, data_dir=data_dir,
                       output_folder=str(tmp_path / "p"))  # fmt: skip
    with pytest.raises(UserError, match="does not keep packed sequences apart"):
        train(config)
    with pytest.raises(UserError, match="--micro_batch spec runs the flags literally"):
        RunConfig(peft_type="lora", packing=True, micro_batch="spec")


def test_validation_from_label_position_logits_equals_validation_from_all_logits(
    tiny_neo, data_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))

    def validations(name: str) -> list[tuple[float, float, int]]:
        config = RunConfig(peft_type="lora", model_name=str(tiny_neo), r_ab=4, lora_dropout=0.0, lr=1e-2, max_steps=2,
                           batch=4, grad_acc=1, max_train_samples=8, val_set_size=12, eval_strategy="steps",
                           eval_steps=1, data_dir=data_dir, output_folder=str(tmp_path / name))  # fmt: skip
        history = json.loads((train(config).run_dir / "trainer_state.json").read_text())["log_history"]
        return [(e["eval_loss"], e["eval_answer_loss"], e["eval_label_tokens"]) for e in history if "eval_loss" in e]

    ours = validations("ours")
    monkeypatch.setattr(peftbench.train.trainer, "logits_at_labels_only", lambda model: False)
    full = validations("full")
    assert len(ours) == 2 and all(tokens > 0 and 0 < answer < float("inf") for _, answer, tokens in ours)
    assert ours == [pytest.approx(validation, rel=1e-6) for validation in full]


class _ShiftsPackedPositions(torch.nn.Module):
    """A model that keeps packed sequences apart but moves their positions: each would train at the wrong ones."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None, **kwargs: object):  # noqa: ANN201
        moved = None if position_ids is None else position_ids + 3
        return self.model(input_ids=input_ids, position_ids=moved, **kwargs)


def test_a_model_that_moves_packed_sequences_positions_is_not_packed(tiny_neo: Path) -> None:
    neo = load_base_model(str(tiny_neo), torch.float32)  # learned absolute positions
    assert keeps_packed_sequences_apart(neo) and not keeps_packed_sequences_apart(_ShiftsPackedPositions(neo))

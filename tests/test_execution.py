"""Execution of a step: any micro-batch and the regrouping by length give the specification's gradient."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftbench.config import RunConfig
from peftbench.data.prompts import IGNORE_INDEX
from peftbench.errors import UserError
from peftbench.execution import padded_tokens, plan_execution, regroup_by_length
from peftbench.runs import read_records
from peftbench.train import train


def _fits_below(limit: int, checkpointed_limit: int):  # noqa: ANN202
    """A memory probe where a micro-batch fits up to ``limit`` sequences (``checkpointed_limit`` with checkpointing)."""
    asked = []

    def fits(size: int, checkpointing: bool) -> bool:
        asked.append((size, checkpointing))
        return size <= (checkpointed_limit if checkpointing else limit)

    return fits, asked


def test_auto_takes_the_largest_micro_batch_that_fits_and_drops_checkpointing_the_memory_does_not_need() -> None:
    fits, asked = _fits_below(limit=70, checkpointed_limit=256)
    execution = plan_execution("auto", batch=8, grad_acc=32, checkpointing=True, fits=fits)
    assert (execution.micro_batch, execution.grad_acc, execution.checkpointing) == (64, 4, False)
    assert len(asked) <= 4  # a binary search over the divisors of 256 from 8 up, not every divisor
    assert execution.group_by_length


def test_auto_checkpoints_only_when_the_specifications_micro_batch_does_not_fit_without() -> None:
    fits, _ = _fits_below(limit=4, checkpointed_limit=48)
    execution = plan_execution("auto", batch=8, grad_acc=32, checkpointing=False, fits=fits)
    assert (execution.micro_batch, execution.grad_acc, execution.checkpointing) == (32, 8, True)


def test_without_a_probe_auto_keeps_the_flags_micro_batch_and_spec_is_literal() -> None:
    auto = plan_execution("auto", batch=8, grad_acc=32, checkpointing=True, fits=None)
    assert (auto.micro_batch, auto.grad_acc, auto.checkpointing, auto.group_by_length) == (8, 32, True, True)
    spec = plan_execution("spec", batch=8, grad_acc=32, checkpointing=True, fits=_fits_below(999, 999)[0])
    assert (spec.micro_batch, spec.grad_acc, spec.checkpointing, spec.group_by_length) == (8, 32, True, False)
    number = plan_execution("64", batch=8, grad_acc=32, checkpointing=False, fits=None)
    assert (number.micro_batch, number.grad_acc) == (64, 4)


@pytest.mark.parametrize(("setting", "message"), [("48", "does not divide the 256 sequences"), ("fast", "auto, spec")])
def test_a_micro_batch_that_would_change_the_step_is_refused(setting: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        RunConfig(peft_type="lora", batch=8, grad_acc=32, micro_batch=setting)


def test_regrouping_keeps_every_sequence_and_the_micro_batch_sizes_and_removes_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = [[30, 5, 9, 31], [6, 28, 7, 8]]
    batches = []
    for group in lengths:
        width = 32
        ids = torch.randint(1, 100, (len(group), width), generator=generator)
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in group])
        labels = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
        labels[:, :3] = IGNORE_INDEX  # a prompt
        batches.append({"input_ids": torch.where(mask.bool(), ids, 0), "attention_mask": mask, "labels": labels})
    grouped = regroup_by_length(batches, pad_token_id=0)

    def sequences(parts: list[dict[str, torch.Tensor]]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        rows = []
        for part in parts:
            for ids, mask, labels in zip(part["input_ids"], part["attention_mask"].bool(), part["labels"], strict=True):
                rows.append((tuple(ids[mask].tolist()), tuple(labels[mask].tolist())))
        return sorted(rows)

    assert sequences(grouped) == sequences(batches)
    assert [len(g["input_ids"]) for g in grouped] == [4, 4]
    assert [g["input_ids"].shape[1] for g in grouped] == [32, 8]  # longest first, each to its own longest
    assert padded_tokens(grouped) == (124, 160) and padded_tokens(batches) == (124, 256)
    label_tokens = sum(int((g["labels"][:, 1:] != IGNORE_INDEX).sum()) for g in grouped)
    assert label_tokens == sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)


def _train(tmp_path: Path, model: Path, data_dir: str, name: str, **settings: object) -> Path:
    fixed = {"peft_type": "lora", "model_name": str(model), "r_ab": 4, "lora_dropout": 0.0, "lr": 1e-2,
             "max_steps": 2, "eval_steps": 2, "max_train_samples": 64, "val_set_size": 0, "data_dir": data_dir,
             "output_folder": str(tmp_path / name)}  # fmt: skip
    config = RunConfig(**fixed | settings)
    return train(config).run_dir


@pytest.mark.parametrize("model", ["tiny_neo", "tiny_llama"])
def test_a_step_has_the_same_gradient_at_8_by_4_at_32_by_1_and_regrouped_by_length(
    model, request, data_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    folder = request.getfixturevalue(model)
    runs = {
        setting: _train(tmp_path, folder, data_dir, setting, batch=8, grad_acc=4, micro_batch=setting)
        for setting in ("spec", "32", "auto")
    }
    weights = {setting: load_file(run / "checkpoint-2" / "adapter_model.safetensors") for setting, run in runs.items()}
    for setting in ("32", "auto"):
        for name, value in weights["spec"].items():
            torch.testing.assert_close(weights[setting][name], value, rtol=1e-4, atol=1e-6)
    assert any((value != 0).any() for name, value in weights["spec"].items() if "lora_B" in name)  # it trained
    executions = {setting: read_records(run / "output.jsonl")[0]["execution"] for setting, run in runs.items()}
    assert [executions[s]["micro_batch"] for s in runs] == [8, 32, 8]
    assert [executions[s]["group_by_length"] for s in runs] == [False, True, True]
    padding = {setting: read_records(run / "output.jsonl")[-1]["padding_fraction"] for setting, run in runs.items()}
    assert padding["auto"] < padding["spec"] / 2  # regrouping by length removes most of the padding


def test_a_run_resumed_at_another_micro_batch_ends_with_the_weights_of_the_uninterrupted_run(
    tiny_llama, data_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    whole = _train(
        tmp_path,
        tiny_llama,
        data_dir,
        "whole",
        batch=8,
        grad_acc=4,
        micro_batch="spec",
        eval_steps=1,
        save_total_limit=0,
    )
    copy = whole.with_name(whole.name + "-copy")  # beside it: a run resumes in its own output folder
    shutil.copytree(whole, copy, ignore=shutil.ignore_patterns("checkpoint-2"))
    config = RunConfig.from_record(read_records(copy / "output.jsonl")[0]["config"])
    resumed = dataclasses.replace(config, micro_batch="16", resume_from_checkpoint=str(copy / "checkpoint-1"))
    assert train(resumed).run_dir == copy
    ours = load_file(copy / "checkpoint-2" / "adapter_model.safetensors")
    for name, value in load_file(whole / "checkpoint-2" / "adapter_model.safetensors").items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-6)
    assert read_records(copy / "output.jsonl")[-2]["execution"]["micro_batch"] == 16  # the resume record

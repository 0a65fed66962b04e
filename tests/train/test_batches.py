"""Execution of a step: any micro-batch and the regrouping by length give the specification's gradient."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftbench.config import RunConfig
from peftbench.data.prompts import IGNORE_INDEX
from peftbench.runs.records import read_records
from peftbench.train.batches import executed_tokens, pack_step, real_tokens, regroup_by_length
from peftbench.train.recipe import train


def _step(lengths: list[list[int]], prompt: int) -> list[dict[str, torch.Tensor]]:
    """A step's micro-batches of right-padded sequences (ids from 1, padding 0), the first ``prompt`` tokens
    of each unlabelled; ``prompt=0`` trains on every token, as llm-adapters' train_on_inputs does."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for group in lengths:
        width = 32
        ids = torch.randint(1, 100, (len(group), width), generator=generator)
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in group])
        labels = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
        labels[:, :prompt] = IGNORE_INDEX
        batches.append({"input_ids": torch.where(mask.bool(), ids, 0), "attention_mask": mask, "labels": labels})
    return batches


def _loss_tokens(batches: list[dict[str, torch.Tensor]]) -> int:
    """Label tokens the shifted loss uses: the Trainer's count for the step."""
    return sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in batches)


def test_regrouping_keeps_every_sequence_and_the_micro_batch_sizes_and_removes_padding() -> None:
    batches = _step([[30, 5, 9, 31], [6, 28, 7, 8]], prompt=3)
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
    assert (real_tokens(grouped), executed_tokens(grouped), executed_tokens(batches)) == (124, 160, 256)
    assert _loss_tokens(grouped) == _loss_tokens(batches)


def _packed_sequences(parts: list[dict[str, torch.Tensor]]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The sequences of packed rows, split where the positions restart; padding (token 0) left out."""
    found = []
    for part in parts:
        for ids, labels, positions in zip(part["input_ids"], part["labels"], part["position_ids"], strict=True):
            starts = [*torch.nonzero(positions == 0).flatten().tolist(), len(ids)]
            for start, end in itertools.pairwise(starts):
                assert positions[start:end].tolist() == list(range(end - start))
                if ids[start] != 0:
                    found.append((tuple(ids[start:end].tolist()), tuple(labels[start:end].tolist())))
    return sorted(found)


def test_packing_keeps_every_sequence_and_every_loss_token_in_the_same_number_of_micro_batches() -> None:
    batches = _step([[20, 5, 9, 3], [6, 12, 7, 8], [4, 2, 10, 5]], prompt=0)  # every token a label
    packed = pack_step(batches, pad_token_id=0)
    assert len(packed) == len(batches) and all(set(part) == {"input_ids", "labels", "position_ids"} for part in packed)
    originals = []
    for batch in batches:
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"].bool(), batch["labels"], strict=True):
            originals.append((tuple(ids[mask].tolist()), (IGNORE_INDEX, *labels[mask].tolist()[1:])))
    # Each sequence's first label is ignored: the previous sequence's last token must not learn to predict it.
    assert _packed_sequences(packed) == sorted(originals)
    assert _loss_tokens(packed) == _loss_tokens(batches)  # the step's count, which the Trainer took before packing
    # 91 tokens in rows of up to twice the longest (20): 3 rows, against 12 padded to their micro-batch's longest.
    assert real_tokens(batches) == 91
    assert (executed_tokens(packed), executed_tokens(regroup_by_length(batches, 0))) == (96, 160)
    assert [tuple(part["input_ids"].shape) for part in packed] == [(1, 40), (1, 40), (1, 16)]


@pytest.mark.parametrize(
    "lengths",
    [
        [[4], [2], [2]],  # one row (4 + 2 + 2) for three micro-batches
        [[8, 8, 8], [8, 8, 8]],  # rows 16 | 16 | 16: the first micro-batch's 2 × 16 tokens exceed regrouping's 3 × 8
    ],
)
def test_a_step_that_packing_cannot_spread_within_regroupings_memory_is_regrouped_instead(lengths) -> None:
    batches = _step(lengths, prompt=0)
    packed, regrouped = pack_step(batches, pad_token_id=0), regroup_by_length(batches, pad_token_id=0)
    assert len(packed) == len(batches) and all("position_ids" not in part for part in packed)
    assert all(torch.equal(p["input_ids"], r["input_ids"]) for p, r in zip(packed, regrouped, strict=True))


def _train(tmp_path: Path, model: Path, data_dir: str, name: str, **settings: object) -> Path:
    fixed = {"peft_type": "lora", "model_name": str(model), "r_ab": 4, "lora_dropout": 0.0, "lr": 1e-2,
             "max_steps": 2, "eval_steps": 2, "max_train_samples": 64, "val_set_size": 0, "data_dir": data_dir,
             "output_folder": str(tmp_path / name)}  # fmt: skip
    config = RunConfig(**fixed | settings)
    return train(config).run_dir


@pytest.mark.parametrize("model", ["tiny_neo", "tiny_llama"])
def test_a_step_has_the_same_gradient_at_8_by_4_at_32_by_1_regrouped_and_packed(
    model, request, data_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    folder = request.getfixturevalue(model)
    settings = {"spec": {"micro_batch": "spec"}, "32": {"micro_batch": "32", "packing": False},
                "regrouped": {"packing": False}, "packed": {}, "packed 32": {"micro_batch": "32"}}  # fmt: skip
    runs = {name: _train(tmp_path, folder, data_dir, name.replace(" ", "-"), batch=8, grad_acc=4, **setting)
            for name, setting in settings.items()}  # fmt: skip
    weights = {name: load_file(run / "checkpoint-2" / "adapter_model.safetensors") for name, run in runs.items()}
    for name in runs:
        for key, value in weights["spec"].items():
            torch.testing.assert_close(weights[name][key], value, rtol=1e-4, atol=1e-6)
    assert any((value != 0).any() for key, value in weights["spec"].items() if "lora_B" in key)  # it trained
    records = {name: read_records(run / "output.jsonl") for name, run in runs.items()}
    executions = {name: run_records[0]["execution"] for name, run_records in records.items()}
    assert [executions[n]["micro_batch"] for n in runs] == [8, 32, 8, 8, 32]
    assert [executions[n]["group_by_length"] for n in runs] == [False, True, True, True, True]
    assert [executions[n]["packing"] for n in runs] == [False, False, False, True, True]
    padding = {name: run_records[-1]["padding_fraction"] for name, run_records in records.items()}
    assert padding["regrouped"] < padding["spec"] / 2  # regrouping by length removes most of the padding
    # 32 sequences make few rows, each micro-batch padded to its fullest (measured: 42% literal, 15% regrouped,
    # 9% packed; 49% at 32 × 1, 13% packed).
    assert padding["packed"] < padding["regrouped"] and padding["packed 32"] < padding["32"] / 2


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


@pytest.mark.parametrize("method", ["hira", "dora", "adalora", "ia3", "fft"])
def test_packing_trains_each_kind_of_method_to_the_weights_of_regrouping(
    method: str, tiny_llama, data_dir, tmp_path, monkeypatch
) -> None:
    """HiRA (ours), a weight-normalised LoRA, AdaLoRA (whose penalty each micro-batch adds), a scaling
    vector and every weight: the same weights packed and regrouped (dropout 0 where a method has it)."""
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    dropout = {"lora_dropout": 0.0} if method in ("dora", "adalora") else {}
    weights, packed = {}, {}
    for packing in (False, True):
        config = RunConfig(peft_type=method, model_name=str(tiny_llama), lr=1e-3, max_steps=3, batch=8, grad_acc=4,
                           max_train_samples=96, val_set_size=0, data_dir=data_dir, packing=packing,
                           output_folder=str(tmp_path / f"{method}-{packing}"), **dropout)  # fmt: skip
        run = train(config).run_dir
        files = list((run / "checkpoint-3").glob("*.safetensors"))
        assert len(files) == 1
        weights[packing] = load_file(files[0])
        packed[packing] = read_records(run / "output.jsonl")[0]["execution"]["packing"]
    assert packed == {False: False, True: True}
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-4, atol=1e-6)

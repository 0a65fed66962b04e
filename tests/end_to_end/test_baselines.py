"""Every registry method through the whole pipeline on a tiny model: train with validation, resume, evaluate in
both modes, export or refuse to; and the registry as the only place a method is named."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from peftbench.config import EvalConfig, RunConfig
from peftbench.errors import UserError
from peftbench.evaluate.generate import generate_responses
from peftbench.evaluate.runner import evaluate
from peftbench.methods import METHOD_FLAGS, METHODS
from peftbench.models.load import load_tokenizer
from peftbench.runs.checkpoint import export_merged, load_trained
from peftbench.train.recipe import TrainResult, train

ROOT = Path(__file__).resolve().parents[2]
# Rates at which a few steps visibly move each method on the tiny model (as in test_methods).
RATES = {"hira": 0.3, "ia3": 0.3, "vera": 0.1, "loha": 0.1, "lokr": 0.1, "prefix": 3e-2, "prompt": 0.3, "fft": 1e-3}
SMALL = {"r_ab": 4, "virtual_tokens": 4, "target_modules": "q_proj,v_proj", "lora_dropout": 0.0}


def run(method: str, model: Path, data_dir: str, out: Path, **overrides: object) -> TrainResult:
    takes = METHODS[method].flags
    settings = {
        "peft_type": method, "model_name": str(model), "lr": RATES.get(method, 1e-2), "batch": 4, "max_steps": 4,
        "max_train_samples": 32, "val_set_size": 8, "eval_strategy": "steps", "eval_steps": 2, "logging_steps": 1,
        "save_total_limit": 0, "data_dir": data_dir, "output_folder": str(out),
        **{k: v for k, v in SMALL.items() if k in takes}, **overrides,
    }  # fmt: skip
    return train(RunConfig(**settings))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "output.jsonl").read_text().splitlines()]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (checkpoint / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(checkpoint / name)


@pytest.mark.parametrize("method", METHODS)
def test_train_validate_then_evaluate_in_both_modes(method: str, tiny_llama: Path, data_dir: str, tmp_path: Path):
    result = run(method, tiny_llama, data_dir, tmp_path / "results")
    end = records(result.run_dir)[-1]
    assert end["event"] == "train_end" and end["global_step"] == 4
    assert end["checkpoint_selection"] == "best eval_loss on the validation set"
    history = json.loads((result.run_dir / "trainer_state.json").read_text())["log_history"]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert len(eval_losses) == 2 and all(0 < loss < 20 for loss in eval_losses)
    assert end["best_eval_loss"] == min(eval_losses)
    for mode in ("loglik", "generate"):
        config = EvalConfig(ckpt=str(result.checkpoint), dataset="boolq", eval_mode=mode, max_eval_samples=3,
                            batch=3, beam_size=2, max_new_tokens=4, data_dir=data_dir)  # fmt: skip
        (record,) = evaluate(config)
        assert record["total"] == 3 and 0 <= record["accuracy"] <= 1, record
        assert record["peft_type"] == method


RESUMABLE = [name for name, method in METHODS.items() if method.resume_limit is None]


@pytest.mark.parametrize("method", RESUMABLE)
def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(
    method: str, tiny_llama: Path, data_dir: str, tmp_path: Path
):
    reference = run(method, tiny_llama, data_dir, tmp_path / "reference", eval_strategy="no")  # saves every 2
    copied = tmp_path / "resumed" / reference.run_dir.name
    shutil.copytree(reference.run_dir, copied)
    shutil.rmtree(copied / "checkpoint-4")
    # The same configuration (output folder included) continues the copy from its checkpoint-2.
    resumed = run(method, tiny_llama, data_dir, tmp_path / "reference", eval_strategy="no",
                  resume_from_checkpoint=str(copied / "checkpoint-2"))  # fmt: skip
    assert resumed.run_dir == copied.resolve()
    ours, theirs = weights(copied / "checkpoint-4"), weights(reference.run_dir / "checkpoint-4")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", [name for name, method in METHODS.items() if method.resume_limit is not None])
def test_a_method_that_cannot_resume_says_so(method: str, tiny_llama: Path, data_dir: str, tmp_path: Path):
    first = run(method, tiny_llama, data_dir, tmp_path / "results", eval_strategy="no")
    with pytest.raises(UserError, match=f"{method} cannot resume"):
        run(method, tiny_llama, data_dir, tmp_path / "results",
            resume_from_checkpoint=str(first.run_dir / "checkpoint-4"), eval_strategy="no")  # fmt: skip


@pytest.mark.parametrize("method", ["dora", "pissa", "mora", "prefix", "ptuning"])
def test_export_merges_where_the_method_can_and_says_why_not_where_it_cannot(
    method: str, tiny_llama: Path, data_dir: str, tmp_path: Path
):
    result = run(method, tiny_llama, data_dir, tmp_path / "results", eval_strategy="no")
    if METHODS[method].merge_limit is not None:
        with pytest.raises(UserError, match=f"{method} cannot be exported as a merged model: .*virtual tokens"):
            export_merged(result.checkpoint, tmp_path / "merged")
        return
    export_merged(result.checkpoint, tmp_path / "merged")
    adapted, _, _ = load_trained(result.checkpoint, torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(merged(input_ids=ids).logits, adapted.eval()(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_adalora_prunes_to_its_budget_during_training(tiny_llama: Path, data_dir: str, tmp_path: Path):
    result = run("adalora", tiny_llama, data_dir, tmp_path / "results", eval_strategy="no", max_steps=10)
    config = json.loads((result.checkpoint / "adapter_config.json").read_text())
    ranks = config["rank_pattern"]
    assert config["init_r"] == 6 and config["target_r"] == 4 and len(ranks) == 4  # 2 layers x q_proj, v_proj
    kept = [sum(mask) for mask in ranks.values()]
    assert sum(kept) == 4 * len(ranks) and max(kept) <= 6, kept  # r 4 on average of 6 per layer at the start


def test_a_method_flag_for_another_method_is_one_error_line(tmp_path: Path, data_dir: str):
    command = [
        sys.executable,
        str(ROOT / "train_hira.py"),
        "--peft_type",
        "prefix",
        "--r_ab",
        "8",
        "--data_dir",
        data_dir,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --r_ab does not apply to prefix (its method flags: --virtual_tokens)"
    ]


def test_the_registry_is_the_only_place_a_method_is_named():
    """Outside peftbench/methods, no code branches on a method's name: it asks the registry entry."""
    names = "|".join(name for name in METHODS)
    branch = re.compile(rf"""(peft_type|method|name)\s*(==|!=|in|not in)\s*[\(\[{{]?\s*["']({names})["']""")
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "peftbench").rglob("*.py"))
        if "methods" not in path.relative_to(ROOT).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert not offending, offending
    assert set(METHOD_FLAGS) >= {flag for method in METHODS.values() for flag in method.flags}


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning"])
def test_virtual_token_methods_generate_the_same_batched_as_alone(method: str, tiny_llama: Path):
    """Left padding in a batch must not move a prompt's tokens relative to the virtual ones."""
    model = (
        METHODS[method]
        .apply(
            AutoModelForCausalLM.from_pretrained(tiny_llama),
            RunConfig(peft_type=method, virtual_tokens=4).adapter_settings(),
        )
        .eval()
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 1, generator=torch.Generator().manual_seed(5))
    tokenizer = load_tokenizer(str(tiny_llama))
    prompts = [tokenizer(text)["input_ids"] for text in ("Question: is it true", "Yes", "The correct answer is x y z")]
    batched = generate_responses(model, tokenizer, prompts, batch_size=3, beam_size=2, max_new_tokens=4)
    alone = [generate_responses(model, tokenizer, [p], batch_size=1, beam_size=2, max_new_tokens=4)[0] for p in prompts]
    assert batched == alone
    assert any(batched), batched

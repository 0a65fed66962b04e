from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from peftbench.data.prompts import build_prompt
from peftbench.data.sources import load_test_examples
from peftbench.errors import UserError
from peftbench.evaluate.generate import generate_responses
from peftbench.evaluate.runner import resolve_checkpoint, sample_indices
from peftbench.models import load_tokenizer


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_generation_equals_one_prompt_at_a_time(tiny_llama: Path, data_dir: str, beam_size: int) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = load_tokenizer(str(tiny_llama))
    examples, _ = load_test_examples("piqa", data_dir)
    prompts = [build_prompt(e) for e in examples[:5]] + ["Short prompt?"]  # very different lengths -> padding
    one_by_one = generate_responses(model, tokenizer, prompts, 1, beam_size, 6)
    batched = generate_responses(model, tokenizer, prompts, 4, beam_size, 6)
    assert batched == one_by_one
    assert all(one_by_one) and len(set(one_by_one)) > 1  # real, differing generations
    assert tokenizer.padding_side == "right"  # restored for training


def test_evaluation_sample_is_fixed_by_the_seed() -> None:
    first = sample_indices(1000, 20, seed=36)
    assert first == sample_indices(1000, 20, seed=36) and first == sorted(first) and len(set(first)) == 20
    assert first != sample_indices(1000, 20, seed=37)
    assert sample_indices(5, 20, seed=36) == [0, 1, 2, 3, 4]


def test_checkpoint_resolution(tmp_path: Path) -> None:
    run = tmp_path / "results_lora" / "m-common_170k-lora-lr=0.001-seed=36-20260101-000000"
    checkpoint = run / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_config.json").write_text("{}")
    (run / "output.jsonl").write_text(
        f'{{"config": {{}}}}\n{{"event": "train_end", "best_checkpoint": "{checkpoint}"}}\n'
    )
    assert resolve_checkpoint(checkpoint) == checkpoint
    assert resolve_checkpoint(run) == checkpoint
    assert resolve_checkpoint(tmp_path / "results_lora") == checkpoint
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(UserError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path)

from pathlib import Path

import pytest
from task_files import write_convai2
from transformers import AutoModelForCausalLM

from peftbench.data.prompts import build_prompt, eval_prompt_ids
from peftbench.data.protocols import HIRA, get_protocol
from peftbench.data.sources import load_test_examples
from peftbench.errors import UserError
from peftbench.evaluate.generate import generate_responses
from peftbench.evaluate.runner import sample_indices
from peftbench.models.load import load_tokenizer
from peftbench.runs.folders import resolve_checkpoint


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("architecture", ["tiny_neo", "tiny_llama"])
def test_batched_generation_equals_one_prompt_at_a_time(architecture: str, beam_size: int, data_dir: str, request):
    model_dir = request.getfixturevalue(architecture)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(str(model_dir))
    examples = load_test_examples("piqa", data_dir).examples
    texts = [build_prompt(e, HIRA) for e in examples[:5]] + ["Short prompt?"]  # very different lengths -> padding
    prompts = eval_prompt_ids(tokenizer, texts, HIRA)
    one_by_one = generate_responses(model, tokenizer, prompts, 1, beam_size, 6)
    batched = generate_responses(model, tokenizer, prompts, 4, beam_size, 6)
    assert batched == one_by_one
    assert all(one_by_one) and len(set(one_by_one)) > 1  # real, differing generations
    assert tokenizer.padding_side == "right"  # restored for training


@pytest.mark.parametrize("architecture", ["tiny_neo", "tiny_llama"])
def test_encoding_each_prompt_once_gives_plain_beam_search_output(architecture: str, data_dir: str, request):
    model_dir = request.getfixturevalue(architecture)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(str(model_dir))
    examples = load_test_examples("arc_easy", data_dir).examples
    prompts = eval_prompt_ids(tokenizer, [build_prompt(e, HIRA) for e in examples[:6]], HIRA)
    shared = generate_responses(model, tokenizer, prompts, 3, 4, 8, shared_prefill=True)
    plain = generate_responses(model, tokenizer, prompts, 3, 4, 8, shared_prefill=False)
    assert shared == plain and len(set(plain)) > 1


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


def test_rerun_skips_finished_results_and_redoes_changed_or_broken_ones(
    tiny_llama: Path, data_dir: str, tmp_path, caplog
):
    import json
    import logging

    from peftbench.config import EvalConfig
    from peftbench.evaluate.runner import evaluate

    def run(**overrides):
        settings = {"model_name": str(tiny_llama), "output_dir": str(tmp_path), "dataset": "boolq,winogrande",
                    "beam_size": 1, "max_new_tokens": 2, "max_eval_samples": 3, "data_dir": data_dir}  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.INFO):
            return evaluate(EvalConfig(**{**settings, **overrides}))

    first = run()
    result = tmp_path / "output_boolq_eval.jsonl"
    assert run() == first and "skipping" in caplog.text and "redoing" not in caplog.text

    run(max_new_tokens=3)
    assert "redoing" in caplog.text and "max_new_tokens changed" in caplog.text
    assert json.loads(result.read_text())["eval_config"]["max_new_tokens"] == 3

    result.write_text('{"dataset": "boolq", "accur')  # a half-written file from a killed run
    run(max_new_tokens=3)
    assert f"redoing {result}: it is incomplete or corrupt" in caplog.text
    assert json.loads(result.read_text())["total"] == 3

    predictions = tmp_path / "predictions_winogrande.json"
    predictions.write_text(json.dumps(json.loads(predictions.read_text())[:1]))
    run(max_new_tokens=3)
    assert "redoing" in caplog.text and "winogrande" in caplog.text and "skipping" in caplog.text  # boolq skipped
    assert len(json.loads(predictions.read_text())) == 3

    run(max_new_tokens=3, overwrite=True)
    assert "skipping" not in caplog.text


@pytest.mark.parametrize("task", ["math", "dialogue"])
def test_batched_generation_equals_batch_1_under_the_math_and_dialogue_settings(
    task: str, tiny_llama: Path, data_dir: str, tmp_path: Path
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = load_tokenizer(str(tiny_llama))
    protocol = get_protocol("hira", task)
    if task == "math":
        examples = load_test_examples("gsm8k", data_dir).examples[:5]
    else:  # ConvAI2: the length penalty and the 4-gram block go to generate() too
        examples = load_test_examples("convai2", str(write_convai2(tmp_path, episodes=2))).examples
    prompts = eval_prompt_ids(tokenizer, [build_prompt(e, protocol) for e in examples], protocol)
    settings = {"generation": protocol.generation}
    one_by_one = generate_responses(model, tokenizer, prompts, 1, 4, 12, **settings)
    assert generate_responses(model, tokenizer, prompts, 3, 4, 12, **settings) == one_by_one
    assert all(one_by_one) and len(set(one_by_one)) > 1

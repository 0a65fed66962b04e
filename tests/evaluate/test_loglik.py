"""Log-likelihood scoring: hand-computed scores, fast path equals naive path, option parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from peftbench.data.prompts import build_prompt, eval_prompt_ids, scored_sequences
from peftbench.data.protocols import PROTOCOLS
from peftbench.data.registry import get_dataset
from peftbench.data.sources import answer_options, load_test_examples
from peftbench.evaluate.loglik import OptionScores, score_options, score_options_naive, score_questions
from peftbench.models.load import load_tokenizer


@pytest.fixture(scope="module", params=["tiny_neo", "tiny_llama"])
def model_and_tokenizer(request):
    model_dir = request.getfixturevalue(request.param)
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), load_tokenizer(str(model_dir))


def _inputs(tokenizer, example: dict, responses: list[str], protocol: str = "hira") -> tuple[list[int], list]:
    prompt = build_prompt(example, PROTOCOLS[protocol])
    (prompt_ids,) = eval_prompt_ids(tokenizer, [prompt], PROTOCOLS[protocol])
    return prompt_ids, scored_sequences(tokenizer, prompt, prompt_ids, responses, PROTOCOLS[protocol])


@pytest.mark.parametrize("protocol", ["hira", "llm-adapters"])
def test_scores_equal_a_hand_computed_sum_of_token_logprobs(model_and_tokenizer, protocol: str) -> None:
    model, tokenizer = model_and_tokenizer
    example = {"instruction": "Is water wet?\n\nAnswer format: true/false", "input": ""}
    responses = ["the correct answer is true", "the correct answer is false"]
    prompt_ids, sequences = _inputs(tokenizer, example, responses, protocol)
    scores = score_options(model, tokenizer.pad_token_id, len(prompt_ids), sequences)
    for response, logprob, count in zip(responses, scores.logprobs, scores.token_counts, strict=True):
        prompt = build_prompt(example, PROTOCOLS[protocol])
        if protocol == "hira":  # BOS + prompt, then the answer tokenized on its own (as in training)
            prompt_ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
            ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"]
        else:  # prompt and answer tokenized together
            prompt_ids, ids = tokenizer(prompt)["input_ids"], tokenizer(prompt + response)["input_ids"]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
        by_hand = sum(log_probs[position - 1, ids[position]].item() for position in range(len(prompt_ids), len(ids)))
        assert logprob == pytest.approx(by_hand, abs=1e-4)
        assert count == len(ids) - len(prompt_ids)
    assert scores.best() == max(range(2), key=lambda i: scores.logprobs[i])


@pytest.mark.parametrize("dataset", ["boolq", "piqa", "arc_challenge", "hellaswag", "winogrande", "csqa"])
def test_fast_path_equals_naive_path(model_and_tokenizer, data_dir: str, dataset: str) -> None:
    model, tokenizer = model_and_tokenizer
    spec = get_dataset(dataset)
    examples = load_test_examples(dataset, data_dir).examples
    for example in examples[:3]:
        responses = [spec.response_template.format(answer=o) for o in answer_options(example, spec)]
        prompt_ids, sequences = _inputs(tokenizer, example, responses)
        fast = score_options(model, tokenizer.pad_token_id, len(prompt_ids), sequences)
        naive = score_options_naive(model, tokenizer.pad_token_id, len(prompt_ids), sequences)
        assert fast.token_counts == naive.token_counts
        assert fast.logprobs == pytest.approx(naive.logprobs, abs=1e-3)
        assert fast.best() == naive.best() and fast.best(normalise=True) == naive.best(normalise=True)


@pytest.mark.parametrize("dataset", ["boolq", "arc_easy", "hellaswag", "winogrande"])
def test_batched_questions_score_as_one_question_at_a_time_whatever_the_batch(
    model_and_tokenizer, data_dir: str, dataset: str
) -> None:
    model, tokenizer = model_and_tokenizer
    spec, protocol = get_dataset(dataset), PROTOCOLS["hira"]
    examples = load_test_examples(dataset, data_dir).examples[:11]
    prompts = [build_prompt(example, protocol) for example in examples]
    by_batch = {
        batch: list(score_questions(model, tokenizer, examples, prompts, spec, protocol, batch)) for batch in (1, 4, 11)
    }
    for options, scores in by_batch[1]:  # one question at a time is the scorer tested above against the naive one
        assert len(scores.logprobs) == len(options)
    for batch in (4, 11):
        for (options, scores), (one_options, one) in zip(by_batch[batch], by_batch[1], strict=True):
            assert options == one_options and scores.token_counts == one.token_counts
            assert scores.logprobs == pytest.approx(one.logprobs, abs=1e-4)
    # Left-padded rows really occur: the prompts of a batch differ in length.
    assert len({len(ids) for ids in eval_prompt_ids(tokenizer, prompts, protocol)}) > 1


def test_length_normalised_choice_can_differ() -> None:
    scores = OptionScores(logprobs=[-6.0, -4.0], token_counts=[6, 2])
    assert scores.best() == 1 and scores.best(normalise=True) == 0


def test_options_come_from_the_questions_answer_format(data_dir: str) -> None:
    spec = get_dataset("arc_easy")
    examples = load_test_examples("arc_easy", data_dir).examples
    counts = {len(answer_options(example, spec)) for example in examples}
    assert 4 in counts and 5 in counts  # one ARC-Easy question has five options
    assert answer_options(load_test_examples("boolq", data_dir).examples[0], get_dataset("boolq")) == ["true", "false"]
    assert answer_options({"instruction": "no format line", "answer": "true"}, get_dataset("boolq")) == [
        "true",
        "false",
    ]


def test_loglik_evaluation_writes_scores_and_normalised_accuracy(tiny_llama: Path, data_dir: str, tmp_path) -> None:
    import json

    from peftbench.config import EvalConfig
    from peftbench.evaluate.runner import evaluate

    (record,) = evaluate(
        EvalConfig(
            model_name=str(tiny_llama),
            output_dir=str(tmp_path),
            dataset="siqa",
            eval_mode="loglik",
            max_eval_samples=5,
            data_dir=data_dir,
        )  # fmt: skip
    )
    predictions = json.loads((tmp_path / "predictions_siqa_loglik.json").read_text())
    assert record["mode"] == "loglik" and record["total"] == 5 and record["peft_type"] == "zero-shot"
    assert record["accuracy"] == sum(p["correct"] for p in predictions) / 5
    assert record["accuracy_norm"] == sum(p["predicted_norm"] == p["answer"] for p in predictions) / 5
    for p in predictions:
        assert p["options"] == ["answer1", "answer2", "answer3"] and len(p["logprobs"]) == 3
        assert p["predicted"] == p["options"][max(range(3), key=p["logprobs"].__getitem__)]
    assert not (tmp_path / "output_siqa_eval.jsonl").exists()  # generation results keep their own files


@pytest.mark.parametrize("dataset", ["boolq", "arc_challenge", "hellaswag", "winogrande"])
def test_questions_scored_on_a_shared_header_equal_the_naive_path(model_and_tokenizer, data_dir: str, dataset: str):
    model, tokenizer = model_and_tokenizer
    spec, protocol = get_dataset(dataset), PROTOCOLS["hira"]
    examples = load_test_examples(dataset, data_dir).examples[:6]
    prompts = [build_prompt(example, protocol) for example in examples]
    for example, (options, scores) in zip(
        examples, score_questions(model, tokenizer, examples, prompts, spec, protocol, batch=3), strict=True
    ):
        responses = [spec.response_template.format(answer=o) for o in options]
        prompt_ids, sequences = _inputs(tokenizer, example, responses)
        naive = score_options_naive(model, tokenizer.pad_token_id, len(prompt_ids), sequences)
        assert scores.logprobs == pytest.approx(naive.logprobs, abs=1e-3)
        assert scores.best() == naive.best()


def test_header_is_the_templates_shared_tokens_and_stops_before_every_prompts_end(model_and_tokenizer) -> None:
    from peftbench.evaluate.loglik import encode_header

    model, tokenizer = model_and_tokenizer
    questions = [(5, [[1, 2, 3, 4, 5, 6]]), (4, [[1, 2, 3, 9, 8]])]
    assert encode_header(model, questions).length == 3
    assert encode_header(model, [(2, [[1, 2, 3]]), (4, [[1, 2, 3, 4, 5]])]).length == 1  # the shorter prompt's end
    assert encode_header(model, [(3, [[1, 2, 3]]), (3, [[7, 2, 3]])]) is None


@pytest.mark.parametrize("responses", [["the correct answer is true", "the correct answer is certainly not so"],
                                       ["yes", "no it is not"]])  # fmt: skip
def test_multi_token_tails_on_a_header_equal_the_naive_path(model_and_tokenizer, responses: list[str]) -> None:
    from peftbench.evaluate.loglik import encode_header, score_batch

    model, tokenizer = model_and_tokenizer
    examples = [{"instruction": text, "input": ""} for text in ("Is water wet?", "Is fire cold, or is it hot?")]
    inputs = [_inputs(tokenizer, example, responses) for example in examples]
    questions = [(len(ids), sequences) for ids, sequences in inputs]
    header = encode_header(model, questions)
    assert header is not None  # and the second response's tail, after the shared words, is several tokens
    for (length, sequences), scores in zip(
        questions, score_batch(model, tokenizer.pad_token_id, questions, header), strict=True
    ):
        naive = score_options_naive(model, tokenizer.pad_token_id, length, sequences)
        assert scores.logprobs == pytest.approx(naive.logprobs, abs=1e-3)


def test_a_row_longer_than_a_local_attention_window_is_scored_without_the_header(tiny_neo: Path) -> None:
    """GPT-Neo's local layers count their window in places of the row, and padding between the header and
    the rest would push the header out of it: such a batch is scored as without a header."""
    from peftbench.evaluate.loglik import encode_header, score_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_neo, window_size=8).eval()
    tokenizer = load_tokenizer(str(tiny_neo))
    examples = [{"instruction": text, "input": ""} for text in ("Is water wet?", "Is fire hot, or cold, or both?")]
    inputs = [_inputs(tokenizer, example, ["the correct answer is true", "the correct answer is false"])
              for example in examples]  # fmt: skip
    questions = [(len(ids), sequences) for ids, sequences in inputs]
    header = encode_header(model, questions)
    for (length, sequences), scores in zip(
        questions, score_batch(model, tokenizer.pad_token_id, questions, header), strict=True
    ):
        naive = score_options_naive(model, tokenizer.pad_token_id, length, sequences)
        assert scores.logprobs == pytest.approx(naive.logprobs, abs=1e-3)

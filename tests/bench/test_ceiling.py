"""The least work an exact scorer does, and the ceiling it sets."""

from __future__ import annotations

import pytest
from tiny import make_model_dir

from peftbench.bench.ceiling import exact_ceiling, least_work
from peftbench.evaluate.loglik import header_length
from peftbench.models.load import load_base_model


def test_the_least_work_counts_each_prefix_once_after_the_header_and_never_runs_a_final_token() -> None:
    questions = [[[1, 2, 3, 4, 9], [1, 2, 3, 4, 8]], [[1, 2, 5, 7, 6], [1, 2, 5, 7, 3, 3]]]
    assert header_length([(4, options) for options in questions]) == 2
    # The first: tokens 3, 4 run (9 and 8 are scored at 4's position); one output row.
    assert least_work(questions[0], prompt_length=4, header=2) == (2, 1)
    # The second: 5, 7 run, and 3 of the longer option; rows at 7 (for 6 and 3) and at 3 (for the last 3).
    assert least_work(questions[1], prompt_length=4, header=2) == (3, 2)


def test_the_ceiling_is_the_measured_rate_over_the_least_work(tmp_path) -> None:
    model = load_base_model(make_model_dir(tmp_path / "m", "llama"), None).eval()
    questions = [[[1, 2, 3, 4, 9], [1, 2, 3, 4, 8]], [[1, 2, 5, 7, 6], [1, 2, 5, 7, 3]]]
    ceiling = exact_ceiling(model, questions, [4, 4])
    vocabulary, hidden = model.get_input_embeddings().weight.shape
    body = sum(p.numel() for p in model.parameters()) - vocabulary * hidden * 2  # untied output layer
    expected_flop = 2 * body * 2 + 2 * vocabulary * hidden * 1  # both questions: 2 tokens run, 1 row
    assert ceiling.gflop_per_question == pytest.approx(expected_flop / 1e9)
    assert ceiling.questions_per_s == pytest.approx(ceiling.matmul_gflops / ceiling.gflop_per_question)
    assert ceiling.matmul_gflops > 0.1


def test_the_ceiling_of_a_model_without_an_intermediate_size(tmp_path) -> None:
    """GPT-Neo's config says intermediate_size None (its MLP is 4 x hidden): the ceiling is still measured."""
    model = load_base_model(make_model_dir(tmp_path / "m", "gpt_neo"), None).eval()
    assert model.config.intermediate_size is None
    ceiling = exact_ceiling(model, [[[1, 2, 3, 4, 9], [1, 2, 3, 4, 8]]], [4])
    assert ceiling.matmul_gflops > 0.1 and ceiling.questions_per_s > 0

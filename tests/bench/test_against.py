"""``bench eval --against lm-eval``: both score the same requests, and their scores agree with ours."""

from __future__ import annotations

import json

import pytest

from peftbench.bench.against import AgainstBench, Questions, agreement, bench_against, per_question


def test_per_option_results_regroup_by_question_and_agreement_counts_choices() -> None:
    questions = Questions([{}, {}], ["a", "b"], [[1], [2]], [[[1, 5], [1, 6]], [[2, 5], [2, 6], [2, 7]]])
    grouped = per_question([-1.0, -2.0, -3.0, -1.5, -0.5], questions)
    assert grouped == [[-1.0, -2.0], [-3.0, -1.5, -0.5]]
    result = agreement(grouped, [[-1.1, -2.0], [-3.0, -0.4, -0.5]])
    assert result["same_choice"] == 1 and result["questions"] == 2
    assert result["max_abs_logprob_diff"] == pytest.approx(1.1)


def test_lm_eval_scores_the_same_requests_as_ours(tiny_llama, data_dir: str, tmp_path) -> None:
    pytest.importorskip("lm_eval")
    out = tmp_path / "against.json"
    settings = AgainstBench(str(tiny_llama), "arc_easy", examples=6, batch="auto", lm_eval_batch=4, rounds=2,
                            generate_questions=3, data_dir=data_dir)  # fmt: skip
    report = json.loads(bench_against(settings, out) and out.read_text())
    loglik = report["loglik"]
    assert 24 <= loglik["requests"] <= 30  # one per option: ARC-Easy questions have 4 or 5
    assert loglik["agreement"]["same_choice"] == 6 and loglik["agreement"]["max_abs_logprob_diff"] < 1e-4
    assert len(loglik["ratio_per_round"]) == 2 and set(loglik["questions_per_s"]) == set(loglik["seconds"])
    ceiling, speeds = loglik["ceiling"], list(loglik["questions_per_s"].values())
    assert ceiling["times_lm_eval"] == pytest.approx(ceiling["questions_per_s"] / speeds[1])
    assert ceiling["peftbench_share"] == pytest.approx(speeds[0] / ceiling["questions_per_s"])
    assert report["generate"]["same_text"] == 3  # the same beam search, decoded alike


def test_gsm8k_generation_against_lm_eval_and_batch_1(tiny_llama, data_dir: str, tmp_path) -> None:
    pytest.importorskip("lm_eval")
    settings = AgainstBench(str(tiny_llama), "gsm8k", examples=3, batch="3", lm_eval_batch=3, rounds=1,
                            generate_questions=3, max_new_tokens=12, modes=("generate",),
                            data_dir=data_dir)  # fmt: skip
    report = bench_against(settings, None)["generate"]
    assert (report["beam_size"], report["max_new_tokens"], report["questions"]) == (4, 12, 3)  # beam: hira math's
    assert report["same_text"] == 3 and report["same_answer"] == 3 and report["same_text_as_batch_1"] == 3

"""Progress: a line per interval in logs, with the questions done, their rate and the time left."""

from __future__ import annotations

import logging

import pytest

from peftbench.evaluate.progress import Progress


def test_a_log_file_gets_lines_with_the_rate_and_the_time_left(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="peftbench.evaluate.progress")
    progress = Progress(total=10, desc="loglik arc_challenge", interval=0.0, terminal=False)
    progress.update(4)
    progress.update(6)
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("loglik arc_challenge: 4/10 questions, ") and "questions/s" in lines[0]
    assert "s left" in lines[0] and lines[-1].startswith("loglik arc_challenge: 10/10 questions, ")
    assert lines[-1].endswith(", 0 s left")


def test_lines_are_spaced_by_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="peftbench.evaluate.progress")
    progress = Progress(total=100, desc="generate boolq", interval=3600.0, terminal=False)
    for _ in range(10):
        progress.update(10)
    progress.close()
    (line,) = [r.getMessage() for r in caplog.records]  # the final one only
    assert line.startswith("generate boolq: 100/100 questions, ")


def test_every_batch_moves_the_loglik_progress(tiny_llama, data_dir: str) -> None:
    from transformers import AutoModelForCausalLM

    from peftbench.data.prompts import build_prompt
    from peftbench.data.protocols import HIRA
    from peftbench.data.registry import get_dataset
    from peftbench.data.sources import load_test_examples
    from peftbench.evaluate.loglik import score_questions
    from peftbench.models.load import load_tokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), load_tokenizer(str(tiny_llama))
    examples = load_test_examples("arc_easy", data_dir).examples[:7]
    prompts = [build_prompt(e, HIRA) for e in examples]
    seen: list[int] = []
    scored = score_questions(model, tokenizer, examples, prompts, get_dataset("arc_easy"), HIRA, 3, seen.append)
    assert len(list(scored)) == 7 and seen == [3, 3, 1]

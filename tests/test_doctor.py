"""``peftbench doctor``'s checks on the CPU: each passes on a sound stack and fails where the stack is not."""

from __future__ import annotations

import pytest
import torch

import peftbench.doctor as doctor
from peftbench.doctor import FAIL, PASS, SKIP, Machine


@pytest.fixture
def cpu() -> Machine:
    return Machine(torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(
    "check",
    [doctor.check_packing, doctor.check_sdpa, doctor.check_loglik_batching, doctor.check_full_finetuning_update],
)
def test_each_check_that_runs_on_a_cpu_passes_there(check, cpu) -> None:
    result = check(cpu)
    assert result.status == PASS, result.line()
    assert result.tolerance and result.figure


def test_the_packing_check_fails_where_packed_sequences_see_each_other(cpu, monkeypatch) -> None:
    """With a KV cache transformers ignores restarting positions: packed sequences attend to each other."""
    build = doctor._llama

    def with_cache(machine: Machine) -> torch.nn.Module:
        model = build(machine)
        model.config.use_cache = True
        return model

    monkeypatch.setattr(doctor, "_llama", with_cache)
    result = doctor.check_packing(cpu)
    assert result.status == FAIL and float(result.figure.split()[-1]) > 1e-4


def test_the_loglik_check_fails_when_batching_changes_the_scores(cpu, monkeypatch) -> None:
    score = doctor.score_batch

    def drifting(model, pad, questions):  # noqa: ANN001, ANN202
        scores = score(model, pad, questions)
        for option_scores in scores:
            option_scores.logprobs[0] += 0.1 * (len(questions) > 1)
        return scores

    monkeypatch.setattr(doctor, "score_batch", drifting)
    assert doctor.check_loglik_batching(cpu).status == FAIL


def test_the_memory_plan_is_skipped_on_a_cpu_with_the_reason(cpu) -> None:
    result = doctor.check_memory_plan(cpu)
    assert result.status == SKIP and "simulated" in result.figure


def test_the_memory_plan_check_runs_its_plan_and_two_real_steps_on_a_simulated_gpu(monkeypatch) -> None:
    from simulated_gpu import SimulatedGPU
    from transformers import GPTNeoConfig

    tiny = GPTNeoConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=512,
                        attention_types=[[["global", "local"], 1]], window_size=256)  # fmt: skip
    monkeypatch.setattr(doctor, "gpt_neo_geometry", lambda layers: tiny)
    gpu = SimulatedGPU(total_bytes=40 * 2**20)  # activations of about 16 sequences of 256 tokens fit
    monkeypatch.setattr(doctor, "device_memory", lambda device: gpu)
    with gpu:
        result = doctor.check_memory_plan(Machine(torch.device("cpu"), torch.bfloat16))
    assert result.status == PASS, result.line()
    assert 1 <= result.values["micro_batch"] < 256 and result.values["real_bytes"] <= result.values["planned_bytes"]


def test_the_ddp_comparison_passes_under_another_reduction_order_and_fails_without_the_all_reduce(cpu) -> None:
    """What the check compares, without its processes: shares' gradients averaged in another grouping and order
    (as another CPU's or library's reduction would) agree; one rank's gradient alone (no all-reduce) does not."""
    whole = doctor.adapter_gradients(cpu)
    exact = doctor.adapter_gradients(Machine(torch.device("cpu"), torch.float64))
    quarters = [doctor.adapter_gradients(cpu, shares=4, share=index) for index in range(4)]
    regrouped = {n: ((quarters[3][n] + quarters[2][n]) + (quarters[1][n] + quarters[0][n])) / 4 for n in whole}
    difference, tolerance = doctor.gradient_agreement(regrouped, whole, exact)
    assert 0 < tolerance < 1e-6 and difference <= tolerance
    one_rank = doctor.adapter_gradients(cpu, shares=2, share=0)
    difference, tolerance = doctor.gradient_agreement(one_rank, whole, exact)
    assert difference > 1000 * tolerance

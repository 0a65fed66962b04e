"""The protocol benchmark: what it measures reaches its report, and its projection is the paper preset's work
divided by those rates."""

from __future__ import annotations

import json

import pytest

from peftbench.bench_protocol import PAPER_TRAIN_EXAMPLES, TRAINER_WAYS, ProtocolBench, bench_protocol, bench_trainer
from peftbench.data.registry import resolve_names
from peftbench.data.sources import load_test_examples
from peftbench.errors import UserError


def test_protocol_bench_measures_both_executions_and_projects_the_paper_preset(tiny_neo, data_dir, tmp_path) -> None:
    out = tmp_path / "bench_protocol.json"
    # IA3: the specification's smallest step (--batch 32 --grad_acc 1), so the test stays short.
    bench_protocol(ProtocolBench(str(tiny_neo), "unused", ("ia3",), 1, 1, data_dir), out)
    report = json.loads(out.read_text())
    ia3 = report["training"]["ia3"]
    assert ia3["auto"]["execution"]["group_by_length"] and not ia3["spec"]["execution"]["group_by_length"]
    assert ia3["auto"]["execution"]["packing"] and ia3["auto"]["padding_fraction"] < ia3["spec"]["padding_fraction"]
    assert [(run["execution"]["micro_batch"], run["execution"]["grad_acc"]) for run in ia3.values()] == [(32, 1)] * 2
    assert all(run["samples_per_s"] > 0 and 0 < run["padding_fraction"] < 1 for run in ia3.values())
    rates = report["evaluation_questions_per_s"]
    assert set(rates) == {"generate", "loglik"} and set(rates["loglik"]) == set(resolve_names("all"))
    sizes = {name: len(load_test_examples(name, data_dir).examples) for name in resolve_names("all")}
    evaluation = sum(2 * sizes[name] / rate for by_name in rates.values() for name, rate in by_name.items())
    training = PAPER_TRAIN_EXAMPLES / ia3["auto"]["samples_per_s"]
    assert report["projection"]["total_h"] == pytest.approx((training + evaluation) / 3600)


def test_trainer_bench_times_a_plain_loop_and_three_executions_and_packing_removes_padding(
    tiny_llama, data_dir, tmp_path
) -> None:
    out = tmp_path / "bench_trainer.json"
    report = bench_trainer(str(tiny_llama), 2, data_dir, out)
    assert json.loads(out.read_text())["median_s"] == report["median_s"]
    assert list(report["step_times_s"]) == ["plain PEFT loop", *TRAINER_WAYS]
    assert all(len(times) == 2 and min(times) > 0 for times in report["step_times_s"].values())
    spec, regrouped, packed = (report["padding_fraction"][way] for way in TRAINER_WAYS)
    assert regrouped == spec > packed  # one micro-batch a step: regrouping cannot help, packing does


def test_protocol_bench_refuses_a_method_the_paper_preset_has_no_command_for(tiny_neo, data_dir) -> None:
    with pytest.raises(UserError, match="no command for nonsense"):
        bench_protocol(ProtocolBench(str(tiny_neo), "unused", ("nonsense",), 1, 1, data_dir), None)


def test_memory_bench_counts_less_at_each_stage_and_extends_layers_exactly(tiny_neo, tmp_path) -> None:
    from peftbench.bench_memory import STAGES, MemoryBench, bench_memory, count_at

    bench = MemoryBench(str(tiny_neo), "hira", seq=64, answer_tokens=8, dtype="fp32")
    report = bench_memory(bench, tmp_path / "memory.json")
    assert json.loads((tmp_path / "memory.json").read_text()) == report
    assert report["label_position_loss"] is True
    totals = [report["activation_gib_per_sequence"][name] for name, _ in STAGES]
    assert all(later < earlier for earlier, later in zip(totals, totals[1:], strict=False))
    # The eager attention keeps at least its fp32 softmax (heads × seq² × 4 bytes) per layer; SDPA keeps none of it.
    saved = report["per_layer_pair_mib"][STAGES[0][0]] - report["per_layer_pair_mib"][STAGES[1][0]]
    assert saved * 2**20 >= 2 * 4 * 64 * 64 * 4
    # Six layers counted directly equal two layers plus twice what the second pair adds.
    two, four, six = (count_at(bench, layers)[0] for layers in (2, 4, 6))
    assert six == {name: two[name] + 2 * (four[name] - two[name]) for name in two}


def test_memory_bench_refuses_a_model_without_gpt_neo_attention(tiny_llama) -> None:
    from peftbench.bench_memory import MemoryBench, bench_memory

    with pytest.raises(UserError, match="is a llama"):
        bench_memory(MemoryBench(str(tiny_llama), "hira", 64, 8, "fp32"), None)


def test_memory_bench_counts_a_method_that_keeps_transformers_loss(tiny_neo) -> None:
    from peftbench.bench_memory import STAGES, MemoryBench, bench_memory, count_at

    with pytest.raises(UserError, match="--method nonexistent: the paper preset has no command"):
        bench_memory(MemoryBench(str(tiny_neo), "nonexistent", 32, 4, "fp32"), None)
    counts = {
        method: count_at(MemoryBench(str(tiny_neo), method, 32, 4, "fp32"), 2)[0] for method in ("prefix", "lora")
    }
    assert counts["prefix"][STAGES[-1][0]] == counts["prefix"][STAGES[-2][0]]  # every position's logits, as trained
    assert counts["lora"][STAGES[-1][0]] < counts["lora"][STAGES[-2][0]]
    assert bench_memory(MemoryBench(str(tiny_neo), "prefix", 32, 4, "fp32"), None)["label_position_loss"] is False

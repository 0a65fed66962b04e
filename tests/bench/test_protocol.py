"""The protocol benchmark: what it measures reaches its report, and its projection is the paper preset's work
divided by those rates."""

from __future__ import annotations

import json

import pytest

from peftbench.bench.protocol import PAPER_TRAIN_EXAMPLES, ProtocolBench, bench_protocol
from peftbench.bench.trainer import TRAINER_WAYS, bench_trainer
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

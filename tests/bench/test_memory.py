"""The protocol benchmark: what it measures reaches its report, and its projection is the paper preset's work
divided by those rates."""

from __future__ import annotations

import json

import pytest

from peftbench.errors import UserError
from peftbench.studies.loader import load_study


def test_memory_bench_counts_less_at_each_stage_and_extends_layers_exactly(tiny_neo, tmp_path) -> None:
    from peftbench.bench.memory import STAGES, MemoryBench, bench_memory, count_at

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
    two, four, six = (count_at(bench, layers, load_study("paper"))[0] for layers in (2, 4, 6))
    assert six == {name: two[name] + 2 * (four[name] - two[name]) for name in two}


def test_memory_bench_refuses_a_model_without_gpt_neo_attention(tiny_llama) -> None:
    from peftbench.bench.memory import MemoryBench, bench_memory

    with pytest.raises(UserError, match="is a llama"):
        bench_memory(MemoryBench(str(tiny_llama), "hira", 64, 8, "fp32"), None)


def test_memory_bench_counts_a_method_that_keeps_transformers_loss(tiny_neo) -> None:
    from peftbench.bench.memory import STAGES, MemoryBench, bench_memory, count_at

    with pytest.raises(UserError, match="--method nonexistent: the paper preset has no command"):
        bench_memory(MemoryBench(str(tiny_neo), "nonexistent", 32, 4, "fp32"), None)
    counts = {
        method: count_at(MemoryBench(str(tiny_neo), method, 32, 4, "fp32"), 2, load_study("paper"))[0]
        for method in ("prefix", "lora")
    }
    assert counts["prefix"][STAGES[-1][0]] == counts["prefix"][STAGES[-2][0]]  # every position's logits, as trained
    assert counts["lora"][STAGES[-1][0]] < counts["lora"][STAGES[-2][0]]
    assert bench_memory(MemoryBench(str(tiny_neo), "prefix", 32, 4, "fp32"), None)["label_position_loss"] is False

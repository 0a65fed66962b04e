"""A tiny ConvAI2 study end to end: trained, evaluated, summarised and paged with each metric a column, the Table 2
average as 'avg', what could not be computed said so, and the paper's Table 2 rows beside ours."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from launch import InProcess
from task_files import write_convai2
from tiny import LLM_ADAPTERS

from peftbench.executors.driver import run_study
from peftbench.studies.design import EvalPlan, MethodPlan
from peftbench.studies.loader import load_study
from peftbench.studies.page import write_results
from peftbench.studies.plan import Study
from peftbench.studies.summary import SUMMARY_FILE


def test_a_dialogue_study_pages_every_metric_beside_table_2(tiny_llama: Path, tmp_path: Path) -> None:
    data = f"{write_convai2(tmp_path / 'data', episodes=2)},{LLM_ADAPTERS}"
    design = dataclasses.replace(
        load_study("hira-convai2-llama2-7b"),
        model_name=str(tiny_llama), needs_gpu=False, offline=True,
        train_settings={"max_steps": 2, "batch": 4, "grad_acc": 1, "r_ab": 4, "val_set_size": 4,
                        "eval_strategy": "no", "target_modules": "q_proj,v_proj"},
        methods=(MethodPlan("lora", 1e-2, "test"),),
        evaluations=(EvalPlan("generate", None, {"max_new_tokens": 4, "beam_size": 1, "bert_score_model": "none"}),),
    )  # fmt: skip
    study = Study(design, tmp_path / "study", (36,), data)
    run_study(study, InProcess(), "")
    page = write_results(study, tmp_path / "page" / "convai2.md", "peftbench reproduce", 1.0)

    summary = json.loads((page.parent / "convai2" / SUMMARY_FILE).read_text())
    (evaluation,) = summary["evaluations"]
    assert evaluation["task"] == "dialogue" and evaluation["methods"] == ["zero-shot", "lora"]
    assert evaluation["datasets"][:2] == ["bleu", "bleu_1"] and "avg6" not in evaluation["datasets"]
    cells = {(c["method"], c["dataset"]): c for c in evaluation["cells"]}
    result = json.loads(next((study.out / "seed-36").rglob("output_convai2_eval.jsonl")).read_text())
    assert cells[("lora", "f1")]["per_seed"] == [result["f1"]] and cells[("lora", "f1")]["ci95_per_seed"] == [
        result["f1_ci"]
    ]
    assert cells[("lora", "avg")]["mean"] is None and "needs bert_f1" in cells[("lora", "avg")]["not_computed"]
    text = page.read_text()
    assert "| method | bleu | bleu_1 |" in text and "| lora |" in text
    data = json.loads(page.with_suffix(".html").read_text().split("const PAGE = ", 1)[1].split(";</script>", 1)[0])
    assert data["measure"] == "Each metric" and {r["benchmark"] for r in data["rows"]} >= {"bleu", "meteor", "f1"}
    published = {(p["method"], p["benchmark"]): p["published"] for p in data["published"]}
    assert published[("lora", "bleu")] == 1.82 and published[("lora", "meteor")] == 11.38  # Llama-2-7B LoRA r32

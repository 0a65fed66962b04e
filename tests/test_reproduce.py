"""The reproduction study: its plan, a whole tiny study run twice (the second skips everything), its page."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from launch import InProcess

from peftbench import cli
from peftbench.analyze.stats import holm
from peftbench.cli.app import build_parser
from peftbench.cli.flags import build_config
from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.executors.base import FAILED, FINISHED, NOT_RUN
from peftbench.executors.driver import run_study
from peftbench.methods import METHODS
from peftbench.report.markdown import to_markdown
from peftbench.runs.records import read_records
from peftbench.studies.design import EvalPlan, StudyDesign
from peftbench.studies.loader import load_study
from peftbench.studies.page import accuracy_rows, render_page, verdict, write_results
from peftbench.studies.plan import STUDY_TIME_FILE, Study, describe, seeds_for
from peftbench.studies.summary import SUMMARY_FILE

CPU_SMALL, PAPER = load_study("cpu-small"), load_study("paper")


def test_every_training_command_rebuilds_its_configuration(tmp_path: Path, data_dir: str) -> None:
    study = Study(CPU_SMALL, tmp_path / "study", seeds_for(2), data_dir)
    steps = study.steps()
    trains = [s for s in steps if s.run_config is not None]
    assert [(s.run_config.peft_type, s.run_config.seed) for s in trains] == [
        (m, seed) for seed in (36, 37) for m in ("hira", "lora", "ia3", "fft")
    ]
    # Zero-shot is evaluated once for all seeds; each trained method once per seed and mode.
    evals = [s for s in steps if s.argv[0] == "eval"]
    assert len(evals) == 2 + 2 * 4 * 2 and sum("--model_name" in s.argv for s in evals) == 2
    parser = build_parser()
    lrs = {m.peft_type: m.lr for m in CPU_SMALL.methods}
    for step in trains:
        assert build_config(RunConfig, parser.parse_args(step.argv)) == step.run_config
        assert step.run_config.lr == lrs[step.run_config.peft_type]
        rank = 16 if "r_ab" in METHODS[step.run_config.peft_type].flags else None  # fft and ia3 take none
        assert step.run_config.max_train_samples == 512 and step.run_config.r_ab == rank
    for step in steps:
        parser.parse_args(step.argv)  # every printed command is a valid peftbench command


def test_methods_chooses_any_baselines_with_their_rates(capsys: pytest.CaptureFixture[str], data_dir: str) -> None:
    methods = "hira,dora,vera,prefix"
    assert cli.main(["reproduce", "--methods", methods, "--dry_run", "--data_dir", data_dir]) == 0
    plan = capsys.readouterr().out
    trains = [line for line in plan.splitlines() if line.startswith("peftbench train")]
    assert [t.split("--peft_type ")[1].split()[0] for t in trains] == methods.split(",")
    assert "# learning rate of dora: 0.0002 (DoRA" in plan and "# learning rate of prefix: 0.01 (PEFT" in plan
    prefix = next(t for t in trains if "--peft_type prefix" in t)
    assert "--r_ab" not in prefix and "--target_modules" not in prefix  # the budget's method flags it lacks
    assert "--r_ab 16" in next(t for t in trains if "--peft_type dora" in t)
    paper = Study(PAPER, Path("study"), (36,), data_dir, PAPER.choose_methods("vera,lokr"))
    vera, lokr = (step.run_config for step in paper.steps() if step.run_config is not None)
    assert (vera.r_ab, lokr.r_ab, lokr.grad_acc) == (256, 64, 32)  # VeRA keeps its own rank
    with pytest.raises(UserError, match="no learning rate for nope in study cpu-small"):
        CPU_SMALL.choose_methods("lora,nope")


def test_paper_preset_prints_the_specification_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["reproduce", "--preset", "paper", "--dry_run"]) == 0
    plan = capsys.readouterr().out
    trains = [line for line in plan.splitlines() if line.startswith("peftbench train")]
    assert len(trains) == 4 and all("--model_name EleutherAI/gpt-neo-1.3B --dataset common_170k" in t for t in trains)
    hira = next(t for t in trains if "--peft_type hira" in t)
    for flag in ("--r_ab 64", "--batch 8", "--grad_acc 32", "--lr 5e-05", "--warmup 100", "--enable_grad_ckpt"):
        assert flag in hira
    assert "--grad_acc 64" in next(t for t in trains if "--peft_type fft" in t)
    ia3 = next(t for t in trains if "--peft_type ia3" in t)
    assert "--eval_strategy" not in ia3 and "--warmup" not in ia3  # as the specification's IA3 command
    assert all("--protocol hira" in t for t in trains)
    generation = [line for line in plan.splitlines() if "--eval_mode generate" in line]
    # Decoding is the protocol's: beam 4, 16 new tokens (no flag needed), deterministic.
    assert len(generation) == 5 and all("--dataset all" in g and "--max_new_tokens" not in g for g in generation)
    assert "peftbench bench protocol" in plan and "Protocol hira" in plan
    assert "sample" not in plan.replace("--max_eval_samples", "").replace("samples/s", "")  # no sampling claim


def test_paper_preset_without_a_gpu_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["reproduce", "--preset", "paper"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: study paper needs a CUDA GPU") and "\n" not in error
    assert cli.main(["reproduce", "--seeds", "0", "--dry_run"]) == 2


def test_each_finished_step_adds_its_time_to_the_study_before_the_next_starts(tmp_path: Path, data_dir: str) -> None:
    on_disk = []

    def step(argv: list[str]) -> int:
        if (tmp_path / STUDY_TIME_FILE).exists():
            on_disk.append(json.loads((tmp_path / STUDY_TIME_FILE).read_text())["wall_time_s"])
        time.sleep(0.3)
        return 1 if len(on_disk) == 2 else 0  # the third step fails; the others go on

    design = CPU_SMALL.with_overrides(eval_modes="loglik")
    outcomes, total = run_study(
        Study(design, tmp_path, (36,), data_dir, design.choose_methods("lora")), InProcess(step), ""
    )
    assert [o.state for o in outcomes] == [FINISHED, FINISHED, FAILED, NOT_RUN]  # zero-shot, train, eval, analysis
    # A study killed during its third step keeps the first two steps' time.
    assert on_disk[:2] == [pytest.approx(0.3, abs=0.1), pytest.approx(0.6, abs=0.1)]
    assert json.loads((tmp_path / STUDY_TIME_FILE).read_text())["wall_time_s"] == pytest.approx(total, abs=0.1)


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def _tiny_preset(model: Path) -> StudyDesign:
    train = {"max_train_samples": 40, "val_set_size": 8, "batch": 8, "r_ab": 4, "eval_steps": 2, "logging_steps": 1,
             "target_modules": "q_proj,v_proj,down_proj", "max_length": 128, "eval_strategy": "steps"}  # fmt: skip
    methods = tuple(dataclasses.replace(m, lr=m.lr * 10) for m in CPU_SMALL.methods)
    # Two variants of one method, as the HiRA paper's studies have: the study names them apart.
    methods += (dataclasses.replace(methods[0], label="hira-r2", train_settings={"r_ab": 2}),)
    return dataclasses.replace(
        CPU_SMALL,
        model_name=str(model),
        train_settings=train,
        methods=methods,
        benchmarks="boolq,arc_challenge",
        evaluations=(EvalPlan("loglik", 12), EvalPlan("generate", 3, {"beam_size": 2, "max_new_tokens": 4})),
    )


@pytest.fixture(scope="module")
def tiny_study(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory, data_dir: str) -> tuple[Study, Path]:
    study = Study(_tiny_preset(tiny_llama), tmp_path_factory.mktemp("study"), (36, 37), data_dir)
    run_study(study, InProcess(), "")
    page = write_results(study, study.out / "page" / "tiny.md", "peftbench reproduce --preset tiny", 1.0)
    return study, page


def _result(folder: Path, mode: str, dataset: str) -> dict:
    suffix = "_loglik" if mode == "loglik" else ""
    return read_records(next(folder.rglob(f"output_{dataset}{suffix}_eval.jsonl")))[-1]


def test_summary_numbers_come_from_the_result_records(tiny_study: tuple[Study, Path]) -> None:
    study, page = tiny_study
    summary = json.loads((page.parent / "tiny" / SUMMARY_FILE).read_text())
    for evaluation in summary["evaluations"]:
        mode = evaluation["mode"]
        assert evaluation["methods"] == ["zero-shot", "hira-r2", "hira", "lora", "fft", "ia3"]  # the study's names
        assert evaluation["datasets"] == ["boolq", "arc_challenge"]
        cells = {(c["method"], c["dataset"]): c for c in evaluation["cells"]}
        for seed in study.seeds:
            for method in evaluation["methods"]:
                folder = study.zero_shot_folder if method == "zero-shot" else study.results_folder(seed, method)
                for dataset in evaluation["datasets"]:
                    cell = cells[(method, dataset)]
                    assert cell["per_seed"][study.seeds.index(seed)] == _result(folder, mode, dataset)["accuracy"]
        for method in evaluation["methods"]:
            cell = cells[(method, "avg")]
            assert cell["mean"] == pytest.approx(sum(cell["per_seed"]) / 2)
            per_dataset = [cells[(method, d)]["per_seed"] for d in evaluation["datasets"]]
            assert cell["per_seed"] == pytest.approx([sum(v) / 2 for v in zip(*per_dataset, strict=True)])
        assert cells[("zero-shot", "boolq")]["std"] == 0.0  # the untrained model is evaluated once
        assert len(evaluation["paired_tests"]) == 2 * 5 * 2  # 2 seeds x 5 methods against LoRA x 2 datasets
    for method in summary["methods"]:
        for run in method["runs"]:
            record = read_records(study.out / run["run"] / "output.jsonl")[-1]
            assert record["event"] == "train_end" and run["train_time_s"] == record["train_time_s"]
            assert run["peak_memory_gb"] == record["peak_rss_gb"] and run["steps"] == 5  # 40 examples, batch 8
            assert run["loss_history"][0]["loss"] > 0
    runs = {m["method"]: m["runs"][0] for m in summary["methods"]}
    base = runs["fft"]["total_params"]  # every parameter of the base model trains in FFT
    assert runs["fft"]["trainable_params"] == base > runs["hira"]["trainable_params"] > runs["ia3"]["trainable_params"]
    for adapter in ("hira", "lora", "ia3"):
        assert runs[adapter]["total_params"] - runs[adapter]["trainable_params"] == base


def test_page_is_rendered_from_the_summary_with_plots(tiny_study: tuple[Study, Path]) -> None:
    study, page = tiny_study
    summary = json.loads((page.parent / "tiny" / SUMMARY_FILE).read_text())
    text = page.read_text()
    assert text == render_page(summary, "tiny")
    loglik = summary["evaluations"][0]
    hira_avg = next(c for c in loglik["cells"] if c["method"] == "hira" and c["dataset"] == "avg")
    assert f"{100 * hira_avg['mean']:.1f} ± {100 * hira_avg['std']:.1f}" in text  # two seeds: mean ± std
    assert "`--seeds 3` therefore needs about" in text and summary["environment"]["git_revision"] in text
    # Its interactive twin, and each analysis's, hold the same numbers as data.
    analysis = study.analysis_folder(36, "loglik") / "report.html"
    for html, hira in ((page.with_suffix(".html"), {"hira-r2", "hira"}), (analysis, {"hira (r=2)", "hira (r=4)"})):
        data = json.loads(html.read_text().split("const PAGE = ", 1)[1].split(";</script>", 1)[0])
        assert {row["method"] for row in data["rows"]} == {"zero-shot", "lora", "fft", "ia3", *hira}
    loglik_avg = next(r for r in json.loads(page.with_suffix(".html").read_text().split("const PAGE = ", 1)[1]
                      .split(";</script>", 1)[0])["rows"] if r["method"] == "hira" and r["benchmark"] == "avg"
                      and r["mode"] == "loglik")  # fmt: skip
    assert loglik_avg["accuracy"] == hira_avg["mean"] and len(loglik_avg["seeds"]) == 2
    for image in ("accuracy-loglik.png", "accuracy-generate.png", "loss_curves.png"):
        assert (page.parent / "tiny" / image).read_bytes().startswith(b"\x89PNG")
        assert f"tiny/{image}" in text


def test_a_rerun_skips_every_finished_part(tiny_study: tuple[Study, Path]) -> None:
    study, _ = tiny_study
    results = sorted(study.out.rglob("output_*_eval.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in results]
    runs = sorted(p.parent for p in study.out.rglob("output.jsonl"))
    first_time = json.loads((study.out / STUDY_TIME_FILE).read_text())["wall_time_s"]
    _, total = run_study(study, InProcess(), "")
    assert sorted(p.parent for p in study.out.rglob("output.jsonl")) == runs and len(runs) == 10
    assert [p.stat().st_mtime_ns for p in results] == stamps
    # The study's time adds up over invocations: the rerun's few seconds go on top of the first run's.
    assert first_time < total < first_time + 30


def _evaluation(tests: list[dict], averages: dict[str, float]) -> dict:
    cells = [{"method": m, "dataset": "avg", "mean": a} for m, a in averages.items()]
    return {"paired_tests": tests, "cells": cells}


def test_verdict_says_within_noise_only_when_no_test_survives_holm() -> None:
    calm = {"seed": 36, "method": "hira", "dataset": "boolq", "difference": 0.02, "p": 0.04, "p_holm": 0.3}
    untrained = {**calm, "method": "zero-shot", "difference": -0.4, "p": 1e-4, "p_holm": 3e-4}
    averages = {"zero-shot": 0.30, "hira": 0.355, "lora": 0.34}
    text = verdict(_evaluation([calm, untrained], averages), [36])
    assert "No trained method differs from lora" in text and "within noise" in text
    assert "The untrained model differs from lora at p < 0.05" in text and "boolq: -40.0 points" in text
    assert "in points: hira +5.5, lora +4.0." in text
    sharp = {**calm, "p": 1e-5, "p_holm": 2e-5, "difference": 0.25}
    text = verdict(_evaluation([sharp], averages), [36])
    assert "within noise" not in text and "hira on boolq: +25.0 points" in text


def test_render_only_rewrites_the_page_from_its_summary(tiny_study: tuple[Study, Path]) -> None:
    _, page = tiny_study
    before = page.read_text()
    page.unlink()
    (page.parent / "tiny" / "loss_curves.png").unlink()
    assert cli.main(["reproduce", "--render_only", "--page", str(page)]) == 0
    assert page.read_text() == before and (page.parent / "tiny" / "loss_curves.png").is_file()
    assert cli.main(["reproduce", "--render_only", "--page", str(page.parent / "none.md")]) == 2
    note = "Times were measured while another job shared the machine."
    assert cli.main(["reproduce", "--render_only", "--page", str(page), "--note", note]) == 0
    assert f"> **Note.** {note}" in page.read_text().split("## ")[0]  # under the title, before the results
    assert json.loads((page.parent / "tiny" / SUMMARY_FILE).read_text())["notes"] == [note]


COMMITTED_PAGE = Path(__file__).resolve().parents[1] / "docs" / "results" / "cpu-small.md"


def test_committed_results_page_equals_its_committed_summary() -> None:
    summary = json.loads((COMMITTED_PAGE.with_suffix("") / SUMMARY_FILE).read_text())
    page = COMMITTED_PAGE.read_text()
    assert page == render_page(summary, "cpu-small")
    assert summary["preset"] == "cpu-small" and summary["seeds"] == [36]
    for evaluation in summary["evaluations"]:
        cells = {(c["method"], c["dataset"]): c for c in evaluation["cells"]}
        for row in accuracy_rows(evaluation, 1)[1:]:
            line = "| " + " | ".join(row) + " |"
            assert line in page
            method, *shown = row
            for dataset, text in zip([*evaluation["datasets"], "avg"], shown, strict=True):
                assert float(text.split(" [")[0]) == round(100 * cells[(method, dataset)]["mean"], 1)
    readme = (COMMITTED_PAGE.parents[2] / "README.md").read_text()
    assert to_markdown(accuracy_rows(summary["evaluations"][0], 1)) in readme and "docs/results/cpu-small.md" in readme


def test_paper_preset_trains_prefix_tuning_without_the_checkpointing_it_refuses_and_says_so() -> None:
    study = Study(PAPER, Path("unused"), (36,), "data", PAPER.choose_methods("prefix,lora"))
    settings = {m.peft_type: study.train_settings(36, m.peft_type) for m in study.plans}
    assert "enable_grad_ckpt" not in settings["prefix"] and settings["lora"]["enable_grad_ckpt"] is True
    assert RunConfig(**settings["prefix"]).enable_grad_ckpt is False  # a valid configuration, not an error
    assert "# prefix trains without --enable_grad_ckpt: gradient checkpointing drops" in describe(study)
    assert "# lora trains without" not in describe(study)

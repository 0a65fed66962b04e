"""Studies as files: the shipped ones, validation in one line, overrides, dependencies, executors' scheduling."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import pytest

import peftbench.executors.local as local
from peftbench import cli
from peftbench.config import RunConfig
from peftbench.executors import FAILED, FINISHED, NOT_RUN, run_when_ready, summary
from peftbench.executors.local import LocalExecutor
from peftbench.published import published_rows
from peftbench.reproduce import Step, Study
from peftbench.studies import load_study, shipped_studies

GOLDEN = Path(__file__).parent / "golden"
EIGHT = "boolq,piqa,siqa,hellaswag,winogrande,arc_easy,arc_challenge,obqa"


@pytest.mark.parametrize("name", ["cpu-small", "paper"])
def test_the_shipped_study_files_print_the_commands_of_the_presets_they_replace(name, capsys) -> None:
    """The golden files are the presets' --dry_run output before they became files (with the default data folder)."""
    data = ["--data_dir", "data_file/llm_adapt"]
    assert cli.main(["reproduce", name, "--dry_run", *data]) == 0
    assert capsys.readouterr().out == (GOLDEN / f"reproduce-{name}.txt").read_text()
    assert cli.main(["reproduce", "--preset", name, "--dry_run", *data]) == 0  # --preset keeps working
    assert capsys.readouterr().out == (GOLDEN / f"reproduce-{name}.txt").read_text()


@pytest.mark.parametrize("name", ["hira-llama2-7b", "hira-llama3-8b"])
def test_the_hira_papers_studies_name_its_settings_and_the_published_rows_they_reproduce(name) -> None:
    design = load_study(name)
    assert design.model_name.startswith("meta-llama/") and design.benchmarks == EIGHT and design.needs_gpu
    assert [m.name for m in design.methods] == ["prompt", "lora", "dora", "hira-r16", "hira-r32"]
    study = Study(design, Path("study"), (36,), "data")
    runs = {m.name: study.train_settings(36, m.name) for m in design.methods}
    assert (runs["hira-r16"]["r_ab"], runs["hira-r32"]["r_ab"], runs["lora"]["r_ab"]) == (16, 32, 32)
    for settings in runs.values():
        assert (settings["epoch"], settings["batch"] * settings["grad_acc"], settings["warmup"]) == (3.0, 32, 100)
        assert (settings["weight_decay"], settings["eval_steps"], settings["val_set_size"]) == (0.0, 80, 120)
    assert runs["lora"]["target_modules"] == "q_proj,k_proj,v_proj,up_proj,down_proj"
    assert "target_modules" not in runs["prompt"] and runs["prompt"]["virtual_tokens"] == 20
    assert runs["hira-r32"]["lr"] == 1e-3 and "1e-3" in design.methods[-1].lr_source
    assert "MoRA" in " ".join(design.differences) and "P-Tuning" in " ".join(design.differences)
    rows = published_rows(design.published.source, design.published.model)
    for method, rank in design.published.rows.values():
        assert len([r for r in rows if (r.method, r.rank) == (method, rank)]) == 1, (method, rank)


def test_every_shipped_study_is_valid_and_dry_runs() -> None:
    assert set(shipped_studies()) == {"cpu-small", "paper", "hira-llama2-7b", "hira-llama3-8b"}
    for name in shipped_studies():
        assert cli.main(["reproduce", name, "--dry_run", "--seeds", "2"]) == 0


STUDY = """\
summary: a tiny study
model: smollm2-135m
budget: {max_train_samples: 16, r_ab: 4}
methods:
- {method: lora, lr: 3e-4, lr_source: LLM-Adapters}
- {method: ia3, lr: 3e-3, lr_source: T-Few}
evaluations:
- {mode: loglik, samples: 4}
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("summary:", "sumary:"), "sumary: unknown key; allowed: name, summary"),
        (("{max_train_samples: 16", "{max_train_samples: many"), "budget.max_train_samples: expected int, got 'many'"),
        (("{max_train_samples: 16", "{batchsize: 16"), "budget.batchsize: unknown key; allowed: protocol, r_ab"),
        (("method: ia3", "method: ia4"), "methods[1].method: unknown method 'ia4'; allowed: hira, lora"),
        (("lr: 3e-3", "lr: fast"), "methods[1].lr: expected float, got 'fast'"),
        (("mode: loglik", "mode: vote"), "evaluations[0].mode: unknown mode 'vote'; allowed: generate, loglik"),
        (("model: smollm2-135m", "model: smollm2-135m\nbenchmarks: boolq,mmlu"), "benchmarks: unknown dataset"),
        (("method: ia3", "method: lora"), "methods: lora is listed twice; give variants of one method a name each"),
        (("{max_train_samples: 16, r_ab: 4}", "{max_train_samples: 16, r_ab: -4}"), "methods[0] (lora): --r_ab"),
        (("summary: a tiny study", "summary: a: tiny study"), "not valid YAML at line 1"),
        (("- {mode: loglik, samples: 4}", "- {mode: loglik}\n- {mode: loglik}"), "loglik is listed twice"),
        (("lr: 3e-3", "lr: .nan"), "methods[1] (ia3): --lr must be a positive number, got nan"),
        (("samples: 4", "samples: 0"), "evaluations[0]: --max_eval_samples must be positive"),
        (("lr_source: T-Few}", "lr_source: T-Few, name: ../up}"), "methods[1].name: '../up': use letters"),
        (
            ("summary:", "published: {source: hira_iclr2025_table1, model: Llama-2-7B, rows: [lora]}\nsummary:"),
            "published.rows: expected a mapping",
        ),
        (
            (
                "summary:",
                "published: {source: hira_iclr2025_table1, model: Llama-2-7B, rows: {lora: {method: LoRA, "
                "rank: 8}}}\nsummary:",
            ),
            "published.rows.lora: hira_iclr2025_table1 has no Llama-2-7B LoRA r8",
        ),
        (("summary:", "slurm: {time_min: 0}\nsummary:"), "slurm.time_min: expected at least 1, got 0"),
    ],
)
def test_a_bad_study_file_is_one_error_line_naming_the_file_and_the_key(change, message, tmp_path, capsys) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(STUDY.replace(*change))
    assert cli.main(["reproduce", str(path), "--dry_run"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"error: {path}: ") and message in error, error


def test_a_study_file_of_ones_own_runs_and_the_common_knobs_override_it(tmp_path, capsys) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(STUDY)
    flags = ["--model_name", "other-model", "--methods", "ia3", "--seeds", "2", "--max_train_samples", "8",
             "--max_eval_samples", "3", "--datasets", "boolq,piqa", "--eval_modes", "loglik"]  # fmt: skip
    assert cli.main(["reproduce", str(path), "--dry_run", *flags]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("peftbench")]
    trains = [c for c in commands if c.startswith("peftbench train")]
    assert len(trains) == 2 and all("--peft_type ia3 --model_name other-model" in t for t in trains)
    assert all("--max_train_samples 8" in t for t in trains) and "--seed 37" in trains[1]
    evals = [c for c in commands if c.startswith("peftbench eval")]
    assert len(evals) == 3 and all("--dataset boolq,piqa --eval_mode loglik --max_eval_samples 3" in e for e in evals)
    assert cli.main(["reproduce", str(path), "--dry_run", "--eval_modes", "generate"]) == 2
    assert "evaluates by loglik" in capsys.readouterr().err


def test_each_step_needs_what_it_reads() -> None:
    design = load_study("cpu-small").with_overrides(eval_modes="loglik")
    steps = {s.id: s for s in Study(design, Path("s"), (36,), "d", design.choose_methods("lora,ia3")).steps()}
    assert steps["zero-shot.eval-loglik"].needs == ()
    assert steps["seed-36.lora.train"].needs == ()
    assert steps["seed-36.lora.eval-loglik"].needs == ("seed-36.lora.train",)
    assert steps["seed-36.analysis-loglik"].needs == ("zero-shot.eval-loglik", "seed-36.lora.eval-loglik",
                                                      "seed-36.ia3.eval-loglik")  # fmt: skip
    assert not any(step.gpu for step in steps.values())  # a CPU study
    paper = load_study("paper")
    gpu = {s.id: s.gpu for s in Study(paper, Path("s"), (36,), "d").steps()}
    assert gpu["seed-36.hira.train"] and gpu["seed-36.hira.eval-generate"] and not gpu["seed-36.analysis-generate"]


def _steps() -> list[Step]:
    return [Step("a.train", "a training", ("train",)), Step("b.train", "b training", ("train", "--bad")),
            Step("a.eval", "a evaluation", ("eval",), ("a.train",)),
            Step("b.eval", "b evaluation", ("eval",), ("b.train",)),
            Step("analysis", "analysis", ("analyze",), ("a.eval", "b.eval"))]  # fmt: skip


def test_a_failed_step_stops_only_what_needs_it_and_the_summary_says_how_to_go_on(tmp_path) -> None:
    started = []

    def start(step: Step) -> concurrent.futures.Future[int]:
        started.append(step.id)
        (tmp_path / f"{step.id}.log").write_text("loading\nerror: --bad is not a flag\n")
        future = concurrent.futures.Future()
        future.set_result(2 if "--bad" in step.argv else 0)
        return future

    ended = []
    outcomes = run_when_ready(_steps(), start, tmp_path, ended.append, limit=2)
    states = {o.step.id: o.state for o in outcomes}
    assert states == {"a.train": FINISHED, "b.train": FAILED, "a.eval": FINISHED, "b.eval": NOT_RUN,
                      "analysis": NOT_RUN}  # fmt: skip
    assert set(started) == {"a.train", "b.train", "a.eval"} and len(ended) == 5
    text = summary(outcomes, "peftbench reproduce mine.yaml")
    assert "2 finished, 0 finished before, 1 failed, 2 not run" in text
    assert "FAILED b training (exit status 2): peftbench train --bad" in text and "error: --bad is not a flag" in text
    assert "NOT RUN analysis: needs b.eval, which did not finish" in text
    assert text.endswith("to run what is missing (finished steps are skipped): peftbench reproduce mine.yaml")


def test_local_gpus_run_one_step_per_gpu_at_once_each_seeing_its_own(tmp_path, monkeypatch) -> None:
    seen, lock, busy = [], threading.Lock(), set()

    def fake_run(argv, log, environment):  # noqa: ANN001, ANN202
        gpu = environment.get("CUDA_VISIBLE_DEVICES")
        with lock:
            assert gpu == "" or gpu not in busy  # never two steps on one GPU
            busy.add(gpu)
            seen.append((argv[0], gpu))
        time.sleep(0.05)
        with lock:
            busy.discard(gpu)
        return 0

    monkeypatch.setattr(local, "run_command", fake_run)
    steps = [Step(f"{i}.train", "t", ("train",), gpu=True) for i in range(6)] + [
        Step("analysis", "a", ("analyze",), tuple(f"{i}.train" for i in range(6)))
    ]
    outcomes = LocalExecutor(gpus=["2", "5"]).run(steps, tmp_path, lambda outcome: None)
    assert all(o.state == FINISHED for o in outcomes)
    assert sorted(gpu for kind, gpu in seen if kind == "train") == ["2"] * 3 + ["5"] * 3
    assert ("analyze", "") in seen  # analysis sees no GPU


def test_a_study_flag_set_false_reaches_its_command(tmp_path, capsys) -> None:
    """A bool a protocol or "auto" leaves open (default None) needs --no-NAME to be false."""
    path = tmp_path / "mine.yaml"
    path.write_text(
        STUDY.replace("{max_train_samples: 16, r_ab: 4}", "{max_train_samples: 16, r_ab: 4, packing: false}")
    )
    design = load_study(str(path))
    for step in Study(design, tmp_path, (36,), "d").steps():
        if step.run_config is not None:
            assert "--no-packing" in step.argv and step.run_config.packing is False
            parsed = cli.build_config(RunConfig, cli.build_parser().parse_args(step.argv))
            assert parsed == step.run_config


def test_a_gpu_study_with_several_local_workers_needs_a_gpu_each(tmp_path, capsys) -> None:
    path = tmp_path / "gpu.yaml"
    path.write_text(STUDY.replace("summary:", "needs_gpu: true\nsummary:"))
    assert cli.main(["reproduce", str(path), "--workers", "2", "--out", str(tmp_path / "out")]) == 2
    assert "--workers 2 would put 2 GPU steps on one GPU" in capsys.readouterr().err

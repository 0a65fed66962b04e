"""Studies as files: the shipped ones, validation in one line, overrides, dependencies, executors' scheduling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_study import TINY_STUDY

from peftbench import cli
from peftbench.cli.app import build_parser
from peftbench.cli.flags import build_config
from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.published import published_rows
from peftbench.studies.loader import SHIPPED, load_study, shipped_studies
from peftbench.studies.plan import Study, describe

GOLDEN = Path(__file__).parents[1] / "golden"
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
    assert [m.name for m in design.methods] == ["prompt", "ptuning", "lora", "dora", "mora", "hira-r16", "hira-r32"]
    study = Study(design, Path("study"), (36,), "data")
    runs = {m.name: study.train_settings(36, m.name) for m in design.methods}
    assert (runs["hira-r16"]["r_ab"], runs["hira-r32"]["r_ab"], runs["lora"]["r_ab"], runs["mora"]["r_ab"]) == (
        16,
        32,
        32,
        32,
    )
    assert runs["mora"]["mora_type"] == 6 and runs["ptuning"]["virtual_tokens"] == 20
    for settings in runs.values():
        assert (settings["epoch"], settings["batch"] * settings["grad_acc"], settings["warmup"]) == (3.0, 32, 100)
        assert (settings["weight_decay"], settings["eval_steps"], settings["val_set_size"]) == (0.0, 80, 120)
    assert runs["lora"]["target_modules"] == "q_proj,k_proj,v_proj,up_proj,down_proj"
    assert "target_modules" not in runs["prompt"] and runs["prompt"]["virtual_tokens"] == 20
    assert runs["hira-r32"]["lr"] == 1e-3 and "1e-3" in design.methods[-1].lr_source
    rows = published_rows(design.published.source, design.published.model)
    for method, rank in design.published.rows.values():
        assert len([r for r in rows if (r.method, r.rank) == (method, rank)]) == 1, (method, rank)
    # Every row of the paper's table for this model has a run of ours beside it.
    assert {(r.method, r.rank) for r in rows} == set(design.published.rows.values())


def test_every_shipped_study_is_valid_and_dry_runs() -> None:
    tasks = {f"hira-{task}-{model}" for task in ("math", "convai2") for model in ("llama2-7b", "llama3-8b")}
    assert set(shipped_studies()) == {"cpu-small", "paper", "hira-llama2-7b", "hira-llama3-8b", *tasks}
    for name in shipped_studies():
        assert cli.main(["reproduce", name, "--dry_run", "--seeds", "2"]) == 0


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
    path.write_text(TINY_STUDY.replace(*change))
    assert cli.main(["reproduce", str(path), "--dry_run"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"error: {path}: ") and message in error, error


def test_a_study_file_of_ones_own_runs_and_the_common_knobs_override_it(tmp_path, capsys) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(TINY_STUDY)
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


def test_a_study_flag_set_false_reaches_its_command(tmp_path, capsys) -> None:
    """A bool a protocol or "auto" leaves open (default None) needs --no-NAME to be false."""
    path = tmp_path / "mine.yaml"
    path.write_text(
        TINY_STUDY.replace("{max_train_samples: 16, r_ab: 4}", "{max_train_samples: 16, r_ab: 4, packing: false}")
    )
    design = load_study(str(path))
    for step in Study(design, tmp_path, (36,), "d").steps():
        if step.run_config is not None:
            assert "--no-packing" in step.argv and step.run_config.packing is False
            parsed = build_config(RunConfig, build_parser().parse_args(step.argv))
            assert parsed == step.run_config


TASK_STUDIES = {  # study -> (training set, benchmark, epochs, published source)
    "hira-math-llama3-8b": ("metamath", "gsm8k", 2.0, "hira_iclr2025_table3"),
    "hira-math-llama2-7b": ("metamath", "gsm8k", 2.0, "hira_iclr2025_table3"),
    "hira-convai2-llama3-8b": ("convai2", "convai2", 1.0, "hira_iclr2025_table2"),
    "hira-convai2-llama2-7b": ("convai2", "convai2", 1.0, "hira_iclr2025_table2"),
}


@pytest.mark.parametrize("name", TASK_STUDIES)
def test_the_math_and_dialogue_studies_keep_table_1s_settings_and_answer_every_published_row(name: str) -> None:
    dataset, benchmark, epochs, source = TASK_STUDIES[name]
    design, base = load_study(name), load_study(name.replace("-math", "").replace("-convai2", ""))
    assert (design.name, design.dataset, design.benchmarks, design.published.source) == (name, dataset, benchmark,
                                                                                          source)  # fmt: skip
    assert [e.mode for e in design.evaluations] == ["generate"]  # no options for log-likelihood to score
    assert design.methods == base.methods and design.model_name == base.model_name and design.slurm == base.slurm
    assert design.train_settings == {**base.train_settings, "epoch": epochs}  # only the epochs differ (section 5.2)
    rows = published_rows(source, design.published.model)
    assert {(r.method, r.rank) for r in rows} == set(design.published.rows.values())  # every row has a run
    plan = describe(Study(design, Path("study"), (36,), "data"))
    for ours in design.published.rows:
        assert re.search(rf"^# published {source}: .* <- run {re.escape(ours)}$", plan, re.MULTILINE), ours


def test_extends_merges_the_budget_and_refuses_a_cycle(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text((SHIPPED / "cpu-small.yaml").read_text())
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nsummary: a child\nbudget:\n  epoch: 2.0\n")
    design, parent = load_study(str(child)), load_study(str(base))
    assert design.name == "child" and design.summary == "a child" and design.methods == parent.methods
    assert design.train_settings == {**parent.train_settings, "epoch": 2.0}
    base.write_text("extends: child.yaml\n" + base.read_text())
    with pytest.raises(UserError, match="extends: child.yaml extends this study again"):
        load_study(str(child))


def test_a_published_source_of_another_task_is_refused(tmp_path: Path) -> None:
    text = (SHIPPED / "hira-math-llama3-8b.yaml").read_text().replace("hira_iclr2025_table3", "hira_iclr2025_table2")
    path = tmp_path / "study.yaml"
    path.write_text(text.replace("extends: hira-llama3-8b", f"extends: {SHIPPED / 'hira-llama3-8b.yaml'}"))
    with pytest.raises(UserError, match="published.source: hira_iclr2025_table2 holds dialogue results; the study "
                                        "evaluates math \\(gsm8k\\)"):  # fmt: skip
        load_study(str(path))


def test_extends_names_its_file_when_the_base_is_missing_and_a_protocol_that_cannot_score_is_refused(
    tmp_path: Path,
) -> None:
    child = tmp_path / "child.yaml"
    child.write_text("extends: no-such-study\nsummary: a child\n")
    with pytest.raises(UserError, match=f"{child}: extends: unknown study 'no-such-study'"):
        load_study(str(child))
    aqua = f"extends: {SHIPPED / 'cpu-small.yaml'}\nsummary: AQuA\nprotocol: hira\nbenchmarks: aqua\n"
    (tmp_path / "aqua.yaml").write_text(aqua + "evaluations:\n- mode: generate\n")
    with pytest.raises(UserError, match="aqua's answers \\(letter\\) have no official scorer under protocol 'hira'"):
        load_study(str(tmp_path / "aqua.yaml"))

"""Several processes (torchrun, gloo on CPU): each execution of a run trains and validates the same model.

Marked ``distributed``: ``make test-distributed`` runs this tier (CI too); ``make test`` leaves it out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import ROOT, finish, flags, records, torchrun, train_hira
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed


def _train(folder: Path, args: list[str], processes: int = 1, env: dict[str, str] | None = None) -> Path:
    """The run folder of train_hira.py with ``args``, in one process or under torchrun."""
    folder.mkdir(parents=True)
    if processes == 1:
        code, stderr = finish(train_hira(args, folder, env=env))
    else:
        result = torchrun([str(ROOT / "train_hira.py"), *args], folder, processes, env)
        code, stderr = result.returncode, result.stderr
    assert code == 0, stderr[-4000:]
    (run,) = (folder / "results").iterdir()  # one folder, made by process 0
    assert records(run)[0]["processes"] == processes
    return run


def _assert_same_weights(ours: Path, theirs: Path, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    ours_weights, their_weights = load_file(ours), load_file(theirs)
    assert ours_weights.keys() == their_weights.keys()
    for name, value in their_weights.items():
        torch.testing.assert_close(ours_weights[name], value, rtol=rtol, atol=atol)


# LoRA; prefix tuning (PEFT's prompt encoder outside the model); AdaLoRA (its penalty once per step, its rank
# allocation from synchronised gradients); MoRA (one module under two names); P-Tuning (an MLP outside the model).
DDP_CASES = {
    "lora": {"lora_dropout": 0.0},
    "prefix": {"r_ab": None, "virtual_tokens": 4, "lr": 3e-2},
    "adalora": {"lora_dropout": 0.0},
    "mora": {"lora_dropout": 0.0},
    "ptuning": {"r_ab": None, "virtual_tokens": 4, "lr": 1e-2},
}


@pytest.mark.parametrize("method", DDP_CASES)
def test_two_processes_reach_the_weights_of_one_process_with_the_doubled_batch(method, tiny_neo, data_dir, tmp_path):
    common = {"peft_type": method, **DDP_CASES[method], "max_steps": 6, "max_train_samples": 96, "eval_steps": 6}
    single = _train(tmp_path / "single", flags(tiny_neo, data_dir, batch=8, **common))
    ddp = _train(tmp_path / "ddp", flags(tiny_neo, data_dir, batch=4, **common), processes=2)
    _assert_same_weights(ddp / "checkpoint-6" / "adapter_model.safetensors",
                         single / "checkpoint-6" / "adapter_model.safetensors")  # fmt: skip


def test_adalora_reaches_the_same_weights_at_any_micro_batch_and_process_count(tiny_neo, data_dir, tmp_path):
    """PEFT adds AdaLoRA's penalty to every forward's loss: it weighed grad_acc × processes times before."""
    common = {"peft_type": "adalora", "lora_dropout": 0.0, "r_ab": 4, "lr": 1e-3, "max_steps": 3, "grad_acc": 4,
              "max_train_samples": 96, "eval_steps": 3}  # fmt: skip
    runs = {
        "8 × 4": _train(tmp_path / "8x4", flags(tiny_neo, data_dir, batch=8, micro_batch="spec", **common)),
        "32 × 1": _train(tmp_path / "32", flags(tiny_neo, data_dir, batch=8, micro_batch=32, **common)),
        "2 × (4 × 4)": _train(tmp_path / "ddp", flags(tiny_neo, data_dir, batch=4, micro_batch="spec", **common), 2),
    }
    reference = runs["32 × 1"] / "checkpoint-3" / "adapter_model.safetensors"
    for run in runs.values():
        _assert_same_weights(run / "checkpoint-3" / "adapter_model.safetensors", reference, rtol=1e-5, atol=1e-6)


def test_validation_over_two_processes_equals_one_process(tiny_neo, data_dir, tmp_path):
    """7 validation examples: neither the batch (2 per process) nor the 2 processes divide them."""
    common = {"lora_dropout": 0.0, "max_steps": 3, "max_train_samples": 96, "val_set_size": 7, "eval_steps": 1,
              "lr": 5e-2}  # fmt: skip
    single = _train(tmp_path / "single", flags(tiny_neo, data_dir, batch=4, **common))
    ddp = _train(tmp_path / "ddp", flags(tiny_neo, data_dir, batch=2, **common), processes=2)

    def validations(run: Path) -> list[dict]:
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        return [entry for entry in history if "eval_loss" in entry]

    ours, theirs = validations(ddp), validations(single)
    assert [e["step"] for e in ours] == [e["step"] for e in theirs] == [1, 2, 3]
    assert [e["eval_label_tokens"] for e in ours] == [e["eval_label_tokens"] for e in theirs]
    assert [e["eval_batches_without_labels"] for e in ours] == [0, 0, 0]
    for key in ("eval_loss", "eval_answer_loss"):  # duplicated examples moved eval_loss by 6e-4 before
        assert [e[key] for e in ours] == pytest.approx([e[key] for e in theirs], rel=1e-5)
    assert records(ddp)[-1]["best_checkpoint"].endswith(Path(records(single)[-1]["best_checkpoint"]).name)


def test_evaluation_sharded_over_two_processes_equals_one_process(tiny_llama, data_dir, tmp_path):
    def evaluate(processes: int, folder: Path, mode: str) -> list[dict]:
        args = ["eval", f"--model_name={tiny_llama}", f"--output_dir={folder}", "--dataset=siqa", f"--eval_mode={mode}",
                "--max_eval_samples=7", "--beam_size=2", "--max_new_tokens=3", f"--data_dir={data_dir}"]  # fmt: skip
        folder.mkdir()
        if processes == 1:
            result = subprocess.run([sys.executable, "-m", "peftbench.cli", *args], capture_output=True, text=True,
                                    timeout=600)  # fmt: skip
        else:
            result = torchrun(["-m", "peftbench.cli", *args], folder, processes)
        assert result.returncode == 0, result.stderr[-3000:]
        suffix = "" if mode == "generate" else "_loglik"
        record = json.loads((folder / f"output_siqa{suffix}_eval.jsonl").read_text())
        assert record["processes"] == processes and record["total"] == 7
        return json.loads((folder / f"predictions_siqa{suffix}.json").read_text())

    for mode in ("generate", "loglik"):
        one, two = evaluate(1, tmp_path / f"one-{mode}", mode), evaluate(2, tmp_path / f"two-{mode}", mode)
        assert [p["index"] for p in two] == sorted(p["index"] for p in two)
        assert [(p["index"], p["predicted"]) for p in two] == [(p["index"], p["predicted"]) for p in one]
        if mode == "loglik":
            flat = [score for p in two for score in p["logprobs"]]
            assert flat == pytest.approx([score for p in one for score in p["logprobs"]], abs=1e-4)


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    (file,) = (run / f"checkpoint-{step}").glob("*.safetensors")  # adapter_model or, for FFT, model
    return load_file(file)


def _validations(run: Path) -> list[tuple[int, float]]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]


SHARDED_RUN = {"r_ab": None, "batch": 2, "grad_acc": 2, "lr": 1e-2, "max_steps": 3, "max_train_samples": 64,
               "val_set_size": 5, "eval_steps": 1, "save_total_limit": 0}  # fmt: skip
ADAPTER_RANK = {"lora": {"r_ab": 4, "lora_dropout": 0.0}, "hira": {"r_ab": 4}, "fft": {"lr": 1e-3}}


@pytest.fixture(scope="module")
def ddp_runs(tiny_neo, data_dir, tmp_path_factory) -> dict[str, Path]:
    """The reference: plain DDP on 2 processes, each method trained 3 steps and validated at each."""
    folder = tmp_path_factory.mktemp("ddp")
    return {method: _train(folder / method, flags(tiny_neo, data_dir, **(SHARDED_RUN | {"peft_type": method} |
                                                                         ADAPTER_RANK[method])), processes=2)
            for method in ADAPTER_RANK}  # fmt: skip


ENGINES = {
    "zero3": (f"--ds_config={ROOT / 'ds_configs' / 'zero3.json'}", "DEEPSPEED"),
    "zero2": (f"--ds_config={ROOT / 'ds_configs' / 'zero2.json'}", "DEEPSPEED"),
    "fsdp": ("--fsdp=full_shard auto_wrap", "FSDP"),
}


def _sharded_run(engine: str, method: str, tiny_neo: Path, data_dir: str, folder: Path) -> Path:
    flag, distributed = ENGINES[engine]
    args = flags(tiny_neo, data_dir, **(SHARDED_RUN | {"peft_type": method} | ADAPTER_RANK[method]))
    run = _train(folder, [*args, flag], processes=2)
    assert records(run)[-1]["distributed"] == distributed  # the engine really ran (not DDP in its place)
    return run


def _assert_trains_as_ddp(run: Path, reference: Path, rtol: float = 1e-4) -> None:
    """Same weights, parameter counts, packing, validation losses and chosen checkpoint as DDP."""
    assert records(reference)[-1]["distributed"] == "MULTI_CPU"
    first, reference_first = records(run)[0], records(reference)[0]
    assert first["parameters"] == reference_first["parameters"] and first["parameters"]["total_params"] > 0
    assert first["execution"]["packing"] is reference_first["execution"]["packing"] is True
    ours, theirs = _weights(run, 3), _weights(reference, 3)
    assert theirs.keys() <= ours.keys()
    for extra in ours.keys() - theirs.keys():  # ZeRO-2 and FSDP save tied weights twice (lm_head, the embedding)
        assert any(torch.equal(ours[extra], value) for value in ours.values() if value is not ours[extra])
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name].float(), value.float(), rtol=rtol, atol=1e-6)
    assert [s for s, _ in _validations(run)] == [s for s, _ in _validations(reference)] == [1, 2, 3]
    assert [v for _, v in _validations(run)] == pytest.approx([v for _, v in _validations(reference)], rel=1e-5)
    assert Path(records(run)[-1]["best_checkpoint"]).name == Path(records(reference)[-1]["best_checkpoint"]).name


@pytest.mark.parametrize("engine", ["zero3", "fsdp"])
@pytest.mark.parametrize("method", list(ADAPTER_RANK))
def test_a_sharded_engine_trains_as_ddp_and_its_checkpoint_evaluates(
    engine, method, ddp_runs, tiny_neo, data_dir, tmp_path
):
    run = _sharded_run(engine, method, tiny_neo, data_dir, tmp_path / engine)
    _assert_trains_as_ddp(run, ddp_runs[method])
    scores = {}
    for name, trained in ((engine, run), ("ddp", ddp_runs[method])):
        evaluation = ["eval", f"--ckpt={trained / 'checkpoint-3'}", "--dataset=boolq", "--eval_mode=loglik",
                      "--max_eval_samples=4", f"--data_dir={data_dir}", f"--output_dir={tmp_path / name}"]  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "peftbench.cli", *evaluation], capture_output=True, text=True,
                                timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        predictions = json.loads((tmp_path / name / "predictions_boolq_loglik.json").read_text())
        scores[name] = [score for p in predictions for score in p["logprobs"]]
    assert scores[engine] == pytest.approx(scores["ddp"], abs=1e-4)


def test_deepspeed_zero2_trains_as_ddp(ddp_runs, tiny_neo, data_dir, tmp_path):
    _assert_trains_as_ddp(_sharded_run("zero2", "fft", tiny_neo, data_dir, tmp_path / "zero2"), ddp_runs["fft"])


@pytest.mark.parametrize("engine", ["zero3", "fsdp"])
def test_a_sharded_run_resumes_to_the_weights_of_the_uninterrupted_run(engine, tiny_neo, data_dir, tmp_path):
    whole = _sharded_run(engine, "lora", tiny_neo, data_dir, tmp_path / "whole")
    interrupted = tmp_path / "interrupted"
    shutil.copytree(whole.parent, interrupted / "results", ignore=shutil.ignore_patterns("checkpoint-3"))
    (run,) = (interrupted / "results").iterdir()
    args = flags(tiny_neo, data_dir, **(SHARDED_RUN | {"peft_type": "lora"} | ADAPTER_RANK["lora"]))
    resume = f"--resume_from_checkpoint={run / 'checkpoint-2'}"
    result = torchrun([str(ROOT / "train_hira.py"), *args, ENGINES[engine][0], resume], interrupted)
    assert result.returncode == 0, result.stderr[-4000:]
    assert records(run)[-2]["event"] == "resume"
    for name, value in _weights(whole, 3).items():
        torch.testing.assert_close(_weights(run, 3)[name], value, rtol=1e-5, atol=1e-7)


def test_doctor_on_a_cpu_runs_what_it_can_and_says_what_it_skipped(tmp_path):
    report_file = tmp_path / "doctor.json"
    result = subprocess.run([sys.executable, "-m", "peftbench.cli", "doctor", f"--out={report_file}"],
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL", "SKIP"))]
    report = json.loads(report_file.read_text())
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert len(lines) == len(statuses) == 6
    assert statuses.pop("memory plan vs real peak") == "skip"  # no GPU
    assert set(statuses.values()) == {"pass"} and "DDP (gloo, 2 processes) vs one process" in statuses
    assert report["machine"]["device"] == "cpu"

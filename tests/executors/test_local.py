"""Studies as files: the shipped ones, validation in one line, overrides, dependencies, executors' scheduling."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

from tiny_study import TINY_STUDY, step_graph

import peftbench.executors.local as local
from peftbench import cli
from peftbench.executors.base import FAILED, FINISHED, NOT_RUN, run_when_ready
from peftbench.executors.driver import summary
from peftbench.executors.journal import StudyJournal
from peftbench.executors.local import LocalExecutor
from peftbench.studies.plan import Step

GOLDEN = Path(__file__).parents[1] / "golden"
EIGHT = "boolq,piqa,siqa,hellaswag,winogrande,arc_easy,arc_challenge,obqa"


def test_a_failed_step_stops_only_what_needs_it_and_the_summary_says_how_to_go_on(tmp_path) -> None:
    started = []

    def start(step: Step) -> concurrent.futures.Future[int]:
        started.append(step.id)
        (tmp_path / f"{step.id}.log").write_text("loading\nerror: --bad is not a flag\n")
        future = concurrent.futures.Future()
        future.set_result(2 if "--bad" in step.argv else 0)
        return future

    ended = []
    outcomes = run_when_ready(step_graph(), start, tmp_path, ended.append, limit=2)
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
    outcomes = LocalExecutor(gpus=["2", "5"]).run(steps, tmp_path, lambda outcome: None, StudyJournal(tmp_path))
    assert all(o.state == FINISHED for o in outcomes)
    assert sorted(gpu for kind, gpu in seen if kind == "train") == ["2"] * 3 + ["5"] * 3
    assert ("analyze", "") in seen  # analysis sees no GPU


def test_a_gpu_study_with_several_local_workers_needs_a_gpu_each(tmp_path, capsys) -> None:
    path = tmp_path / "gpu.yaml"
    path.write_text(TINY_STUDY.replace("summary:", "needs_gpu: true\nsummary:"))
    assert cli.main(["reproduce", str(path), "--workers", "2", "--out", str(tmp_path / "out")]) == 2
    assert "--workers 2 would put 2 GPU steps on one GPU" in capsys.readouterr().err

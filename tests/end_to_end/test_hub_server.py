"""A new user with a network and no local data, the network being a real hub server (olah) on 127.0.0.1 that serves
every registry source, Commonsense-170K and the specification's model under their real names (`make test-hub`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_mirror import DATASETS_FLOOR, FLOOR_VERSION, MODEL, ROOT, ROWS, free_port, hub_server
from launch import records

from peftbench.runs.records import read_records

pytestmark = pytest.mark.hub
BENCHMARKS = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "obqa", "csqa")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    with hub_server(tmp_path_factory.mktemp("hub")) as served:
        yield served


def _environment(endpoint: str, home: Path, offline: bool = False) -> dict[str, str]:
    """What a user's shell holds: the endpoint, their own caches; no token, online unless said."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PEFTBENCH_"))}
    flag = "1" if offline else "0"
    return environment | {"HF_ENDPOINT": endpoint, "HF_HOME": str(home / "hf"), "PEFTBENCH_CACHE": str(home / "pb"),
                          "HF_HUB_OFFLINE": flag, "HF_DATASETS_OFFLINE": flag, "PEFTBENCH_DATA_DIR": str(home / "none"),
                          "MPLCONFIGDIR": str(home / "mpl")}  # fmt: skip


def _run(args: list[str], environment: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=environment, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


LOAD_EVERY_SOURCE = """
import json, sys
from peftbench import hub
from peftbench.data.sources import load_test_examples, load_train_examples
hub.pin(sys.argv[1])
loaded = {name: load_test_examples(name, "none") for name in sys.argv[2].split(",")}
loaded |= {name: load_train_examples(name, "none") for name in ("common_170k", "metamath", "math_10k")}
print(json.dumps({name: [len(l.examples), l.origins, l.revisions] for name, l in loaded.items()}))
"""


@pytest.mark.parametrize("datasets_version", ["installed", "floor"])
def test_every_registry_source_loads_at_the_commit_it_names(hub, tmp_path, datasets_version) -> None:
    """With the newest `datasets` (installed) and the oldest pyproject.toml allows (`make test-hub` puts it in
    DATASETS_FLOOR, first on the path)."""
    endpoint, commits = hub
    environment = _environment(endpoint, tmp_path)
    if datasets_version == "floor":
        environment["PYTHONPATH"] = str(DATASETS_FLOOR)
        version = _run(["-c", "import datasets; print(datasets.__version__)"], environment, tmp_path)
        assert version.stdout.strip() == FLOOR_VERSION, version.stderr[-2000:]
    pin = f"ybisk/piqa={commits['ybisk/piqa']}"  # olah cannot serve refs/convert/parquet; the pin names its commit
    result = _run(["-c", LOAD_EVERY_SOURCE, pin, ",".join((*BENCHMARKS, "gsm8k"))], environment, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    repositories = {
        "boolq": "google/boolq", "piqa": "ybisk/piqa", "siqa": "lighteval/siqa", "hellaswag": "Rowan/hellaswag",
        "winogrande": "allenai/winogrande", "arc_easy": "allenai/ai2_arc", "arc_challenge": "allenai/ai2_arc",
        "obqa": "allenai/openbookqa", "csqa": "tau/commonsense_qa", "common_170k": "zwhe99/commonsense_170k",
        "gsm8k": "openai/gsm8k", "metamath": "meta-math/MetaMathQA", "math_10k": "lmms-lab/Math10K",
    }  # fmt: skip
    for name, repository in repositories.items():
        count, origins, revisions = loaded[name]
        assert count == (12 if name in ("common_170k", "math_10k") else ROWS), name
        assert revisions == {repository: commits[repository]}, name
        assert origins[0].startswith(f"hub:{repository}") and f"@{commits[repository]}[" in origins[0], name


def test_the_specifications_command_trains_and_evaluates_through_the_hub(hub, tmp_path) -> None:
    """train_hira.py on Commonsense-170K with the specification's default model, then every benchmark, all from the
    hub; the run record and every result name the commits they were read at."""
    endpoint, commits = hub
    environment = _environment(endpoint, tmp_path)
    train = ["train_hira.py", "--peft_type=lora", "--dataset=common_170k", "--r_ab=4", "--batch=4", "--max_steps=2",
             "--val_set_size=4", "--eval_strategy=no", "--output_folder=results"]  # fmt: skip
    result = _run([str(ROOT / train[0]), *train[1:]], environment, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "results").iterdir()
    first = records(run)[0]
    assert first["config"]["model_name"] == MODEL and first["model_fingerprint"] == f"hub:{MODEL}@{commits[MODEL]}"
    assert first["data"]["revisions"] == {"zwhe99/commonsense_170k": commits["zwhe99/commonsense_170k"]}
    pin = f"--hub_revisions=ybisk/piqa={commits['ybisk/piqa']}"
    evaluation = ["-m", "peftbench.cli", "eval", f"--ckpt={run}", "--dataset=all", "--eval_mode=loglik", pin]
    result = _run(evaluation, environment, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = [read_records(path)[-1] for path in run.glob("checkpoint-*/output_*_loglik_eval.jsonl")]
    assert sorted(r["dataset"] for r in results) == sorted(BENCHMARKS)
    for record in results:
        ((repository, commit),) = record["data_revisions"].items()
        assert commits[repository] == commit and record["total"] == ROWS
        assert record["model_fingerprint"] != record["base_fingerprint"] == f"hub:{MODEL}@{commits[MODEL]}"


def test_a_cached_hub_repository_loads_offline_at_the_commit_resolved_online(hub, tmp_path) -> None:
    endpoint, commits = hub
    script = "from peftbench.data.sources import load_test_examples; print(load_test_examples('boolq', 'none').origins)"
    online = _run(["-c", script], _environment(endpoint, tmp_path), tmp_path)
    offline = _run(["-c", script], _environment("http://127.0.0.1:9", tmp_path, offline=True), tmp_path)
    assert online.returncode == offline.returncode == 0, online.stderr[-2000:] + offline.stderr[-2000:]
    assert online.stdout == offline.stdout and commits["google/boolq"] in offline.stdout


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_an_endpoint_that_does_not_answer_is_one_line_within_seconds(tmp_path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    evaluation = ["-m", "peftbench.cli", "eval", f"--model_name={MODEL}", "--dataset=boolq", "--output_dir=out"]
    result = _run(evaluation, _environment(closed, tmp_path), tmp_path)
    assert result.returncode == 2 and time.monotonic() - start < 60
    (line,) = _error_lines(result)
    assert f"the Hugging Face hub at {closed} does not answer" in line and "HF_HUB_OFFLINE=1" in line


LOAD_ONE = """
import dataclasses, sys
from peftbench import hub
from peftbench.cli.flags import run_guarded
from peftbench.data import registry, sources
spec = registry.get_dataset(sys.argv[1])
source = dataclasses.replace(spec.hub, **dict(item.split("=", 1) for item in sys.argv[2:]))
sources.get_dataset = lambda name: dataclasses.replace(spec, hub=source)
sys.exit(run_guarded(lambda: sources.load_test_examples(spec.name, "none")))
"""


@pytest.mark.parametrize(
    ("dataset", "change", "message"),
    [
        ("boolq", ["path=no-org/no-such-dataset"], "no dataset repository no-org/no-such-dataset on http://127.0.0.1"),
        ("winogrande", ["name=winogrande_xxl"], "no config 'winogrande_xxl'"),
        ("boolq", ["test_split=dev"], "no split 'dev'"),
        ("siqa", ["path=allenai/social_i_qa"], "allenai/social_i_qa holds only a loading script (social_i_qa.py)"),
        ("piqa", ["revision=main"], "ybisk/piqa holds only a loading script (piqa.py)"),
    ],
)
def test_each_way_a_hub_dataset_fails_is_one_line(hub, tmp_path, dataset, change, message) -> None:
    endpoint, _ = hub
    result = _run(["-c", LOAD_ONE, dataset, *change], _environment(endpoint, tmp_path), tmp_path, timeout=120)
    assert result.returncode == 2
    (line,) = _error_lines(result)
    assert message in line


def test_a_model_that_is_not_on_the_hub_is_one_line(hub, tmp_path) -> None:
    endpoint, _ = hub
    evaluation = [
        "-m",
        "peftbench.cli",
        "eval",
        "--model_name=no-org/no-such-model",
        "--dataset=boolq",
        "--output_dir=o",
    ]
    result = _run(evaluation, _environment(endpoint, tmp_path), tmp_path, timeout=120)
    assert result.returncode == 2
    (line,) = _error_lines(result)
    assert "no model repository no-org/no-such-model on http://127.0.0.1" in line

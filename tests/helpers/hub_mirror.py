"""A Hugging Face hub on 127.0.0.1: olah (its own virtual environment, `make test-hub` installs it) serving git
repositories laid out as the real ones, under their real names, configs, splits and column names.

olah (0.5.4) serves plain git repositories at ``<mirrors>/datasets/<org>/<name>`` and ``<mirrors>/models/<org>/<name>``
in offline mode; each needs a README.md on main; it answers revisions that are branches or commits but not named refs
such as ``refs/convert/parquet`` (the tests pin PIQA's converted commit with --hub_revisions instead).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tiny import LLM_ADAPTERS, make_model_dir

ROOT = Path(__file__).resolve().parents[2]
# Absolute: the server runs in a folder of its own, and make passes paths relative to the checkout.
OLAH = Path(os.environ.get("PEFTBENCH_OLAH", ROOT / ".venv-olah" / "bin" / "olah-cli")).absolute()
# The oldest `datasets` pyproject.toml allows, installed alone (`make test-hub`) to be put first on the path.
FLOOR_VERSION = "4.0.0"
DATASETS_FLOOR = Path(os.environ.get("PEFTBENCH_DATASETS_FLOOR", ROOT / ".venv-olah" / "datasets-floor")).absolute()
ROWS = 4  # per split: enough to count, small enough to stay fast
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "peftbench", "GIT_AUTHOR_EMAIL": "tests@peftbench",
                "GIT_AUTHOR_DATE": "2026-01-01T00:00:00", "GIT_COMMITTER_NAME": "peftbench",
                "GIT_COMMITTER_EMAIL": "tests@peftbench", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00"}  # fmt: skip


def _choices(count: int) -> dict[str, list[str]]:
    return {"text": [f"choice {i}" for i in range(count)], "label": list("ABCDE"[:count])}


def _row(schema: str, index: int) -> dict:
    """One record in the hub's schema of a benchmark (the columns its converter reads, and the real others)."""
    if schema == "boolq":
        return {"question": f"is {index} even", "answer": index % 2 == 0, "passage": "Numbers."}
    if schema == "piqa":
        return {"goal": f"goal {index}", "sol1": "one way", "sol2": "another way", "label": index % 2}
    if schema == "siqa":
        return {"context": f"context {index}", "question": "what next?", "answerA": "a", "answerB": "b",
                "answerC": "c", "label": str(index % 3 + 1)}  # fmt: skip
    if schema == "hellaswag":
        return {"ind": index, "activity_label": "Cooking", "ctx_a": "A man", "ctx_b": "cooks", "ctx": "A man cooks",
                "endings": ["e0", "e1", "e2", "e3"], "source_id": "x", "split": "val", "split_type": "indomain",
                "label": str(index % 4)}  # fmt: skip
    if schema == "winogrande":
        return {"sentence": f"Sentence {index} with _.", "option1": "A", "option2": "B", "answer": str(index % 2 + 1)}
    if schema == "arc":
        return {
            "id": f"q{index}",
            "question": f"question {index}?",
            "choices": _choices(4),
            "answerKey": "ABCD"[index % 4],
        }
    if schema == "openbookqa":
        return {
            "id": f"q{index}",
            "question_stem": f"stem {index}",
            "choices": _choices(4),
            "answerKey": "ABCD"[index % 4],
        }
    if schema == "commonsense_qa":
        return {"id": f"q{index}", "question": f"question {index}?", "question_concept": "c", "choices": _choices(5),
                "answerKey": "ABCDE"[index % 5]}  # fmt: skip
    if schema == "gsm8k":
        return {"question": f"What is {index} + 1000?", "answer": f"{index} + 1000 = <<{index}+1000={index + 1000}>>"
                f"{index + 1000}\n#### {index + 1000:,}"}  # fmt: skip
    if schema == "metamath":
        return {"query": f"What is {index} + 2?", "response": f"{index} + 2 = {index + 2}.\nThe answer is: {index + 2}",
                "type": "GSM_AnsAug", "original_question": f"What is {index} + 2?"}  # fmt: skip
    raise KeyError(schema)


# repository -> (schema, {config: [splits]}); configs named as the real repositories name them.
DATASETS = {
    "google/boolq": ("boolq", {"default": ["train", "validation"]}),
    "lighteval/siqa": ("siqa", {"default": ["train", "validation"]}),
    "Rowan/hellaswag": ("hellaswag", {"default": ["train", "validation", "test"]}),
    "allenai/winogrande": ("winogrande", {"winogrande_xl": ["train", "validation"]}),
    "allenai/ai2_arc": ("arc", {"ARC-Easy": ["train", "validation", "test"],
                                "ARC-Challenge": ["train", "validation", "test"]}),
    "allenai/openbookqa": ("openbookqa", {"main": ["train", "validation", "test"]}),
    "tau/commonsense_qa": ("commonsense_qa", {"default": ["train", "validation"]}),
    "openai/gsm8k": ("gsm8k", {"main": ["train", "test"]}),
}  # fmt: skip
MODEL = "EleutherAI/gpt-neo-1.3B"  # the specification's default, served as a tiny GPT-Neo under its name


def _readme(configs: dict[str, list[str]], pattern: str) -> str:
    """A dataset card whose front matter names the configs and splits (datasets reads them from it)."""
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern.format(config=config, split=split)}" for split in splits]
    return "\n".join([*lines, "---", "A test mirror of the repository, made by peftbench's tests.", ""])


def _commit(repo: Path, message: str) -> str:
    run = {"cwd": repo, "env": {**os.environ, **GIT_IDENTITY}, "check": True, "capture_output": True, "text": True}
    subprocess.run(["git", "add", "-A"], **run)
    subprocess.run(["git", "commit", "-q", "-m", message], **run)
    return subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()


def _new_repo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(folder)], check=True)
    return folder


def _parquet_repo(folder: Path, schema: str, configs: dict[str, list[str]], pattern: str) -> str:
    for config, splits in configs.items():
        for split in splits:
            path = folder / pattern.format(config=config, split=split).replace("*", "00000-of-00001.parquet")
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([_row(schema, i) for i in range(ROWS)]), path)
    (folder / "README.md").write_text(_readme(configs, pattern))
    return _commit(folder, "data")


def build_mirrors(mirrors: Path) -> dict[str, str]:
    """Every registry source, Commonsense-170K, two script-only repositories and the model; repository -> commit
    (for PIQA: its converted commit, which main does not reach)."""
    commits = {}
    for repo, (schema, configs) in DATASETS.items():
        pattern = "data/{split}-*" if list(configs) == ["default"] else "{config}/{split}-*"
        commits[repo] = _parquet_repo(_new_repo(mirrors / "datasets" / repo), schema, configs, pattern)
    commits["zwhe99/commonsense_170k"] = _commonsense_170k(_new_repo(mirrors / "datasets" / "zwhe99/commonsense_170k"))
    commits["lmms-lab/Math10K"] = _math_10k(_new_repo(mirrors / "datasets" / "lmms-lab/Math10K"))
    commits["meta-math/MetaMathQA"] = _metamath(_new_repo(mirrors / "datasets" / "meta-math/MetaMathQA"))
    commits["ybisk/piqa"] = _script_repo(_new_repo(mirrors / "datasets" / "ybisk/piqa"), "piqa.py", converted=True)
    commits["allenai/social_i_qa"] = _script_repo(
        _new_repo(mirrors / "datasets" / "allenai/social_i_qa"), "social_i_qa.py"
    )
    model = _new_repo(mirrors / "models" / MODEL)
    make_model_dir(model, "gpt_neo")
    (model / "README.md").write_text("A tiny random GPT-Neo under the name of the specification's model.\n")
    commits[MODEL] = _commit(model, "tiny model")
    return commits


def _commonsense_170k(folder: Path) -> str:
    """LLM-Adapters' format, from real examples of it (the local train files are slices of the file)."""
    examples = json.loads((LLM_ADAPTERS / "boolq" / "train.json").read_text())[:6]
    examples += json.loads((LLM_ADAPTERS / "ARC-Easy" / "train.json").read_text())[:6]
    (folder / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(examples), folder / "data" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text(_readme({"default": ["train"]}, "data/{split}-*"))
    return _commit(folder, "data")


def _math_10k(folder: Path) -> str:
    """LLM-Adapters' math training format as parquet (real examples of LLM-Adapters' math_data.json)."""
    examples = json.loads((LLM_ADAPTERS / "math_data.json").read_text())[:12]
    (folder / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(examples), folder / "data" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text(_readme({"default": ["train"]}, "data/{split}-*"))
    return _commit(folder, "data")


def _metamath(folder: Path) -> str:
    """The repository as its authors publish it: one JSON file, MetaMathQA-395K.json, and a card without configs."""
    records = [_row("metamath", i) for i in range(ROWS)]
    (folder / "MetaMathQA-395K.json").write_text(json.dumps(records))
    (folder / "README.md").write_text("A test mirror of MetaMathQA, made by peftbench's tests.\n")
    return _commit(folder, "data")


def _script_repo(folder: Path, script: str, converted: bool = False) -> str:
    """main holds only a loading script, as the original repository does; ``converted``: a commit beside main with
    the hub's parquet conversion of it (config 'default'), whose commit is returned."""
    (folder / script).write_text("# a loading script: datasets >= 4 refuses to run it\n")
    (folder / "README.md").write_text("A dataset read by its loading script.\n")
    main = _commit(folder, "script")
    if not converted:
        return main
    run = {"cwd": folder, "check": True, "capture_output": True}
    subprocess.run(["git", "checkout", "-q", "--orphan", "convert-parquet"], **run)
    subprocess.run(["git", "rm", "-q", "-rf", "."], **run)
    converted_commit = _parquet_repo(folder, "piqa", {"default": ["train", "validation"]}, "{config}/{split}/*")
    subprocess.run(["git", "checkout", "-q", "main"], **run)
    return converted_commit


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def hub_server(folder: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(endpoint, repository -> commit) of a running olah serving the mirrors, stopped on exit."""
    if not OLAH.is_file():
        raise RuntimeError(f"olah is not installed at {OLAH}: make test-hub installs it (its own virtual environment)")
    commits = build_mirrors(folder / "mirrors")
    port = free_port()
    config = folder / "olah.toml"
    config.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{folder / "repos"}"\n'
                      f'mirrors-path = ["{folder / "mirrors"}"]\n[accessibility]\noffline = true\n')  # fmt: skip
    log = (folder / "olah.log").open("w")
    server = subprocess.Popen([str(OLAH), "-c", str(config), "--log-path", str(folder / "logs")], cwd=folder,
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait_for(port, server, folder / "olah.log")
        yield f"http://127.0.0.1:{port}", commits
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(folder / "repos", ignore_errors=True)


def _wait_for(port: int, server: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"olah exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"olah did not open port {port} within {seconds} s: {log.read_text()[-2000:]}")

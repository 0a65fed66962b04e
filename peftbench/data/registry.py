"""The nine benchmarks and Commonsense-170K as table entries.

The trainer and evaluator never branch on a dataset's name: everything that differs between
benchmarks (folder, files, answer keywords, schema converter) is in its entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftbench.errors import UserError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # folder name in the LLM-Adapters layout
    keywords: tuple[str, ...]  # answer keywords, searched for in generated text
    aliases: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ("test.json",)
    train_files: tuple[str, ...] = ("train.json",)
    # Files in the benchmark's official schema, and the converter (peftbench.data.sources) that reads them.
    official_test_files: tuple[str, ...] = ()
    official_schema: str | None = None
    extra_folders: tuple[str, ...] = ()  # other places, relative to a data root, where its files may lie
    union_of: tuple[str, ...] = ()  # a training mix: rebuilt from these datasets' train files if its own is absent
    response_template: str = "the correct answer is {answer}"  # the trained response; loglik scores it per option
    version: str = "llm-adapters-1"  # recorded in every result, so a prompt change stays traceable

    @property
    def has_test(self) -> bool:
        return bool(self.test_files or self.official_test_files)


def _numbered(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


BENCHMARKS: tuple[DatasetSpec, ...] = (
    DatasetSpec("boolq", "boolq", ("true", "false")),
    DatasetSpec("piqa", "piqa", _numbered("solution", 2)),
    DatasetSpec("siqa", "social_i_qa", _numbered("answer", 3), aliases=("social_i_qa",)),
    DatasetSpec(
        "hellaswag",
        "hellaswag",
        _numbered("ending", 4),
        aliases=("hellas",),
        test_files=("test.json", "test_sample.json"),
    ),
    DatasetSpec("winogrande", "winogrande", _numbered("option", 2), aliases=("winog",)),
    # LLM-Adapters' extractor accepts answer5 for the ARC and OBQA family (one ARC-Easy test question has five options).
    DatasetSpec("arc_easy", "ARC-Easy", _numbered("answer", 5), aliases=("arce", "ARC-Easy")),
    DatasetSpec("arc_challenge", "ARC-Challenge", _numbered("answer", 5), aliases=("arcc", "ARC-Challenge")),
    DatasetSpec("obqa", "openbookqa", _numbered("answer", 5), aliases=("openbookqa",)),
    DatasetSpec(
        "csqa",
        "commonsense_qa",
        _numbered("answer", 5),
        aliases=("commonsense_qa",),
        test_files=("test.json",),
        official_test_files=("dev_rand_split.jsonl",),
        official_schema="commonsense_qa",
        version="peftbench-csqa-1",
    ),
)

# The union of the eight LLM-Adapters tasks' training sets (CommonsenseQA is not part of it).
COMMON_170K_PARTS: tuple[str, ...] = tuple(spec.name for spec in BENCHMARKS if spec.name != "csqa")
COMMON_170K = DatasetSpec(
    "common_170k",
    "common_170k",
    keywords=tuple(sorted({k for spec in BENCHMARKS for k in spec.keywords})),
    aliases=("commonsense_170k",),
    test_files=(),
    train_files=("commonsense_170k.json",),
    extra_folders=(".", "ft-training_set"),  # LLM-Adapters keeps it at ft-training_set/commonsense_170k.json
    union_of=COMMON_170K_PARTS,
)

ALL_DATASETS: tuple[DatasetSpec, ...] = (*BENCHMARKS, COMMON_170K)
_BY_NAME = {name.lower(): spec for spec in ALL_DATASETS for name in (spec.name, spec.folder, *spec.aliases)}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        known = ", ".join(spec.name for spec in ALL_DATASETS)
        raise UserError(f"unknown dataset {name!r}; known datasets: {known}") from None


def benchmark_names() -> list[str]:
    return [spec.name for spec in BENCHMARKS]


def resolve_names(requested: str) -> list[str]:
    """'all' (the nine benchmarks), one name or a comma-separated list, normalised to registry names."""
    names = benchmark_names() if requested.strip().lower() == "all" else requested.split(",")
    resolved = [get_dataset(name.strip()).name for name in names if name.strip()]
    if not resolved:
        raise UserError("--dataset is empty")
    return resolved

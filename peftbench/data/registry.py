"""The benchmarks and training sets of every task as table entries.

The trainer and evaluator never branch on a dataset's name: everything that differs between
benchmarks (folder, files, answer keywords, schema converter, task) is in its entry here. A task
(commonsense, math, dialogue) decides how a test record's answer is checked and, with the protocol,
the prompt, decoding and scorer (``peftbench.data.protocols``).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftbench.errors import UserError


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the Hugging Face hub, in the schema its converter reads. It is read at a commit:
    ``revision`` (default ``main``) is resolved to one first, and ``--hub_revisions`` pins another."""

    path: str
    name: str | None = None
    test_split: str | None = "validation"  # LLM-Adapters' test sets are these splits
    train_split: str | None = "train"
    revision: str | None = None
    evidence: str = ""  # why this repository and revision hold the benchmark (a replacement needs proof)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # folder name in the LLM-Adapters layout
    keywords: tuple[str, ...]  # answer keywords, searched for in generated text
    aliases: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ("test.json",)
    train_files: tuple[str, ...] = ("train.json",)
    # Files of the benchmark's original release, read (like the hub's records) by converters[schema].
    official_test_files: tuple[str, ...] = ()
    official_train_files: tuple[str, ...] = ()
    schema: str | None = None
    hub: HubSource | None = None
    extra_folders: tuple[str, ...] = ()  # other places, relative to a data root, where its files may lie
    union_of: tuple[str, ...] = ()  # a training mix: rebuilt from these datasets' train files if its own is absent
    response_template: str = "the correct answer is {answer}"  # the trained response; loglik scores it per option
    version: str = "llm-adapters-1"  # recorded in every result, so a prompt change stays traceable
    task: str = "commonsense"  # which of a protocol's task variants prompts, decodes and scores it
    # How a test record's answer is checked and scored: keyword (one of keywords), integer, number, letter (A-E) or
    # text (a free-form reference).
    answer_kind: str = "keyword"

    @property
    def has_options(self) -> bool:
        """Its questions offer answer options, which log-likelihood can score."""
        return self.answer_kind == "keyword"

    @property
    def training_only(self) -> bool:
        """A training set (Commonsense-170K, the mix): nothing to evaluate on."""
        return not self.test_files and not (self.hub and self.hub.test_split)


def _numbered(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


# The original repositories of PIQA and SIQA hold loading scripts on main, which datasets >= 4 refuses to run.
PIQA_EVIDENCE = (
    "the original repository at the hub's parquet conversion of its script (config 'default'), as Xilinx/brevitas "
    "PR #1624 reads it; main holds only piqa.py"
)
SIQA_EVIDENCE = (
    "allenai/social_i_qa holds only social_i_qa.py; lighteval/siqa has the same train (33,410) and validation "
    "(1,954) rows: lm-evaluation-harness PR #3943 hashed every split's used columns against the original (its issue "
    "#3171 lists allenai/social_i_qa as failing under datasets 5.0)"
)
COMMON_170K_EVIDENCE = (
    "LLM-Adapters' ft-training_set/commonsense_170k.json (instruction, input, output, answer) as parquet, one "
    "train split"
)


BENCHMARKS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "boolq", "boolq", ("true", "false"), schema="boolq", hub=HubSource("google/boolq"),
        official_test_files=("dev.jsonl",), official_train_files=("train.jsonl",),
    ),
    DatasetSpec(
        "piqa", "piqa", _numbered("solution", 2), schema="piqa",
        hub=HubSource("ybisk/piqa", "default", revision="refs/convert/parquet", evidence=PIQA_EVIDENCE),
        official_test_files=("valid.jsonl",), official_train_files=("train.jsonl",),
    ),
    DatasetSpec(
        "siqa", "social_i_qa", _numbered("answer", 3), aliases=("social_i_qa",), schema="social_i_qa",
        hub=HubSource("lighteval/siqa", evidence=SIQA_EVIDENCE),
        official_test_files=("dev.jsonl",), official_train_files=("train.jsonl",),
    ),
    DatasetSpec(
        "hellaswag", "hellaswag", _numbered("ending", 4), aliases=("hellas",), schema="hellaswag",
        test_files=("test.json", "test_sample.json"), hub=HubSource("Rowan/hellaswag"),
        official_test_files=("hellaswag_val.jsonl",), official_train_files=("hellaswag_train.jsonl",),
    ),
    DatasetSpec(
        "winogrande", "winogrande", _numbered("option", 2), aliases=("winog",), schema="winogrande",
        hub=HubSource("allenai/winogrande", "winogrande_xl"),
        official_test_files=("dev.jsonl",), official_train_files=("train_xl.jsonl",),
    ),
    # LLM-Adapters' extractor accepts answer5 for the ARC and OBQA family (one ARC-Easy test question has five options).
    DatasetSpec(
        "arc_easy", "ARC-Easy", _numbered("answer", 5), aliases=("arce", "ARC-Easy"), schema="arc",
        hub=HubSource("allenai/ai2_arc", "ARC-Easy", test_split="test"),
        official_test_files=("ARC-Easy-Test.jsonl",), official_train_files=("ARC-Easy-Train.jsonl",),
    ),
    DatasetSpec(
        "arc_challenge", "ARC-Challenge", _numbered("answer", 5), aliases=("arcc", "ARC-Challenge"), schema="arc",
        hub=HubSource("allenai/ai2_arc", "ARC-Challenge", test_split="test"),
        official_test_files=("ARC-Challenge-Test.jsonl",), official_train_files=("ARC-Challenge-Train.jsonl",),
    ),
    DatasetSpec(
        "obqa", "openbookqa", _numbered("answer", 5), aliases=("openbookqa",), schema="openbookqa",
        hub=HubSource("allenai/openbookqa", "main", test_split="test"),
        official_test_files=("test.jsonl",), official_train_files=("train.jsonl",),
    ),
    DatasetSpec(
        "csqa", "commonsense_qa", _numbered("answer", 5), aliases=("commonsense_qa",), schema="commonsense_qa",
        hub=HubSource("tau/commonsense_qa"), official_test_files=("dev_rand_split.jsonl",),
        official_train_files=("train_rand_split.jsonl",), version="peftbench-csqa-1",
    ),
)  # fmt: skip

COMMONSENSE_KEYWORDS = tuple(sorted({k for spec in BENCHMARKS for k in spec.keywords}))
# The specification's training set: LLM-Adapters' file, read locally or from the hub as itself.
COMMON_170K = DatasetSpec(
    "common_170k",
    "common_170k",
    keywords=COMMONSENSE_KEYWORDS,
    aliases=("commonsense_170k",),
    test_files=(),
    train_files=("commonsense_170k.json",),
    extra_folders=(".", "ft-training_set"),  # LLM-Adapters keeps it at ft-training_set/commonsense_170k.json
    hub=HubSource("zwhe99/commonsense_170k", test_split=None, evidence=COMMON_170K_EVIDENCE),
)
# Not Commonsense-170K: the union of the eight tasks' training splits (CommonsenseQA is not one), built from the
# data folder's train files, or from the hub's when none is local: 147,580 examples from the hub, fewer and other
# prompts than the file (docs/data.md). Only by name: a missing Commonsense-170K never turns into it.
COMMONSENSE_MIX = DatasetSpec(
    "commonsense_mix",
    "commonsense_mix",
    keywords=COMMONSENSE_KEYWORDS,
    test_files=(),
    train_files=(),
    union_of=tuple(spec.name for spec in BENCHMARKS if spec.name != "csqa"),
)


METAMATH_EVIDENCE = (
    "the MetaMath authors' own repository (linked from their paper and github.com/meta-math/MetaMath); "
    "MetaMathQA-395K.json (query, response, type, original_question) is its one data file, read as itself"
)
GSM8K_EVIDENCE = (
    "GSM8K's authors' repository, config 'main': its test split holds the 1,319 problems of LLM-Adapters' "
    "gsm8k/test.json (the file HiRA's metamath_eval.py scores), in GSM8K's own schema (question, answer '... #### N')"
)


def _math_test_set(name: str, folder: str, answer_kind: str = "number", **extra: object) -> DatasetSpec:
    """An LLM-Adapters math test set (``<folder>/test.json``): a number, or AQuA's letter, is the answer."""
    return DatasetSpec(name, folder, keywords=(), aliases=(folder,), train_files=(), task="math",
                       answer_kind=answer_kind, version="llm-adapters-math-1", **extra)  # fmt: skip


# LLM-Adapters' math suite (dataset/<folder>/test.json); GSM8K also from the hub in its own schema.
MATH_BENCHMARKS: tuple[DatasetSpec, ...] = (
    _math_test_set("gsm8k", "gsm8k", answer_kind="integer", schema="gsm8k",
                   hub=HubSource("openai/gsm8k", "main", test_split="test", train_split=None, evidence=GSM8K_EVIDENCE)),
    _math_test_set("svamp", "SVAMP", answer_kind="integer"),
    _math_test_set("aqua", "AQuA", answer_kind="letter"),
    # AddSub, SingleEq and MAWPS have non-integer answers (126 of 395, 134 of 508, 38 of 238): HiRA's rule rounds
    # every prediction, so it could never score them; they are 'number', scored only by LLM-Adapters' rule.
    _math_test_set("addsub", "AddSub"),
    _math_test_set("multiarith", "MultiArith", answer_kind="integer"),
    _math_test_set("singleeq", "SingleEq"),
    _math_test_set("mawps", "mawps"),
)  # fmt: skip
# Training sets of the math task. MetaMathQA is read as its authors publish it (the hub's own file, locally in a
# folder named after the repository); the two LLM-Adapters sets are in its instruction format.
METAMATH = DatasetSpec(
    "metamath", "MetaMathQA", keywords=(), aliases=("meta_math", "metamathqa"), test_files=(),
    official_train_files=("MetaMathQA-395K.json",), schema="metamath", task="math", answer_kind="text",
    hub=HubSource("meta-math/MetaMathQA", test_split=None, evidence=METAMATH_EVIDENCE),
)  # fmt: skip
MATH_10K_EVIDENCE = (
    "LLM-Adapters' ft-training_set/math_10k.json (GSM8K, MAWPS and AQuA training problems with worked answers, "
    "README:48) as parquet, one train split; its card cites the LLM-Adapters paper (arXiv 2304.01933)"
)
MATH_10K = DatasetSpec(
    "math_10k", "math_10k", keywords=(), test_files=(), train_files=("math_10k.json",), task="math",
    answer_kind="text", extra_folders=(".", "ft-training_set"),  # LLM-Adapters keeps it at ft-training_set/
    hub=HubSource("lmms-lab/Math10K", test_split=None, evidence=MATH_10K_EVIDENCE),
)  # fmt: skip
MATH_DATA = DatasetSpec(
    "math_data", "math_data", keywords=(), test_files=(), train_files=("math_data.json",), task="math",
    answer_kind="text", extra_folders=(".", "ft-training_set"),
)  # fmt: skip
# ConvAI2 in the self-persona setting, from ParlAI's files: one example per reply (131,438 train, 7,801 test);
# ParlAI's validation set is the test set the HiRA paper reports (1,000 dialogues).
CONVAI2 = DatasetSpec(
    "convai2", "convai2", keywords=(), official_test_files=("valid_self_original.txt",),
    official_train_files=("train_self_original.txt",), schema="parlai", task="dialogue", answer_kind="text",
    version="parlai-self-original-1",
)  # fmt: skip

ALL_DATASETS: tuple[DatasetSpec, ...] = (
    *BENCHMARKS,
    COMMON_170K,
    COMMONSENSE_MIX,
    *MATH_BENCHMARKS,
    METAMATH,
    MATH_10K,
    MATH_DATA,
    CONVAI2,
)
_BY_NAME = {name.lower(): spec for spec in ALL_DATASETS for name in (spec.name, spec.folder, *spec.aliases)}
# Names that stand for several test sets: 'all' is the nine commonsense benchmarks, as the specification has it.
GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(spec.name for spec in BENCHMARKS),
    "commonsense": tuple(spec.name for spec in BENCHMARKS),
    "math": tuple(spec.name for spec in MATH_BENCHMARKS),
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        known = ", ".join([*(spec.name for spec in ALL_DATASETS), *GROUPS])
        raise UserError(f"unknown dataset {name!r}; known datasets and groups: {known}") from None


def benchmark_names() -> list[str]:
    return [spec.name for spec in BENCHMARKS]


def dataset_names() -> list[str]:
    """Every registered dataset, in the registry's order (commonsense, then math, then dialogue)."""
    return [spec.name for spec in ALL_DATASETS]


TASK_ORDER = ("commonsense", "math", "dialogue")


def resolve_names(requested: str) -> list[str]:
    """One name, a group ('all': the nine commonsense benchmarks; 'math': LLM-Adapters' math suite) or a
    comma-separated list of them, normalised to registry names."""
    names = [n for part in requested.split(",") for n in GROUPS.get(part.strip().lower(), (part,)) if n.strip()]
    resolved = list(dict.fromkeys(get_dataset(name.strip()).name for name in names))
    if not resolved:
        raise UserError("--dataset is empty")
    return resolved

"""``peftbench bench memory``: the activations one training sequence keeps for backward, and what keeps them.

Counted, not timed: every tensor autograd saves during one training forward (torch's ``saved_tensors_hooks``),
each storage once, weights left out. The count is the same on any device except for what the attention kernel
itself saves (q, k, v, output and a log-sum-exp row for torch's fused kernels on CPU and GPU alike), so a CPU
answers what a GPU shows only as one peak: how much is the attention's score matrix, and how much the logits.

A GPT-Neo's layers alternate global and local attention and are otherwise identical, so the count is taken on
the geometry at 2 and 4 layers and extended to all of them (the test checks the extension against a direct
count). Each sequence has ``--seq`` tokens, labels on the last ``--answer_tokens`` (the hira protocol trains
the answer only), and the paper preset's adapter of ``--method``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPTNeoConfig

from peftbench.bench.common import BENCH_MODELS, BENCH_TOTAL_STEPS, DTYPES
from peftbench.config import RunConfig
from peftbench.data.prompts import IGNORE_INDEX
from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.models.kernels import use_fused_gelu, use_sdpa_attention
from peftbench.studies.design import StudyDesign
from peftbench.studies.loader import load_study
from peftbench.studies.plan import Study
from peftbench.train.loss import label_positions, label_token_loss, logits_at_labels_only

logger = logging.getLogger(__name__)
# transformers' way of computing the loss, then each of ours added in turn: (name, the change it makes).
STAGES: tuple[tuple[str, Callable[[nn.Module], None] | None], ...] = (
    ("transformers: eager attention, gelu_new, all logits", None),
    ("+ SDPA attention", use_sdpa_attention),
    ("+ one-kernel GELU", use_fused_gelu),
    ("+ logits at label positions only", None),
)


@dataclasses.dataclass(frozen=True)
class MemoryBench:
    model: str  # a GPT-Neo bench geometry or a GPT-Neo model folder (its config only)
    method: str
    seq: int
    answer_tokens: int
    dtype: str


def neo_config(model: str, layers: int | None = None) -> GPTNeoConfig:
    """The geometry's config, at ``layers`` layers (alternating global and local) when given."""
    if model in BENCH_MODELS:
        config = BENCH_MODELS[model]()
    elif (Path(model) / "config.json").is_file():
        config = AutoConfig.from_pretrained(model)
    else:
        raise UserError(f"--model {model}: neither a model folder nor one of {', '.join(BENCH_MODELS)}")
    if not isinstance(config, GPTNeoConfig):
        raise UserError(f"--model {model} is a {config.model_type}: bench memory counts GPT-Neo's attention")
    if layers is not None:
        settings = config.to_dict() | {"num_layers": layers, "attention_types": [[["global", "local"], layers // 2]]}
        del settings["attention_layers"]  # derived from the types
        config = GPTNeoConfig(**settings)
    return config


@contextmanager
def saved_storages(exclude: set[int]) -> Iterator[dict[int, int]]:
    """Storage address -> bytes of every tensor autograd saves inside the block, but those in ``exclude``."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


def count_activations(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    """Bytes saved for backward by one forward and loss at each stage (``model`` as transformers built it)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    counts = {}
    for name, change in STAGES:
        if change is not None:
            change(model)
        with saved_storages(weights) as saved:
            if name == STAGES[-1][0] and logits_at_labels_only(model):  # else training keeps transformers' loss
                label_token_loss(model(input_ids=ids, logits_to_keep=label_positions(labels)), labels)
            else:
                model(input_ids=ids, labels=labels).loss  # noqa: B018 -- transformers' loss over every position
        counts[name] = sum(saved.values())
    return counts


def _inputs(bench: MemoryBench, vocabulary: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(vocabulary, (1, bench.seq), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -bench.answer_tokens :] = ids[:, -bench.answer_tokens :]
    return ids, labels


def count_at(bench: MemoryBench, layers: int, paper: StudyDesign) -> tuple[dict[str, int], bool]:
    """The counts of the geometry at ``layers`` layers with the paper preset's adapter of the method, and whether
    its loss comes from label positions (else training, and the last stage, keep transformers' loss)."""
    config = neo_config(bench.model, layers)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[bench.dtype])
    study = Study(paper, Path("."), (36,), "", (paper.all_plans[bench.method],))
    settings = RunConfig(**study.train_settings(36, bench.method)).adapter_settings(total_steps=BENCH_TOTAL_STEPS)
    model = get_method(bench.method).apply(model, settings).train()
    return count_activations(model, *_inputs(bench, config.vocab_size)), logits_at_labels_only(model)


def bench_memory(bench: MemoryBench, out: Path | None) -> dict[str, Any]:
    if bench.dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}")
    paper = load_study("paper")  # the preset whose adapters are counted
    if bench.method not in paper.all_plans:
        methods = ", ".join(paper.all_plans)
        raise UserError(f"--method {bench.method}: the paper preset has no command for it; it has {methods}")
    if not 0 < bench.answer_tokens < bench.seq:
        raise UserError(f"--answer_tokens must be between 1 and --seq - 1 ({bench.seq - 1}), got {bench.answer_tokens}")
    layers = neo_config(bench.model).num_layers
    (two, label_logits), (four, _) = count_at(bench, 2, paper), count_at(bench, 4, paper)
    # Two layers hold one global and one local layer; each further pair adds what the second pair added.
    total = {name: two[name] + (layers - 2) // 2 * (four[name] - two[name]) for name in two}
    report = {
        "settings": dataclasses.asdict(bench),
        "layers": layers,
        "activation_gib_per_sequence": {name: round(value / 2**30, 4) for name, value in total.items()},
        "per_layer_pair_mib": {name: round((four[name] - two[name]) / 2**20, 2) for name in two},
        "outside_layers_mib": {name: round((2 * two[name] - four[name]) / 2**20, 2) for name in two},
        "ours_over_transformers": round(total[STAGES[-1][0]] / total[STAGES[0][0]], 3),
        "label_position_loss": label_logits,
    }
    _print(report)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _print(report: dict[str, Any]) -> None:
    settings = report["settings"]
    print(f"activations kept for backward, one sequence of {settings['seq']} tokens ({settings['answer_tokens']} "
          f"labelled), {settings['model']} ({report['layers']} layers), {settings['method']}, "
          f"{settings['dtype']}:")  # fmt: skip
    print(f"{'':<52} {'GiB/sequence':>12} {'MiB/layer pair':>15} {'MiB outside layers':>19}")
    for name, gib in report["activation_gib_per_sequence"].items():
        print(f"{name:<52} {gib:>12.3f} {report['per_layer_pair_mib'][name]:>15.1f} "
              f"{report['outside_layers_mib'][name]:>19.1f}")  # fmt: skip
    if not report["label_position_loss"]:
        print(f"({settings['method']} keeps transformers' loss: prompt learning, or a tuner with a forward of its own)")
    print(f"peftbench / transformers: {report['ours_over_transformers']:.3f}")

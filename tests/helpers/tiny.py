"""Tiny random models with a real (small, freshly trained) tokenizer, saved as local model folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPTNeoConfig, LlamaConfig, PreTrainedTokenizerFast

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LLM_ADAPTERS = SHARED_DATA / "llm_adapters"
COMMONSENSE_170K_PARTS = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")  # the train files shared/data has


def commonsense_170k_stand_in(root: Path) -> Path:
    """A stand-in for LLM-Adapters' commonsense_170k.json, which shared/data lacks: the four tasks' train files it
    holds (shared/data's README: they are real slices of it), in its layout under ``root``. Tests of training
    run on the specification's --dataset common_170k with it; what it holds is not the point of any test."""
    path = root / "ft-training_set" / "commonsense_170k.json"
    if not path.is_file():
        examples = [
            e for part in COMMONSENSE_170K_PARTS for e in json.loads((LLM_ADAPTERS / part / "train.json").read_text())
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(examples))
    return root


# --data_dir value that finds all nine benchmarks and (a stand-in for) Commonsense-170K; the stand-in lives beside
# the tests' caches (conftest.py points PEFTBENCH_CACHE into a temporary folder before this is imported).
STAND_IN_ROOT = commonsense_170k_stand_in(Path(os.environ["PEFTBENCH_CACHE"]).parent / "data")
DATA_DIR = f"{LLM_ADAPTERS},{SHARED_DATA},{STAND_IN_ROOT}"


def _corpus() -> list[str]:
    from peftbench.data.prompts import build_prompt
    from peftbench.data.protocols import HIRA

    texts = []
    for folder in ("boolq", "ARC-Easy", "openbookqa", "piqa", "social_i_qa", "winogrande", "hellaswag"):
        path = next(p for p in (LLM_ADAPTERS / folder).glob("test*.json"))
        for example in json.loads(path.read_text())[:150]:
            texts.append(build_prompt(example, HIRA) + example["output"])
    return texts


def make_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_config(architecture: str, vocab_size: int, eos_id: int):
    common = {"vocab_size": vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id, "max_position_embeddings": 512}
    if architecture == "gpt_neo":
        return GPTNeoConfig(
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=256,
            **common,
        )
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **common,
    )


def make_model_dir(path: Path, architecture: str = "gpt_neo", seed: int = 0) -> Path:
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture, len(tokenizer), tokenizer.eos_token_id))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def right_padded(lengths: list[int], vocabulary: int = 97) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids, right-padded with 0, and their attention mask."""
    width = max(lengths)
    ids = torch.randint(1, vocabulary, (len(lengths), width), generator=torch.Generator().manual_seed(3))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask

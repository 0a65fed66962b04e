"""What only a GPU exercises, run on the CPU against a simulated GPU (``simulated_gpu.py``) or simulated device
capabilities: the memory probe's plan, the peak a run records, several GPUs in one process, precision."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from simulated_gpu import SimulatedGPU
from transformers import TrainingArguments

import peftbench.train.plan
import peftbench.train.recipe
from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.evaluate.runner import eval_precision
from peftbench.methods import get_method
from peftbench.models.load import load_base_model
from peftbench.models.precision import choose_precision
from peftbench.runs.checkpoint import load_trained
from peftbench.runs.records import read_records
from peftbench.train.plan import memory_probe, plan_execution
from peftbench.train.recipe import train


def _lora(folder, dtype: torch.dtype = torch.float32) -> torch.nn.Module:  # noqa: ANN001
    """A LoRA model as training builds it: loaded by transformers, which leaves it in eval mode."""
    config = RunConfig(peft_type="lora", model_name=str(folder), r_ab=4, lora_dropout=0.1)
    return get_method("lora").apply(load_base_model(str(folder), dtype), config.adapter_settings())


def _probed_peaks(model: torch.nn.Module, gpu: SimulatedGPU, micro_batch: int, **probe: object) -> dict[bool, int]:
    """The peak the probe measured for ``micro_batch`` without and with gradient checkpointing."""
    settings = {"longest": 64, "packing": False, "reserved_bytes": 0, "autocast": None} | probe
    fits = memory_probe(model, gpu, **settings)
    peaks = {}
    with gpu:
        for checkpointing in (False, True):
            fits(micro_batch, checkpointing)
            peaks[checkpointing] = gpu.peaks_read[-1]
    return peaks


def test_the_probe_measures_the_model_in_train_mode_where_checkpointing_saves_memory(tiny_neo) -> None:
    model = _lora(tiny_neo)
    assert not model.base_model.model.training  # as from_pretrained leaves it, and as the probe found it
    modes = [module.training for module in model.modules()]
    gpu = SimulatedGPU(total_bytes=2**40)
    peaks = _probed_peaks(model, gpu, micro_batch=8)
    # In eval mode transformers never checkpoints: both peaks were the same (3.21 MB for FFT in the issue).
    assert peaks[True] < 0.6 * peaks[False]
    assert [module.training for module in model.modules()] == modes  # each module's mode restored

    # A memory where only the checkpointed step fits: auto plans checkpointing instead of "nothing fits".
    gpu.total_bytes = int((peaks[True] + peaks[False]) / 2 / 0.9)
    fits = memory_probe(model, gpu, longest=64, packing=False, reserved_bytes=0, autocast=None)
    with gpu:
        plan = plan_execution("auto", batch=8, grad_acc=1, checkpointing=False, fits=fits)
    assert (plan.micro_batch, plan.checkpointing) == (8, True)


def test_the_probe_runs_the_longest_sequence_and_the_longest_packed_rows(tiny_neo) -> None:
    model = _lora(tiny_neo)
    shapes = []
    model.get_base_model().register_forward_pre_hook(lambda module, args, kwargs: shapes.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)  # fmt: skip
    _probed_peaks(model, SimulatedGPU(total_bytes=2**40), micro_batch=8, longest=67, packing=True)
    # 67 tokens pad to 72; packed rows reach twice that, half as many of them (pack_step's memory cap).
    assert shapes == [(8, 72), (4, 144)] * 2


def test_a_run_records_the_peak_of_its_training_not_of_the_memory_probe(tiny_neo, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    gpu = SimulatedGPU(total_bytes=2**50, scale=2**12)
    probed = []
    real_probe = peftbench.train.plan.memory_probe

    def spy(model, memory, longest, packing, reserved_bytes, autocast):  # noqa: ANN001, ANN202
        probed.append((longest, packing))
        return real_probe(model, memory, longest, packing, reserved_bytes, autocast)

    monkeypatch.setattr(peftbench.train.recipe, "device_memory", lambda device: gpu)
    monkeypatch.setattr(peftbench.train.plan, "memory_probe", spy)
    config = RunConfig(peft_type="lora", model_name=str(tiny_neo), r_ab=4, batch=2, grad_acc=4, max_steps=2,
                       max_train_samples=32, val_set_size=0, data_dir=data_dir,
                       output_folder=str(tmp_path / "results"))  # fmt: skip
    with gpu:
        run = train(config).run_dir
    first, last = read_records(run / "output.jsonl")[0], read_records(run / "output.jsonl")[-1]
    assert probed == [(first["data"]["longest_sequence"], True)]
    assert first["execution"]["micro_batch"] == 8 and first["execution"]["why"].startswith("auto: largest")
    probe_peak = max(gpu.peaks_read[:2])  # the probe's two shapes at micro-batch 8
    recorded = last["peak_gpu_mem_gb"] * 2**30
    # Training's sequences are shorter than the probe's longest and keep logits at label positions only.
    assert 0 < recorded < 0.8 * probe_peak
    assert recorded == pytest.approx(gpu.peak, abs=2**20)


def test_several_gpus_in_one_process_are_refused_with_the_torchrun_command(tiny_neo, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 2))
    config = RunConfig(peft_type="lora", model_name=str(tiny_neo), max_steps=1, data_dir=data_dir,
                       output_folder=str(tmp_path / "results"))  # fmt: skip
    with pytest.raises(UserError, match=r"sees 2 GPUs.*torchrun --nproc_per_node 2 train_hira.py"):
        train(config)
    assert not (tmp_path / "results").exists()


@pytest.fixture
def bf16_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


def test_full_finetuning_is_evaluated_with_the_weights_it_trained(tiny_llama, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    config = RunConfig(peft_type="fft", model_name=str(tiny_llama), lr=1e-4, max_steps=8, batch=4, warmup=0,
                       max_train_samples=64, val_set_size=0, data_dir=data_dir,
                       output_folder=str(tmp_path / "results"))  # fmt: skip
    checkpoint = train(config).checkpoint
    norm = "model.layers.0.input_layernorm.weight"
    trained = load_file(checkpoint / "model.safetensors")[norm]
    assert 2e-4 < float((trained - 1).abs().max()) < 4e-3  # LayerNorm gains moved by about lr × steps

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    precision = eval_precision(16, "fft")  # on a GPU with bf16
    assert precision.dtype == torch.float32 and precision.autocast == torch.bfloat16
    model, _, _ = load_trained(checkpoint, precision.dtype)
    torch.testing.assert_close(model.get_parameter(norm).detach(), trained, rtol=0, atol=0)
    # What bf16 storage would have tested: the untrained gains.
    rounded = load_trained(checkpoint, torch.bfloat16)[0].get_parameter(norm).detach()
    assert bool((rounded == 1).all())
    assert eval_precision(16, "lora").dtype == torch.bfloat16  # adapters: the frozen base as in training


def test_a_gpu_that_only_emulates_bf16_trains_in_fp16(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    precision = choose_precision(16)
    assert (precision.dtype, precision.fp16, precision.bf16) == (torch.float16, True, False)


def test_the_precision_policy_counts_what_peft_keeps_adapters_in(tiny_neo, bf16_gpu) -> None:
    precision = choose_precision(16)
    model = _lora(tiny_neo, precision.dtype)
    policy = precision.policy(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # PEFT keeps adapter weights in fp32 over the bf16 base: 16 bytes each with gradient and AdamW's moments.
    assert policy["weights"] == "bfloat16" and policy["trainable_dtypes"] == ["float32"]
    assert policy["trainable_state_bytes_per_param"] == 16
    assert policy["trainable_state_gb"] == round(16 * trainable / 2**30, 3)

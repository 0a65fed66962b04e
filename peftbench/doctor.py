"""``peftbench doctor``: checks this machine against what the CPU tests assume, one line per check.

    peftbench doctor                      # minutes on a GPU; on a CPU, what can run, and what it skipped and why
    peftbench doctor --out doctor.json    # the same, with every figure in a JSON report

The CPU tests prove the logic; what a GPU changes is numerics and memory. Each check runs the real code path on
this device, in the dtype training uses here (bf16 where the GPU has it natively), with random-weight models
built from a config (no hub): the GPT-Neo-1.3B geometry (on a CPU, two of its layers) and a small Llama.
A check prints its figure, its tolerance and pass, fail or skip; any fail gives exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from peftbench.data.prompts import IGNORE_INDEX
from peftbench.evaluate.loglik import score_batch
from peftbench.methods import get_method
from peftbench.methods.common import AdapterSettings
from peftbench.models.device import CudaMemory, device_memory, native_bf16
from peftbench.models.geometry import gpt_neo_geometry
from peftbench.models.kernels import use_efficient_kernels
from peftbench.runs.records import environment_record
from peftbench.train.batches import pack_step, regroup_by_length
from peftbench.train.engines import free_port
from peftbench.train.loss import keeps_packed_sequences_apart, label_positions, label_token_loss
from peftbench.train.plan import memory_probe, plan_execution, reserved_bytes

logger = logging.getLogger(__name__)
PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclasses.dataclass
class Check:
    name: str
    status: str
    figure: str
    tolerance: str = ""
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        tolerance = f" (tolerance {self.tolerance})" if self.tolerance else ""
        return f"{self.status.upper():4}  {self.name:<36} {self.figure}{tolerance}"


@dataclasses.dataclass(frozen=True)
class Machine:
    device: torch.device
    dtype: torch.dtype  # what training computes in here

    @property
    def half(self) -> bool:
        return self.dtype != torch.float32


def this_machine() -> Machine:
    if torch.cuda.is_available():
        return Machine(torch.device("cuda", 0), torch.bfloat16 if native_bf16() else torch.float16)
    return Machine(torch.device("cpu"), torch.float32)


def _llama(machine: Machine, seed: int = 0) -> PreTrainedModel:
    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024)  # fmt: skip
    config.use_cache = False  # as training sets it: with a KV cache transformers ignores packed positions
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=machine.dtype).to(machine.device)


def _neo(machine: Machine, layers: int | None = None, efficient: bool = True) -> PreTrainedModel:
    """The GPT-Neo-1.3B geometry, random weights: all 24 layers on a GPU, two on a CPU."""
    config = gpt_neo_geometry(layers or (24 if machine.device.type == "cuda" else 2))
    config.use_cache = False  # as training sets it
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model = model.to(machine.device, machine.dtype)
    if efficient:
        use_efficient_kernels(model)
    return model


def _random_step(vocabulary: int, lengths: list[list[int]], answer: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded micro-batches of random sequences, each labelled on its last ``answer`` tokens."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for group in lengths:
        width = max(group)
        ids = torch.randint(vocabulary, (len(group), width), generator=generator)
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in group])
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, n in enumerate(group):
            labels[row, n - answer : n] = ids[row, n - answer : n]
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "labels": labels})
    return batches


def _step_loss(model: PreTrainedModel, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """The step's loss as training computes it: label-position logits, summed over the step's label tokens."""
    count = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            inputs = {key: value.to(device) for key, value in batch.items() if key != "labels"}
            outputs = model(**inputs, logits_to_keep=label_positions(batch["labels"]).to(device))
            total += float(label_token_loss(outputs, batch["labels"], count))
    return total


def check_packing(machine: Machine) -> Check:
    model = _llama(machine).eval()
    if not keeps_packed_sequences_apart(model):
        return Check("packed vs regrouped loss", FAIL, "the model does not keep packed sequences apart")
    lengths = [[97, 31, 64, 12], [80, 45, 23, 57], [16, 90, 38, 70], [29, 51, 66, 41]]
    step = _random_step(model.config.vocab_size, lengths, answer=8)
    pad = model.config.vocab_size - 1
    regrouped = _step_loss(model, regroup_by_length(step, pad), machine.device)
    packed = _step_loss(model, pack_step(step, pad), machine.device)
    difference = abs(packed - regrouped) / abs(regrouped)
    tolerance = 2e-2 if machine.half else 1e-5  # bf16 logits move with the shape alone
    return Check("packed vs regrouped loss", PASS if difference <= tolerance else FAIL,
                 f"relative difference {difference:.2e}", f"{tolerance:g}",
                 {"packed": packed, "regrouped": regrouped})  # fmt: skip


def check_sdpa(machine: Machine) -> Check:
    layers = 4  # two global, two local layers
    eager, sdpa = _neo(machine, layers, efficient=False).eval(), _neo(machine, layers).eval()
    ids = torch.randint(eager.config.vocab_size, (2, 320), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :40] = 0  # left padding, as generation pads
    with torch.no_grad():
        expected = eager(input_ids=ids.to(machine.device), attention_mask=mask.to(machine.device)).logits.float()
        ours = sdpa(input_ids=ids.to(machine.device), attention_mask=mask.to(machine.device)).logits.float()
    kept = mask.bool().to(machine.device)
    difference = float((ours - expected)[kept].abs().max() / expected[kept].abs().max())
    tolerance = 2e-2 if machine.half else 1e-5
    finite = bool(torch.isfinite(ours).all())
    status = PASS if finite and difference <= tolerance else FAIL
    figure = f"max difference {difference:.2e} of the largest logit" + ("" if finite else ", non-finite logits")
    return Check("SDPA vs eager GPT-Neo logits", status, figure, f"{tolerance:g}")


def check_full_finetuning_update(machine: Machine) -> Check:
    """One AdamW step at the specification's full fine-tuning rate, fp32 master weights under half autocast."""
    if not machine.half and machine.device.type == "cuda":
        return Check("fp32-master FFT update survives", SKIP, "this GPU trains in fp32")
    half = machine.dtype if machine.half else torch.bfloat16  # on a CPU: bf16 autocast, as a GPU would run it
    model = _llama(dataclasses.replace(machine, dtype=torch.float32)).train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    ids = torch.arange(model.config.vocab_size, device=machine.device).reshape(8, -1)  # every embedding row
    scaler = torch.amp.GradScaler(machine.device.type, enabled=half == torch.float16)  # as the Trainer under fp16
    with torch.autocast(machine.device.type, dtype=half):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before, strict=True))
    fraction = changed / sum(b.numel() for b in before)
    norm = model.model.norm.weight.detach()
    survives = bool((norm.to(half).float() != norm).any())  # what bf16 storage at evaluation would erase
    return Check("fp32-master FFT update survives", PASS if fraction > 0.99 else FAIL,
                 f"{fraction:.4f} of weights moved at lr 1e-5", "> 0.99",
                 {"update_visible_only_in_fp32": survives})  # fmt: skip


def check_loglik_batching(machine: Machine) -> Check:
    model = _llama(machine).eval()
    generator = torch.Generator().manual_seed(1)
    questions = []
    for _ in range(64):
        prompt = torch.randint(4000, (int(torch.randint(20, 120, (1,), generator=generator)),), generator=generator)
        options = [prompt.tolist() + torch.randint(4000, (n,), generator=generator).tolist() for n in (1, 2, 3, 5)]
        questions.append((len(prompt), options))
    pad = model.config.vocab_size - 1
    alone = [score_batch(model, pad, [question])[0] for question in questions]
    together = score_batch(model, pad, questions)
    difference = max(abs(a - b) for x, y in zip(alone, together, strict=True)
                     for a, b in zip(x.logprobs, y.logprobs, strict=True))  # fmt: skip
    # A choice may flip only between options closer than the scores can differ.
    flipped = [q for q, (x, y) in enumerate(zip(alone, together, strict=True)) if x.best() != y.best()
               and abs(x.logprobs[x.best()] - x.logprobs[y.best()]) > 2 * difference]  # fmt: skip
    tolerance = 5e-2 if machine.half else 1e-4
    same = sum(x.best() == y.best() for x, y in zip(alone, together, strict=True))
    status = PASS if difference <= tolerance and not flipped else FAIL
    figure = f"{same}/64 choices equal, max score difference {difference:.2e} nats"
    return Check("log-likelihood batch 1 vs 64", status, figure, f"{tolerance:g} nats")


def check_memory_plan(machine: Machine) -> Check:
    """The plan ``--micro_batch auto`` makes for full fine-tuning of the GPT-Neo-1.3B geometry (fp32 master weights
    under autocast, the most state per parameter), against two real optimizer steps of two micro-batches each at
    the planned micro-batch, every token a label as the probe assumes."""
    memory = device_memory(machine.device)
    if memory is None:
        return Check("memory plan vs real peak", SKIP, "no GPU: tests/test_gpu_logic.py checks it on a simulated one")
    model = get_method("fft").apply(_neo(dataclasses.replace(machine, dtype=torch.float32)), AdapterSettings())
    reserved = reserved_bytes(model, processes=1)
    probe = memory_probe(model, memory, longest=256, packing=False, reserved_bytes=reserved, autocast=machine.dtype)
    plan = plan_execution("auto", batch=8, grad_acc=32, checkpointing=True, fits=probe)
    probe(plan.micro_batch, plan.checkpointing)  # the plan's own peak (the search probed others last)
    planned = memory.peak_bytes() + reserved
    model.train()
    if plan.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(model.config.vocab_size, (plan.micro_batch, 256), device=machine.device)
    memory.release_cache()
    memory.reset_peak()
    for _ in range(2):  # the second step runs beside AdamW's moments
        for _ in range(2):  # the second micro-batch runs beside the first one's gradients
            with torch.autocast(machine.device.type, dtype=machine.dtype):
                loss = model(input_ids=ids, labels=ids).loss / 2
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    real, held = memory.peak_bytes(), memory.held_bytes()
    ratio, total = real / planned, memory.total_bytes
    status = PASS if ratio <= 1.05 and held <= total else FAIL
    figure = (f"micro-batch {plan.micro_batch}, checkpointing {plan.checkpointing}: real peak {real / 2**30:.1f} GiB "
              f"= {ratio:.2f} of the planned {planned / 2**30:.1f} GiB; allocator held {held / 2**30:.1f} of "
              f"{total / 2**30:.0f} GiB")  # fmt: skip
    return Check("memory plan vs real peak", status, figure, "<= 1.05",
                 {"micro_batch": plan.micro_batch, "checkpointing": plan.checkpointing, "real_bytes": real,
                  "planned_bytes": planned, "reserved_by_allocator": held})  # fmt: skip


# A fixed batch of 8 sequences of 64 tokens: each of two processes takes 4, with equal token counts, so the mean of
# the two shares' mean losses is the whole batch's mean loss and their averaged gradient is its gradient.
DDP_BATCH = torch.randint(4000, (8, 64), generator=torch.Generator().manual_seed(2))


def adapter_gradients(machine: Machine, shares: int = 1, share: int = 0) -> dict[str, torch.Tensor]:
    """The LoRA adapter's gradient (float64 copies) of one share of ``DDP_BATCH``, in ``machine.dtype``; inside a
    process group, DDP all-reduces it over the group's shares during backward."""
    built = dataclasses.replace(machine, dtype=torch.float32)  # the same weights in every dtype: drawn in float32
    model = get_method("lora").apply(_llama(built), AdapterSettings(rank=8, alpha=16, dropout=0.0,
                                                                    targets=("q_proj", "v_proj")))  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # LoRA's B starts at zero, which leaves A without a gradient to compare
            parameter.data.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    model = model.to(machine.dtype).train()
    if dist.is_initialized():
        on_gpu = machine.device.type == "cuda"
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[machine.device.index] if on_gpu else None)
    ids = DDP_BATCH.chunk(shares)[share].to(machine.device)
    model(input_ids=ids, labels=ids).loss.backward()
    trained = model.module if dist.is_initialized() else model
    return {n: p.grad.detach().cpu().double() for n, p in trained.named_parameters() if p.requires_grad}


def gradient_agreement(
    reduced: dict[str, torch.Tensor], whole: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]
) -> tuple[float, float]:
    """(the largest difference between the all-reduced and the whole batch's float32 gradient, its tolerance).

    DDP guarantees the all-reduced gradient equals the whole batch's up to float32 rounding: each side rounds its
    own forward and backward, in another order where the batch is split, and the all-reduce rounds one more sum.
    The tolerance is that rounding as measured here, float32 against float64 on the whole batch, taken four times,
    and never below one float32 step of the largest gradient. Trained weights are not compared: AdamW divides by
    √v, so an element whose gradient is near zero moves by ±lr whichever way its rounding tips."""
    difference = max(float((reduced[n] - whole[n]).abs().max()) for n in whole)
    rounding = max(float((whole[n] - exact[n]).abs().max()) for n in whole)
    largest = max(float(exact[n].abs().max()) for n in exact)
    return difference, 4 * rounding + torch.finfo(torch.float32).eps * largest


def _ddp_worker(rank: int, world: int, port: int, backend: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if device.type == "cuda" else None)
    gradients = adapter_gradients(Machine(device, torch.float32), shares=world, share=rank)
    if rank == 0:
        torch.save(gradients, out)
    dist.destroy_process_group()


def check_ddp(machine: Machine) -> Check:
    gpus = torch.cuda.device_count()
    if machine.device.type == "cuda" and gpus < 2:
        return Check("DDP vs one process", SKIP, "one GPU: DDP needs two (make test-distributed checks it on CPU)")
    backend = "nccl" if machine.device.type == "cuda" else "gloo"
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "gradients.pt"
        mp.spawn(_ddp_worker, args=(2, port, backend, str(out)), nprocs=2, join=True)
        reduced = torch.load(out)
    whole = adapter_gradients(Machine(machine.device, torch.float32))
    exact = adapter_gradients(Machine(torch.device("cpu"), torch.float64))
    difference, tolerance = gradient_agreement(reduced, whole, exact)
    return Check(f"DDP ({backend}, 2 processes) vs one process", PASS if difference <= tolerance else FAIL,
                 f"max gradient difference {difference:.2e} of the all-reduced from the whole batch's",
                 f"{tolerance:.1e}")  # fmt: skip


CHECKS: tuple[tuple[str, Callable[..., Check]], ...] = (
    ("memory", check_memory_plan),
    ("packing", check_packing),
    ("sdpa", check_sdpa),
    ("fft", check_full_finetuning_update),
    ("loglik", check_loglik_batching),
    ("ddp", check_ddp),
)


def describe(machine: Machine) -> dict[str, Any]:
    described = {"device": str(machine.device), "compute_dtype": str(machine.dtype).removeprefix("torch."),
                 "python": platform.python_version(), **environment_record()}  # fmt: skip
    if machine.device.type == "cuda":
        properties = torch.cuda.get_device_properties(machine.device)
        described |= {"gpu": properties.name, "gpus": torch.cuda.device_count(), "cuda": torch.version.cuda,
                      "capability": f"{properties.major}.{properties.minor}", "native_bf16": native_bf16(),
                      "memory_gib": round(CudaMemory(machine.device).total_bytes / 2**30, 1),
                      "nccl": dist.is_nccl_available()}  # fmt: skip
    return described


def doctor(out: Path | None) -> list[Check]:
    machine = this_machine()
    described = describe(machine)
    print("  ".join(f"{key} {value}" for key, value in described.items() if key not in ("time",)))
    checks = []
    for name, run in CHECKS:
        try:
            check = run(machine)
        except Exception as exc:  # a check that crashes is a failed check, and the others still run
            logger.exception("check %s crashed", name)
            check = Check(name, FAIL, f"crashed: {exc.__class__.__name__}: {exc}")
        print(check.line(), flush=True)
        checks.append(check)
        if machine.device.type == "cuda":
            torch.cuda.empty_cache()  # each check measures from what it allocates itself
    failed = [c.name for c in checks if c.status == FAIL]
    skipped = [c.name for c in checks if c.status == SKIP]
    print(f"{len(checks) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped")
    if out is not None:
        report = {"machine": described, "checks": [dataclasses.asdict(c) for c in checks]}
        out.write_text(json.dumps(report, indent=1, default=str))
    return checks

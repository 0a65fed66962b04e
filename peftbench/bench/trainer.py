"""``peftbench bench trainer``: seconds per step of ``peftbench train`` against a plain PEFT loop on the same examples.

    peftbench bench trainer                                # SmolLM2-135M, 8 measured steps
    peftbench bench trainer --steps 4 --out ''

LoRA r 16 on q,k,v,up,down, batch 8, lr 3e-4, no validation, medians after the first step: the plain loop, then
``peftbench train`` literally (``--micro_batch spec``), by default without packing, and by default.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from peftbench.bench.common import scratch_folder, step_seconds
from peftbench.config import RunConfig
from peftbench.models.load import load_tokenizer, resolve_model_path
from peftbench.runs.records import environment_record, read_records
from peftbench.train.recipe import train

# bench trainer's ways through `peftbench train`: literal, the default without packing, the default.
TRAINER_WAYS: dict[str, dict[str, Any]] = {
    "peftbench train, --micro_batch spec": {"micro_batch": "spec"},
    "peftbench train, --micro_batch auto --no-packing": {"packing": False},
    "peftbench train, --micro_batch auto": {},
}


def bench_trainer(model_name: str, steps: int, data_dir: str, out: Path | None) -> dict[str, Any]:
    """Seconds per step of `peftbench train` (literal and default execution) against a plain PEFT loop on the
    same examples: LoRA r 16 on q,k,v,up,down, batch 8, lr 3e-4, no validation; medians after the first step."""
    with scratch_folder() as folder:
        flags = RunConfig(
            peft_type="lora", model_name=model_name, r_ab=16, lr=3e-4, batch=8, max_steps=steps + 1,
            max_train_samples=8 * (steps + 1), val_set_size=0, logging_steps=1, data_dir=data_dir,
            target_modules="q_proj,k_proj,v_proj,up_proj,down_proj", output_folder=str(folder / "runs"),
        )  # fmt: skip
        seconds = {"plain PEFT loop": _plain_loop_step_times(flags)}
        padding = {}
        for way, settings in TRAINER_WAYS.items():
            run_dir = train(dataclasses.replace(flags, **settings)).run_dir
            seconds[way] = step_seconds(run_dir)
            padding[way] = read_records(run_dir / "output.jsonl")[-1]["padding_fraction"]
    medians = {way: statistics.median(times) for way, times in seconds.items()}
    plain = medians["plain PEFT loop"]
    for way, median in medians.items():
        shares = f", padding {padding[way]:.1%}" if way in padding else ""
        print(f"  {way}: {median:.2f} s/step, x{median / plain:.3f} the plain loop{shares}", flush=True)
    ratios = {way: median / plain for way, median in medians.items()}
    report = {"model": model_name, "steps": steps, "step_times_s": seconds, "median_s": medians,
              "ratio_to_plain": ratios, "padding_fraction": padding, "environment": environment_record()}  # fmt: skip
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
        print(f"written: {out}")
    return report


def _plain_loop_step_times(flags: RunConfig) -> list[float]:
    """The loop a researcher would write: the same tokenized examples in a seeded order, PEFT's LoRA, AdamW with
    the Trainer's clipping and schedule, padding per micro-batch; step times after the first."""
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import DataCollatorForSeq2Seq, get_linear_schedule_with_warmup, set_seed

    from peftbench.data.pipeline import build_datasets
    from peftbench.methods import get_method
    from peftbench.models.load import load_base_model

    set_seed(flags.seed)
    path = resolve_model_path(flags.model_name)
    tokenizer = load_tokenizer(path)
    data = build_datasets(flags.data_settings(), tokenizer).train
    model = get_method("lora").apply(load_base_model(path, torch.float32), flags.adapter_settings()).train()
    order = RandomSampler(data, generator=torch.Generator().manual_seed(flags.seed))
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8)
    loader = DataLoader(data, batch_size=flags.batch, sampler=order, collate_fn=collate)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=flags.lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, flags.warmup, flags.max_steps)
    times = []
    for batch in loader:
        start = time.perf_counter()
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]

"""The offline demo: HiRA on the embedded SmolLM2-135M, trained on a slice of the local commonsense
mix, evaluated on a slice of every benchmark whose data is present, then the accuracy table.

    peftbench demo --data_dir ../shared/data/llm_adapters,../shared/data     (7.5 minutes on 2 CPU cores, measured)

Sized for a laptop CPU, so its accuracies are a smoke signal, not a result: a few hundred training
examples and a dozen test examples per benchmark.
"""

from __future__ import annotations

import logging
from pathlib import Path

from peftbench.config import EvalConfig, RunConfig
from peftbench.evaluate.runner import evaluate
from peftbench.report.analysis import analyze
from peftbench.train.recipe import train

logger = logging.getLogger(__name__)


def run_demo(out: Path, data_dir: str, train_samples: int, eval_samples: int) -> str:
    run = train(
        RunConfig(
            peft_type="hira",
            model_name="smollm2-135m",
            dataset="commonsense_mix",
            r_ab=16,
            target_modules="q_proj,k_proj,v_proj,up_proj,down_proj",
            batch=8,
            lr=2e-3,  # HiRA's update is scaled by W0, so it needs a far higher rate than LoRA (HiRA paper)
            warmup=4,
            max_train_samples=train_samples,
            val_set_size=32,
            eval_strategy="steps",
            eval_steps=16,
            logging_steps=4,
            output_folder=str(out / "results_hira"),
            data_dir=data_dir,
        )
    )
    evaluate(
        EvalConfig(
            ckpt=str(run.checkpoint),
            dataset="all",
            batch=eval_samples,
            beam_size=4,
            # The trained answer "the correct answer is answer3" is 6-7 tokens; longer budgets only slow beam search.
            max_new_tokens=8,
            max_eval_samples=eval_samples,
            data_dir=data_dir,
        )
    )
    table = analyze([out / "results_hira"], out / "analysis")
    print(table)
    print(f"results: {run.checkpoint} (predictions_*.json, output_*_eval.jsonl); table: {out / 'analysis'}")
    return table

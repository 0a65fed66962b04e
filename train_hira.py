"""The specification's entry point: train with --peft_type ..., or evaluate with --ckpt.

    python train_hira.py --peft_type=hira --model_name=EleutherAI/gpt-neo-1.3B --r_ab=64 \\
        --target_modules="q_proj,v_proj" --batch=8 --grad_acc=32 --lr=5e-5 --epoch=1 --load_bit=16 \\
        --enable_grad_ckpt --dataset=common_170k --seed=36 --warmup=100 --eval_strategy=steps \\
        --eval_steps=80 --output_folder=results_hira
    python train_hira.py --ckpt path/to/checkpoint --dataset boolq --batch=16 --beam_size=8

Small runs: add --model_name=smollm2-135m --max_steps=20 --max_train_samples=200 --max_eval_samples=20
--data_dir=DIR. Everything here maps flags onto peftbench's RunConfig / EvalConfig.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from peftbench.cli.flags import OneLineErrorParser, add_config_flags, build_config, run_guarded, setup_logging
from peftbench.config import EvalConfig, RunConfig
from peftbench.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_flags = add_config_flags(parser, RunConfig)
    eval_flags = add_config_flags(parser, EvalConfig, skip=train_flags)
    args = parser.parse_args(argv)
    given = set(vars(args))
    setup_logging()

    def dispatch() -> None:
        if "ckpt" in given:
            stray = given & (train_flags - {f.name for f in dataclasses.fields(EvalConfig)})
            if stray:
                raise UserError(f"--{sorted(stray)[0]} is a training flag; with --ckpt only evaluation flags apply")
            from peftbench.evaluate.runner import evaluate

            evaluate(build_config(EvalConfig, args))
        else:
            stray = given & eval_flags
            if stray:
                raise UserError(f"--{sorted(stray)[0]} applies to evaluation only (with --ckpt)")
            from peftbench.train.recipe import train

            train(build_config(RunConfig, args))

    return run_guarded(dispatch)


if __name__ == "__main__":
    sys.exit(main())

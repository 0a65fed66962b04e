"""Benchmarks that print ratios measured side by side in one run (never timed tests: machines are noisy).

    peftbench bench train                                  # GPT-Neo-1.3B geometry (6 layers) and SmolLM2-135M
    peftbench bench train --models neo-6l --repeats 7 --out bench_train.json
    peftbench bench train --models neo-1.3b --dtype bf16   # on a GPU: the full 24-layer model in bf16
    peftbench bench eval                                   # beam-4 generation vs log-likelihood scoring
    peftbench bench tokenize                               # a 170k replicate of the local mix: first and cached
    peftbench bench protocol                               # the paper preset's rates and projected wall time
    peftbench bench trainer                                # peftbench train against a plain PEFT loop
    peftbench bench study                                  # a tiny study with 1 and N local workers
    peftbench bench memory                                 # activations a training sequence keeps, by kernel

One module per benchmark, each printing its table and ratios (and writing a JSON report with --out):

    train.py     step time (median, methods alternating in one process, after warm-up) and peak memory (a
                 fresh process per method, two steps, weights included: CPU resident-set high-water mark,
                 GPU max allocated) of every method, trainable parameters, and hira/lora, peft-hira/hira ratios
    eval.py      seconds per example of beam generation (plain and prompt encoded once) and of log-likelihood
                 scoring (naive, prompt once, batched) on the same seeded examples, and their speedups
    tokenize.py  seconds to build the training set from a replicate of the local mix, then from the cache
    protocol.py  samples/s of the paper preset's training (default and literal execution), questions/s of its
                 evaluation per benchmark and mode, and the projected hours of `reproduce --preset paper`
    trainer.py   seconds per step of `peftbench train` (three executions) against a plain PEFT loop, x ratios
    study.py     a tiny study's wall time with 1 and N local workers, and the speedup
    memory.py    activations saved for backward per sequence, by attention and loss kernel (counted, not timed)
    common.py    what they share: model geometries, dtypes, the device, a scratch folder that is the cache
"""

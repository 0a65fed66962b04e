"""``peftbench bench tokenize``: a 170k replicate of the local mix built into a training set: first, then cached.

peftbench bench tokenize                               # 170,000 examples, SmolLM2-135M's tokenizer
"""

from __future__ import annotations

import json
import time

from peftbench.bench.common import scratch_folder
from peftbench.config import RunConfig
from peftbench.models.load import resolve_model_path


def bench_tokenize(examples: int, tokenizer_name: str, data_dir: str) -> dict[str, float]:
    """Seconds to build the training set (load, split, tokenize, cache) from a replicate of the local
    Commonsense mix of `examples` examples, then again from the cache, in a temporary cache folder."""
    from peftbench.data.pipeline import build_datasets
    from peftbench.data.sources import load_train_examples
    from peftbench.models.load import load_tokenizer

    tokenizer = load_tokenizer(resolve_model_path(tokenizer_name))
    local = load_train_examples("common_170k", data_dir).examples
    seconds = {}
    with scratch_folder() as folder:  # a cold cache, removed afterwards
        replicate = (local * (examples // len(local) + 1))[:examples]
        (folder / "commonsense_170k.json").write_text(json.dumps(replicate))
        config = RunConfig(dataset="common_170k", data_dir=str(folder))
        for attempt in ("first build", "from cache"):
            start = time.perf_counter()
            train = build_datasets(config.data_settings(), tokenizer).train
            seconds[attempt] = time.perf_counter() - start
            print(f"  {attempt}: {len(train)} training examples ready in {seconds[attempt]:.1f} s", flush=True)
    return seconds

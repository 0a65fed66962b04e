"""peftbench: train and evaluate HiRA, LoRA, IA3 and full fine-tuning baselines on commonsense reasoning."""

import logging

__version__ = "0.1.0"

# transformers (≥ 5.25) registers its hub kernels on import through the `kernels` package, which warns once per
# kernel that it skips a publisher check whenever the hub is offline: three lines on every command of an offline
# machine, before any command can set up logging, and none of them about peftbench's work (it loads no hub kernel).
logging.getLogger("kernels").setLevel(logging.ERROR)

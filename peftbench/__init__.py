"""peftbench: train and evaluate HiRA, LoRA, IA3 and full fine-tuning baselines on commonsense reasoning."""

__version__ = "0.1.0"

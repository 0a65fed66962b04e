"""Model geometries built from a config alone (random weights): what the benchmarks and the doctor measure on a
machine that reaches no hub."""

from __future__ import annotations

from transformers import GPTNeoConfig


def gpt_neo_geometry(layers: int) -> GPTNeoConfig:
    """GPT-Neo-1.3B's geometry: hidden 2048, 16 heads, vocab 50257, alternating global/local attention."""
    return GPTNeoConfig(
        vocab_size=50257,
        hidden_size=2048,
        num_layers=layers,
        num_heads=16,
        attention_types=[[["global", "local"], layers // 2]],
        max_position_embeddings=2048,
        window_size=256,
    )

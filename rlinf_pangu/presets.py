"""Model shapes the factory, benchmarks and configs share (official 1B/7B, and a tiny one for CPU)."""

from __future__ import annotations

from typing import Any

from .chat import VOCAB_SIZE

_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "bias": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Official openPangu-Embedded-7B(-V1.1) shapes.
    "7b": {**_COMMON, "hidden_size": 4096, "intermediate_size": 12800, "num_hidden_layers": 34,
           "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 16000000.0,
           "tie_word_embeddings": False},
    # Official openPangu-Embedded-1B shapes (tied embeddings).
    "1b": {**_COMMON, "hidden_size": 1536, "intermediate_size": 6144, "num_hidden_layers": 26,
           "num_attention_heads": 12, "num_key_value_heads": 6, "rope_theta": 4000000.0,
           "tie_word_embeddings": True},
    # Tiny, for CPU tests and the embedded demo: TP 1/2/4 and PP 1/2/3 all divide it.
    "tiny": {**_COMMON, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 6,
             "num_attention_heads": 8, "num_key_value_heads": 4, "rope_theta": 16000000.0,
             "max_position_embeddings": 2048, "tie_word_embeddings": False},
}


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return {**base, **overrides}

"""HF-side openPangu-Embedded: config, model and tokenizer that load official checkpoints
without running their remote code (which imports torch_npu and symbols gone from transformers)."""

from .configuration import PanguEmbeddedConfig, PanguConfigError
from .modeling import PanguEmbeddedForCausalLM, PanguEmbeddedModel
from .tokenization import PanguTokenizer

__all__ = [
    "PanguEmbeddedConfig",
    "PanguConfigError",
    "PanguEmbeddedModel",
    "PanguEmbeddedForCausalLM",
    "PanguTokenizer",
]

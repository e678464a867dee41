"""HF-side openPangu-Embedded: config, model and tokenizer that load official checkpoints
without running their remote code (which imports torch_npu and symbols gone from transformers)."""

from .checkpoint import PanguCheckpointError, validate_hf_dir
from .configuration import PanguConfigError, PanguEmbeddedConfig
from .modeling import PanguEmbeddedForCausalLM, PanguEmbeddedModel
from .tokenization import PanguTokenizer

__all__ = [
    "PanguEmbeddedConfig",
    "PanguConfigError",
    "PanguCheckpointError",
    "validate_hf_dir",
    "PanguEmbeddedModel",
    "PanguEmbeddedForCausalLM",
    "PanguTokenizer",
]

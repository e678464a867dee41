"""rlinf-pangu: train openPangu-Embedded with RLinf (Megatron-core trains, SGLang rolls out).

``register()`` is the one entry to every registration this package makes: transformers' Auto
classes, RLinf's model type, spec, provider, converters and reshard functions, and SGLang's
external model package. The training entry point, RLinf's ``RLINF_EXT_MODULE`` hook and SGLang's
scheduler processes all call it; it is idempotent. Which interpreter calls it, installed by what:
``rlinf_pangu/startup/__init__.py``.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"
__all__ = ["register", "MODEL_TYPE", "__version__"]

#: RLinf's model type for Pangu (``rollout.model.model_type``), which selects the sync registries.
MODEL_TYPE = "pangu"

log = logging.getLogger(__name__)
_DONE: set[str] = set()


def register_transformers() -> None:
    """Make AutoConfig / AutoModel(ForCausalLM) / AutoTokenizer load Pangu without remote code,
    with any ``trust_remote_code`` value (an official download ships its own .py files)."""
    if "transformers" in _DONE:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from .hf import PanguEmbeddedConfig, PanguEmbeddedForCausalLM, PanguEmbeddedModel, PanguTokenizer

    AutoConfig.register(PanguEmbeddedConfig.model_type, PanguEmbeddedConfig, exist_ok=True)
    AutoModel.register(PanguEmbeddedConfig, PanguEmbeddedModel, exist_ok=True)
    AutoModelForCausalLM.register(PanguEmbeddedConfig, PanguEmbeddedForCausalLM, exist_ok=True)
    AutoTokenizer.register(PanguEmbeddedConfig, slow_tokenizer_class=PanguTokenizer, exist_ok=True)
    # ...and let the registered tokenizer win over a checkpoint's auto_map code, as the config and
    # model classes already do, whatever trust_remote_code says (patches/transformers.py).
    from .patches import apply_patch
    from .patches.transformers import REGISTERED_TOKENIZER_WINS

    apply_patch(REGISTERED_TOKENIZER_WINS)
    _DONE.add("transformers")


def register(*, rlinf: bool = True, sglang: bool = True) -> None:
    """Register Pangu everywhere it needs to be known. Safe to call any number of times."""
    from .patches.core import cpu_mode_run

    register_transformers()
    if cpu_mode_run():  # only in a run whose YAML says cluster.device: cpu (see patches/cpu.py)
        from .patches import cpu

        cpu.activate()
    if rlinf and "rlinf" not in _DONE:
        from .startup.register import register_rlinf

        if register_rlinf():
            _DONE.add("rlinf")
    if sglang and "sglang" not in _DONE:
        from .startup.register import register_sglang

        register_sglang()
        _DONE.add("sglang")

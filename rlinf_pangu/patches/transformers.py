"""Patches on transformers 5.17: what SGLang 0.5.17 and RLinf 0.3.0 (written for transformers 4.x
and 5.12) expect of it.

Both change transformers' namespace, not its behaviour for anyone else: SGLang's own config
classes may re-register a model type transformers now ships, and the removed
``AutoModelForVision2Seq`` name is given back as the class that replaced it.
"""

from __future__ import annotations

from .core import before_exec, installed, mark, mod, patch, patched, upstream_source

#: Config types sglang 0.5.17 registers unconditionally at import of ``sglang.srt.configs``.
_SGLANG_REGISTERED_CONFIGS = ("qwen3_asr", "qwen3_asr_thinker")
_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
#: RLinf's FSDP model manager; the reward worker imports it too.
_FSDP_MM = "rlinf.hybrid_engines.fsdp.fsdp_model_manager"

SGLANG_EXIST_OK = "transformers.AutoConfig.register:sglang-exist_ok"


def _sglang_config_clash() -> bool:
    if not installed("sglang"):
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return any(t in CONFIG_MAPPING_NAMES for t in _SGLANG_REGISTERED_CONFIGS)


@patch(
    SGLANG_EXIST_OK,
    why="sglang 0.5.17 re-registers configs transformers 5.17 ships ('qwen3_asr' is already used by a Transformers config), which kills `import sglang`",
    module=_CONFIG_AUTO,
    applies=_sglang_config_clash,
)
def _tolerate_sglang_config_registration() -> None:
    ca = mod(_CONFIG_AUTO)
    original = ca.AutoConfig.register
    if patched(original):
        return

    def register(model_type, config, exist_ok=False):
        # Only SGLang's own config classes get the tolerance; everyone else keeps the check.
        if str(getattr(config, "__module__", "")).startswith("sglang."):
            exist_ok = True
        return original(model_type, config, exist_ok=exist_ok)

    ca.AutoConfig.register = staticmethod(mark(register, original))


VISION2SEQ = "transformers.AutoModelForVision2Seq"


def alias_vision2seq(_module=None) -> None:
    """``transformers.AutoModelForVision2Seq`` (removed in 5.x) as ``AutoModelForImageTextToText``.

    transformers replaces its module object in ``sys.modules`` with a lazy module during import;
    the alias goes on that object, which is what ``from transformers import X`` reads.
    """
    import transformers

    if "AutoModelForVision2Seq" in dir(transformers) or hasattr(type(transformers), "AutoModelForVision2Seq"):
        try:
            transformers.AutoModelForVision2Seq  # noqa: B018
            return
        except (AttributeError, ImportError):
            pass
    from transformers import AutoModelForImageTextToText

    setattr(transformers, "AutoModelForVision2Seq", AutoModelForImageTextToText)


@patch(
    VISION2SEQ,
    why="RLinf's reward worker imports fsdp_model_manager, which imports AutoModelForVision2Seq (renamed AutoModelForImageTextToText in transformers 5)",
    module=_FSDP_MM,
    applies=lambda: "AutoModelForVision2Seq" in upstream_source(_FSDP_MM)
    and "AutoModelForVision2Seq" not in upstream_source("transformers.models.auto.modeling_auto"),
    startup=True,
)
def _alias_vision2seq() -> None:
    if not before_exec(_FSDP_MM, alias_vision2seq):
        alias_vision2seq()

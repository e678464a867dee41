"""Patches on transformers 5.17: what SGLang 0.5.17 and RLinf 0.3.0 (written for transformers 4.x
and 5.12) expect of it.

The first two change transformers' namespace, not its behaviour for anyone else: SGLang's own
config classes may re-register a model type transformers now ships, and the removed
``AutoModelForVision2Seq`` name is given back as the class that replaced it. The third makes
``AutoTokenizer`` treat a tokenizer registered with ``AutoTokenizer.register`` the way
``AutoConfig``/``AutoModel`` already treat registered classes: it wins over a checkpoint's
``auto_map`` code, whatever ``trust_remote_code`` says.
"""

from __future__ import annotations

import json
import os

from .core import before_exec, installed, mark, mod, patch, patched, source_of, upstream_source

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


# --------------------------------------------------------------------------------------
# AutoTokenizer: a registered tokenizer wins over the checkpoint's auto_map code
# --------------------------------------------------------------------------------------

REGISTERED_TOKENIZER_WINS = "transformers.AutoTokenizer:registered-over-auto_map"
_TOKENIZATION_AUTO = "transformers.models.auto.tokenization_auto"


def _tokenizer_prefers_remote_code() -> bool:
    """transformers 5.17 counts a tokenizer as "explicit local code" only when its config type is
    *not* in ``TOKENIZER_MAPPING``, i.e. never for one registered with ``AutoTokenizer.register``;
    with ``auto_map`` in tokenizer_config.json and ``trust_remote_code=True`` it then imports the
    checkpoint's tokenizer file (AutoConfig and AutoModel prefer registered classes)."""
    src = source_of(_TOKENIZATION_AUTO, "AutoTokenizer.from_pretrained")
    return "explicit_local_code" in src and "type(config) not in TOKENIZER_MAPPING" in src


def registered_tokenizer_for(name_or_path: object, config: object = None) -> type | None:
    """The tokenizer class registered from outside transformers for this checkpoint's config type.

    Reads the local directory's config.json (no code runs: only ``model_type`` is looked up in
    transformers' config mapping); a hub id or a model type nobody registered gives None.
    """
    ta = mod(_TOKENIZATION_AUTO)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_cls = type(config) if config is not None else None
    if config_cls is None:
        path = os.fspath(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else ""
        try:
            with open(os.path.join(path, "config.json")) as f:
                model_type = json.load(f).get("model_type")
            config_cls = CONFIG_MAPPING[model_type]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    tokenizer = ta.TOKENIZER_MAPPING._extra_content.get(config_cls)
    if tokenizer is None or str(getattr(tokenizer, "__module__", "")).startswith("transformers."):
        return None
    return tokenizer


def make_tokenizer_from_pretrained(original):
    """``AutoTokenizer.from_pretrained`` that loads a registered tokenizer without remote code."""

    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, **kwargs):
        if kwargs.get("trust_remote_code") and registered_tokenizer_for(pretrained_model_name_or_path, kwargs.get("config")):
            kwargs["trust_remote_code"] = False  # transformers then takes the registered class
        return original(cls, pretrained_model_name_or_path, *inputs, **kwargs)

    return mark(from_pretrained, original)


@patch(
    REGISTERED_TOKENIZER_WINS,
    why="AutoTokenizer(trust_remote_code=True) imports a checkpoint's auto_map tokenizer file even for a config type whose tokenizer was registered (AutoConfig/AutoModel prefer the registered class); RLinf's FSDP actor and tokenizer helper pass trust_remote_code=True, and openPangu's own file needs torch_npu",
    module=_TOKENIZATION_AUTO,
    applies=_tokenizer_prefers_remote_code,
)
def _registered_tokenizer_wins() -> None:
    ta = mod(_TOKENIZATION_AUTO)
    fn = ta.AutoTokenizer.__dict__["from_pretrained"].__func__
    if not patched(fn):
        ta.AutoTokenizer.from_pretrained = classmethod(make_tokenizer_from_pretrained(fn))

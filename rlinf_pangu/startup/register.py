"""What ``rlinf_pangu.register()`` does in RLinf and SGLang: additive registrations (the ``pangu``
model type, the reward, the sync convertor, SGLang's external model package), after applying the
patches (``rlinf_pangu.patches``) that must precede them."""

from __future__ import annotations

import importlib.util
import logging
import os

log = logging.getLogger(__name__)

#: The package SGLang imports in every scheduler process (``SGLANG_EXTERNAL_MODEL_PACKAGE``).
SGLANG_EXTERNAL_PACKAGE = "rlinf_pangu.sglang_ext"


def register_rlinf() -> bool:
    """Register the ``pangu`` model type and every RLinf hook; False when RLinf is not installed."""
    if importlib.util.find_spec("rlinf") is None:
        return False
    from rlinf_pangu import patches

    patches.apply_all()  # first: the megatron.legacy shim must precede any RLinf Megatron import
    from rlinf.config import SupportedModel

    from rlinf_pangu import MODEL_TYPE

    if MODEL_TYPE not in SupportedModel.models:
        SupportedModel.PANGU = SupportedModel.register(MODEL_TYPE)

    from rlinf_pangu import reward

    # pangu_math in RLinf's reward registry (lazily: that package imports the math verifier).
    patches.after_import("rlinf.algorithms.rewards", reward.register)

    import resharding  # the weight-sync convertor and reshard functions (needs "pangu" above)

    resharding.register()
    return True


def register_sglang() -> None:
    """Make every SGLang process started from here on serve Pangu.

    SGLang spawns its scheduler/detokenizer processes (and ``python -m sglang.launch_server`` is
    one): they inherit ``SGLANG_EXTERNAL_MODEL_PACKAGE`` (SGLang imports that package when it
    resolves the model class) and, through ``PYTHONPATH``, the start-up hook of
    :mod:`rlinf_pangu.startup.children`, which patches and registers there before SGLang parses the config.
    This process gets the SGLang patches directly.
    """
    from rlinf_pangu.patches import apply_patch
    from rlinf_pangu.patches.transformers import SGLANG_EXIST_OK

    from . import children

    current = os.environ.get("SGLANG_EXTERNAL_MODEL_PACKAGE")
    if current and current != SGLANG_EXTERNAL_PACKAGE:
        log.warning("SGLANG_EXTERNAL_MODEL_PACKAGE=%s replaced by %s", current, SGLANG_EXTERNAL_PACKAGE)
    os.environ["SGLANG_EXTERNAL_MODEL_PACKAGE"] = SGLANG_EXTERNAL_PACKAGE
    children.install_for_children()
    apply_patch(SGLANG_EXIST_OK)


def sglang_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a separately started SGLang (``python -m sglang.launch_server``) needs.

    ``env`` (default: this process's) plus ``SGLANG_EXTERNAL_MODEL_PACKAGE`` and the start-up
    hook on ``PYTHONPATH``. ``python -m rlinf_pangu.serve --print-env`` prints it for a shell.
    """
    from .children import child_env

    out = child_env(env)
    out["SGLANG_EXTERNAL_MODEL_PACKAGE"] = SGLANG_EXTERNAL_PACKAGE
    return out

"""Hooks into RLinf and SGLang that ``rlinf_pangu.register()`` installs (additive registrations,
not patches: patches to upstream behaviour live in ``rlinf_pangu.patches``)."""

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
    from . import patches

    patches.apply_all()  # first: the megatron.legacy shim must precede any RLinf Megatron import
    from rlinf.config import SupportedModel

    from . import MODEL_TYPE

    if MODEL_TYPE not in SupportedModel.models:
        SupportedModel.PANGU = SupportedModel.register(MODEL_TYPE)
    return True


def register_sglang() -> None:
    """Point SGLang's external model loader at our package; scheduler processes inherit the env."""
    current = os.environ.get("SGLANG_EXTERNAL_MODEL_PACKAGE")
    if current and current != SGLANG_EXTERNAL_PACKAGE:
        log.warning("SGLANG_EXTERNAL_MODEL_PACKAGE=%s replaced by %s", current, SGLANG_EXTERNAL_PACKAGE)
    os.environ["SGLANG_EXTERNAL_MODEL_PACKAGE"] = SGLANG_EXTERNAL_PACKAGE

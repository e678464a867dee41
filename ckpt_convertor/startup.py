"""RLinf start-up hook: with ``actor.megatron.use_hf_ckpt: True`` and a Pangu checkpoint, this
converter runs instead of RLinf's ``convert_hf_to_mg``.

RLinf's runners call ``convert_hf_to_mg(hf_model_path, ckpt_cfg)`` (``ckpt_cfg`` is
``actor.megatron.ckpt_convertor``) once in the driver before the actor starts, and the actor
then loads ``megatron.load = ckpt_cfg.save_path``. :func:`dispatching_converter` wraps RLinf's
function with the same signature: Pangu checkpoints go to :func:`convert_on_startup` (cached,
atomic, locked), anything else to RLinf's original. ``rlinf_pangu.patches.rlinf`` installs it.

Keys read from ``ckpt_cfg`` (RLinf's own, plus optional ones of ours):
``save_path``, ``tensor_model_parallel_size``, ``pipeline_model_parallel_size``;
optional ``virtual_pipeline_model_parallel_size``, ``dtype`` (bf16/fp16/fp32; default: the
checkpoint's), ``norm_names`` (local/te). When ``ckpt_cfg`` sits inside the actor config, the
actor's ``model.*_parallel_size`` are checked against it (a mismatch is what makes Megatron miss
rank files) and ``spec_name``/``te_ln_linear_qkv`` choose the norm names (Transformer Engine
fuses the norms into ``linear_qkv``/``linear_fc1``). With the TE spec, Megatron's strict load
reports the TE modules' ``_extra_state`` (FP8 metadata, not weights) as missing and falls back to
its non-strict load, which loads every weight: the same as for RLinf's own converter.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Callable

from .cached import ensure_megatron
from .errors import ConversionError

log = logging.getLogger(__name__)


def is_pangu_checkpoint(hf_dir: str | Path) -> bool:
    """True when ``hf_dir/config.json`` describes openPangu-Embedded (JSON only; no code runs)."""
    try:
        cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(cfg, dict):
        return False
    archs = cfg.get("architectures") or []
    return str(cfg.get("model_type", "")).lower().startswith("pangu") or any(
        str(a).startswith("PanguEmbedded") for a in archs
    )


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    getter = getattr(cfg, "get", None)
    if getter is not None:
        try:
            return getter(key, default)
        except Exception:  # omegaconf interpolation errors and the like
            return default
    return getattr(cfg, key, default)


def _actor_cfg(ckpt_cfg: Any) -> Any:
    """The actor config that holds ``megatron.ckpt_convertor`` (OmegaConf keeps parent links)."""
    try:
        megatron = ckpt_cfg._get_parent()
        return megatron._get_parent() if megatron is not None else None
    except AttributeError:
        return None


#: RLinf/Pangu spec names -> Transformer Engine modules? (None: TE when it is installed, as
#: RLinf's provider passes ``use_te=HAVE_TE``; ``pangu`` also follows ``transformer_impl``).
_SPEC_USES_TE: dict[str, bool | None] = {
    "pangu": None, "pangu_local": False, "pangu_te": True,
    "local_gpt": False, "te_gpt": True, "decoder_gpt": None, "": None,
}


def _te_installed() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def _norm_names(ckpt_cfg: Any, actor: Any) -> str:
    """``local`` or ``te``: the norm parameter names the actor's Megatron model will have."""
    explicit = _get(ckpt_cfg, "norm_names")
    if explicit:
        return str(explicit)
    te_flag = _get(ckpt_cfg, "te_ln_linear_qkv")  # RLinf's own converter key
    if te_flag is not None:
        return "te" if te_flag else "local"
    spec = str(_get(actor, "spec_name", "pangu") or "")
    uses_te = _SPEC_USES_TE.get(spec, False)
    if spec == "pangu":  # the model's own rule: transformer_impl and what is installed
        from rlinf_pangu.megatron.config import choose_spec

        uses_te = choose_spec(spec, _get(_get(actor, "megatron"), "transformer_impl"), _te_installed()).te
    elif uses_te is None:
        uses_te = _te_installed()
    return "te" if uses_te else "local"


def settings_from_config(hf_model_path: str, ckpt_cfg: Any) -> dict[str, Any]:
    """The conversion arguments RLinf's config asks for (see module doc)."""
    save_path = _get(ckpt_cfg, "save_path")
    if not save_path:
        raise ConversionError("actor.megatron.ckpt_convertor.save_path is not set")
    tp = int(_get(ckpt_cfg, "tensor_model_parallel_size", 1) or 1)
    pp = int(_get(ckpt_cfg, "pipeline_model_parallel_size", 1) or 1)
    vpp = _get(ckpt_cfg, "virtual_pipeline_model_parallel_size")
    actor = _actor_cfg(ckpt_cfg)
    model = _get(actor, "model")
    if vpp is None:
        vpp = _get(model, "virtual_pipeline_model_parallel_size")
    for key, value in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp)):
        run = _get(model, key)
        if run is not None and int(run) != value:
            raise ConversionError(
                f"actor.megatron.ckpt_convertor.{key}={value} but actor.model.{key}={run}: "
                "Megatron would look for rank files the conversion does not write"
            )
    return {
        "hf_dir": hf_model_path,
        "out": save_path,
        "tp": tp,
        "pp": pp,
        "vpp": None if vpp is None else int(vpp),
        "dtype": _get(ckpt_cfg, "dtype"),
        "norm_names": _norm_names(ckpt_cfg, actor),
    }


def convert_on_startup(hf_model_path: str, ckpt_cfg: Any) -> Path:
    """What RLinf's start-up conversion does, for Pangu: make ``save_path`` hold the Megatron
    checkpoint, converting only when the cached one does not match."""
    s = settings_from_config(hf_model_path, ckpt_cfg)
    out, converted = ensure_megatron(s["hf_dir"], s["out"], s["tp"], s["pp"], vpp=s["vpp"], dtype=s["dtype"],
                                     norm_names=s["norm_names"])
    log.info("Pangu Megatron checkpoint %s at %s", "converted" if converted else "reused from cache", out)
    return out


def dispatching_converter(original: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """RLinf's ``convert_hf_to_mg`` with Pangu checkpoints routed to :func:`convert_on_startup`."""
    if getattr(original, "__rlinf_pangu_dispatch__", False):
        return original

    @functools.wraps(original)
    def convert_hf_to_mg(hf_ckpt_path: str, ckpt_cfg: Any) -> Any:
        if is_pangu_checkpoint(hf_ckpt_path):
            return convert_on_startup(hf_ckpt_path, ckpt_cfg)
        return original(hf_ckpt_path, ckpt_cfg)

    convert_hf_to_mg.__rlinf_pangu_dispatch__ = True  # type: ignore[attr-defined]
    convert_hf_to_mg.__wrapped_rlinf__ = original  # type: ignore[attr-defined]
    return convert_hf_to_mg

"""How RLinf's ``MegatronModelManager`` builds Pangu: ``get_specs`` and ``model_provider_func``.

RLinf 0.3.0 builds every Megatron model in ``MegatronModelManager.model_provider_func(self,
pre_process, post_process)`` as ``GPTModel(config, get_specs(spec_name, ...), ...)``. Three things
stop that from building Pangu (``rlinf_pangu.patches.rlinf`` installs the replacements below):

* ``get_specs`` is a closed dict that builds every spec eagerly, the Transformer Engine one
  included, so it fails without TE and cannot learn a new spec name. :func:`get_specs` builds
  only the spec asked for and knows the Pangu names (:data:`~.config.PANGU_SPEC_NAMES`).
* megatron-core >= 0.17 calls the provider as ``(pre_process=, post_process=, config=,
  pg_collection=[, vp_stage=])``; 0.3.0's two-argument signature raises ``TypeError``.
  :func:`model_provider_func` takes both forms (upstream's newer one is
  ``(pre_process, post_process, config=None, **kwargs)``) and forwards ``vp_stage`` /
  ``pg_collection`` to ``GPTModel`` so virtual pipeline stages get their own layers.
* Pangu needs its spec and a checked config: :func:`pangu_model_provider`.

The critic path is the same model with the output layer replaced by RLinf's one-output value
head (``is_dedicated_critic_model``), exactly as RLinf does for its own models, so PPO critics
load the actor's checkpoint non-strictly and ``custom_forward(value_model=True)`` reads one
value per token.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

from .config import PANGU_SPEC_NAMES, check_transformer_config
from .spec import get_pangu_spec

__all__ = [
    "is_pangu_spec",
    "get_specs",
    "make_get_specs",
    "pangu_model_provider",
    "make_model_provider_func",
    "UPSTREAM_SPEC_BUILDERS",
]

log = logging.getLogger(__name__)


def is_pangu_spec(spec_name: str | None) -> bool:
    return spec_name in PANGU_SPEC_NAMES


# --------------------------------------------------------------------------------------
# get_specs: lazy, extensible
# --------------------------------------------------------------------------------------


def _decoder_gpt(config, use_te):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    return get_gpt_decoder_block_spec(config, use_te)


def _local_gpt(config, use_te):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(
        getattr(config, "num_moe_experts", None), getattr(config, "moe_grouped_gemm", False)
    )


def _te_gpt(config, use_te):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(
        getattr(config, "num_moe_experts", None),
        getattr(config, "moe_grouped_gemm", False),
        qk_layernorm=getattr(config, "qk_layernorm", False),
    )


#: RLinf 0.3.0's spec names, each built only when asked for (same arguments as upstream).
UPSTREAM_SPEC_BUILDERS: dict[str, Callable[[Any, bool], Any]] = {
    "decoder_gpt": _decoder_gpt,
    "local_gpt": _local_gpt,
    "te_gpt": _te_gpt,
}


def get_specs(spec_name: str, transformer_config: Any = None, use_te: bool = False):
    """Drop-in for RLinf's ``get_specs``: the Pangu names plus upstream's, built lazily."""
    if use_te and spec_name == "":
        spec_name = "te_gpt"  # upstream's default when TE is present
    if is_pangu_spec(spec_name):
        return get_pangu_spec(spec_name, transformer_config, use_te)
    try:
        builder = UPSTREAM_SPEC_BUILDERS[spec_name]
    except KeyError:
        raise ValueError(
            f"Spec name {spec_name!r} is not recognized (known: "
            f"{sorted(UPSTREAM_SPEC_BUILDERS) + list(PANGU_SPEC_NAMES)})"
        ) from None
    return builder(transformer_config, use_te)


def make_get_specs(original: Callable) -> Callable:
    """The replacement for RLinf's ``get_specs`` (keeps the original reachable for tests)."""

    @functools.wraps(original)
    def patched(spec_name, transformer_config=None, use_te=False):
        return get_specs(spec_name, transformer_config, use_te)

    patched.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return patched


# --------------------------------------------------------------------------------------
# model_provider_func
# --------------------------------------------------------------------------------------


@functools.cache
def _gpt_model_params() -> frozenset[str]:
    from megatron.core.models.gpt import GPTModel

    return frozenset(inspect.signature(GPTModel.__init__).parameters)


def _megatron_extras(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``vp_stage`` / ``pg_collection`` etc. that this megatron-core's GPTModel accepts."""
    accepted = _gpt_model_params()
    extras = {k: v for k, v in kwargs.items() if v is not None and k in accepted}
    ignored = sorted(k for k, v in kwargs.items() if v is not None and k not in accepted)
    if ignored:
        log.debug("model_provider_func: GPTModel does not take %s; ignored", ignored)
    return extras


def pangu_model_provider(manager: Any, pre_process: bool = True, post_process: bool = True, config: Any = None, **kwargs: Any):
    """Build one Pangu ``GPTModel`` (chunk) for a ``MegatronModelManager``.

    ``manager.transformer_config`` (built by RLinf from the validated YAML + HF config) is the
    config, as in upstream; the ``config`` megatron-core passes is built from Megatron's own
    args and is ignored, like upstream's newer provider does. It is checked for Pangu's
    architecture first, so a YAML that lost e.g. ``add_qkv_bias`` fails here by name.
    """
    from megatron.core.models.gpt import GPTModel

    tc = manager.transformer_config
    check_transformer_config(tc)
    model_cfg = manager._cfg.model
    critic = bool(getattr(manager, "is_dedicated_critic_model", False))
    use_te = _manager_use_te()
    model = GPTModel(
        config=tc,
        transformer_layer_spec=get_pangu_spec(manager.spec_name, tc, use_te),
        vocab_size=model_cfg.padded_vocab_size,
        max_sequence_length=model_cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        # A critic's value head replaces the output layer, so there is nothing to tie (with
        # tying and PP > 1 Megatron would all-reduce the value head's grad with the embedding's).
        share_embeddings_and_output_weights=bool(model_cfg.share_embeddings_and_output_weights) and not critic,
        position_embedding_type=model_cfg.position_embedding_type,
        rotary_percent=model_cfg.rotary_percentage,
        seq_len_interpolation_factor=model_cfg.get("seq_len_interpolation_factor", None),
        rotary_base=model_cfg.rotary_base,
        **_megatron_extras(kwargs),
    )
    if critic and post_process:
        model.output_layer = _value_head(model_cfg)
    return model


def _manager_use_te() -> bool:
    from rlinf.hybrid_engines.megatron import megatron_model_manager as mm

    return bool(getattr(mm, "HAVE_TE", False))


def _value_head(model_cfg: Any):
    """RLinf's own value head (hidden -> 1, replicated over TP), as its critic path uses."""
    from rlinf.hybrid_engines.megatron.megatron_model_manager import LinearForLastLayer

    return LinearForLastLayer(
        input_size=model_cfg.hidden_size,
        output_size=1,
        sequence_parallel=bool(model_cfg.get("sequence_parallel", False)),
    )


def _accepts_kwargs(fn: Callable) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def make_model_provider_func(original: Callable) -> Callable:
    """The replacement for ``MegatronModelManager.model_provider_func``.

    Pangu spec names build through :func:`pangu_model_provider`; other models go to the
    original, with megatron-core's extra keywords dropped when it cannot take them.
    """
    takes_kwargs = _accepts_kwargs(original)

    def model_provider_func(self, pre_process=True, post_process=True, config=None, **kwargs):
        if is_pangu_spec(getattr(self, "spec_name", None)):
            return pangu_model_provider(self, pre_process, post_process, config=config, **kwargs)
        if takes_kwargs:
            return original(self, pre_process, post_process, config=config, **kwargs)
        if kwargs.get("vp_stage") is not None:
            raise NotImplementedError(
                "RLinf 0.3.0's model_provider_func cannot build virtual pipeline stages with this "
                "megatron-core (it does not pass vp_stage to GPTModel); drop "
                "virtual_pipeline_model_parallel_size or use a Pangu spec"
            )
        return original(self, pre_process, post_process)

    functools.update_wrapper(model_provider_func, original, updated=())
    del model_provider_func.__wrapped__  # keep our own signature visible to inspect.signature
    model_provider_func.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return model_provider_func

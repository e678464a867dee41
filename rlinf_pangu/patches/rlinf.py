"""Patches on RLinf 0.3.0: what its GRPO loop needs to build, train and serve Pangu on the pinned
stack (megatron-core 0.19, sglang 0.5.17, transformers 5.17, torch 2.11).

Sections, in the order a step meets them: the Megatron model (spec, provider, args, forward),
the start-up checkpoint conversion, the weight sync, RLinf's SGLang rollout, and the training
loop. Each patch is declared next to its body. The ``startup=True`` ones fix import-time
failures or must be in place before ``register()`` runs in a child interpreter (Ray workers and
SGLang's scheduler processes import RLinf first): :mod:`rlinf_pangu.startup.children` arms them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.abc
import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable

from .core import HookedLoader, after_import, before_exec, mark, mod, patch, patched, source_of, upstream_file, upstream_source

log = logging.getLogger("rlinf_pangu.patches")

_MM = "rlinf.hybrid_engines.megatron.megatron_model_manager"
_INIT = "rlinf.utils.initialize"
_RLINF_CONVERTER = "rlinf.utils.ckpt_convertor.megatron_convertor.convert_hf_to_mg"
_RESHARD_UTILS = "rlinf.utils.resharding.utils"
_RESHARD_CONFIG = "rlinf.utils.resharding.reshard_config"
_MACTOR = "rlinf.workers.actor.megatron_actor_worker"
_SGL_GATE = "rlinf.workers.rollout.sglang"
_SGL_WORKER = "rlinf.workers.rollout.sglang.sglang_worker"
_SGL_SCHED = "rlinf.hybrid_engines.sglang.common.sgl_scheduler"
_SGL_TM = "rlinf.hybrid_engines.sglang.common.tokenizer_manager"
_CLUSTER = "rlinf.scheduler.cluster.cluster"
_DATASET = "rlinf.data.datasets.reasoning"
_RUNNER = "rlinf.runners.reasoning_runner"
_MWORKER = "rlinf.workers.megatron_worker"


# ======================================================================================
# The Megatron model: spec, provider, config checks, Megatron's args, the forward
# ======================================================================================


@patch(
    "rlinf.get_specs",
    why="RLinf's get_specs builds every spec eagerly (the TE one fails without TE) and cannot learn Pangu's spec",
    module=_MM,
    applies=lambda: "pangu" not in source_of(_MM, "get_specs").lower(),
    startup=True,
)
def _lazy_get_specs() -> None:
    def install(mm) -> None:
        from rlinf_pangu.megatron.provider import make_get_specs

        if not patched(mm.get_specs):
            mm.get_specs = make_get_specs(mm.get_specs)

    after_import(_MM, install)


@patch(
    "rlinf.model_provider_func",
    why="RLinf 0.3.0's provider takes (pre_process, post_process) only (megatron-core>=0.17 passes config/pg_collection/vp_stage) and cannot build Pangu",
    module=_MM,
    applies=lambda: "pangu" not in source_of(_MM, "MegatronModelManager.model_provider_func").lower(),
    startup=True,
)
def _pangu_model_provider() -> None:
    def install(mm) -> None:
        from rlinf_pangu.megatron.provider import make_model_provider_func

        cls = mm.MegatronModelManager
        if not patched(cls.model_provider_func):
            cls.model_provider_func = make_model_provider_func(cls.model_provider_func)

    after_import(_MM, install)


@patch(
    "rlinf.validate_model_cfg_by_hf_config",
    why="RLinf's HF-config validation does not check Pangu's architecture keys or its TP/PP divisibility (errors would surface inside Megatron workers)",
    module="rlinf.config",
    applies=lambda: "pangu" not in source_of("rlinf.config", "validate_model_cfg_by_hf_config").lower(),
)
def _validate_pangu_cfg() -> None:
    rc = mod("rlinf.config")
    original = rc.validate_model_cfg_by_hf_config
    if getattr(original, "__rlinf_pangu_checks__", False):  # another patch may wrap it too (rope_theta)
        return

    def validate_model_cfg_by_hf_config(cfg, hf_model_path):
        cfg = original(cfg, hf_model_path)
        from transformers import AutoConfig

        from rlinf_pangu.megatron.config import check_rlinf_model_cfg, is_pangu_hf_config

        hf_config = AutoConfig.from_pretrained(hf_model_path, trust_remote_code=True)
        if is_pangu_hf_config(hf_config):
            check_rlinf_model_cfg(cfg, hf_config)
        return cfg

    validate_model_cfg_by_hf_config.__rlinf_pangu_checks__ = True  # type: ignore[attr-defined]
    rc.validate_model_cfg_by_hf_config = mark(validate_model_cfg_by_hf_config, original)


# --- Megatron's global args (rlinf-compat #19) ----------------------------------------

MEGATRON_ARGS = "rlinf.set_megatron_args:complete"


@functools.lru_cache(maxsize=1)
def megatron_arg_defaults() -> dict[str, Any]:
    """Every Megatron-LM argument with its argparse default (megatron-core's ``megatron.training``)."""
    from megatron.training.arguments import add_megatron_arguments

    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False, add_help=False))
    return vars(parser.parse_args([]))


#: Megatron arguments whose argparse default is a dtype *name* that ``validate_args`` (which cannot
#: run on RLinf's args) maps to a ``torch.dtype``; stored as RLinf's ``${torch.dtype:...}``.
DTYPE_ARGS = (
    "main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype",
    "mamba_inference_conv_states_dtype", "mamba_inference_ssm_states_dtype", "mamba_training_ssm_states_dtype",
    "megatron_fsdp_main_params_dtype", "megatron_fsdp_main_grads_dtype", "megatron_fsdp_grad_comm_dtype",
)
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "uint8"}


def _megatron_value(key: str, value: Any) -> Any:
    if key in DTYPE_ARGS and isinstance(value, str):
        name = _DTYPE_NAMES.get(value)
        return "${torch.dtype:" + name + "}" if name else None
    return value


def complete_megatron_args(args: Any) -> list[str]:
    """Add, in place, every Megatron argument ``args`` (RLinf's DictConfig) lacks; returns the names.

    RLinf keys always win: only absent keys are added, with Megatron's own defaults, which is what
    ``megatron.training`` would see had it parsed its command line itself.
    """
    from omegaconf import open_dict

    added = []
    with open_dict(args):
        for key, value in megatron_arg_defaults().items():
            if key not in args:
                args[key] = _megatron_value(key, value)
                added.append(key)
    return added


def make_complete_set_args(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def set_args(args):
        added = complete_megatron_args(args)
        log.debug("Megatron args: %d defaults added to RLinf's %d keys", len(added), len(args) - len(added))
        return original(args)

    return mark(set_args, original)


def _megatron_args_incomplete() -> bool:
    init = upstream_source(_INIT)
    training = upstream_source("megatron.training.training")
    return "extract_selected_fields" in init and "perform_rl_step" in training and "perform_rl_step" not in init


@patch(
    MEGATRON_ARGS,
    why="RLinf builds Megatron's global args from its own YAML field list; megatron-core 0.19's megatron.training reads ~800 argparse keys it lacks (perform_rl_step ...): add the missing ones with Megatron's defaults",
    module=_INIT,
    applies=_megatron_args_incomplete,
    startup=True,
)
def _complete_megatron_args() -> None:
    # set_megatron_args() (called again in setup_model_and_optimizer) hands its args to the
    # module-global set_args: wrapping that catches every rebuild.
    def install(init) -> None:
        if not patched(init.set_args):
            init.set_args = make_complete_set_args(init.set_args)

    after_import(_INIT, install)


# --- Sequence packing needs Transformer Engine ----------------------------------------

NO_PACKING_WITHOUT_TE = "rlinf.custom_forward:no-packing-without-TE"


class _CausalOnly:
    """Calls the model without RLinf's 2-D padding mask (megatron-core's own attention wants a 4-D
    one and builds the causal mask itself when given none). Exact here: RLinf's unpacked path
    removes the left padding, so every row is right-padded and a valid token only ever attends to
    valid tokens before it; padded positions are dropped afterwards."""

    def __init__(self, model):
        self._model = model

    def __call__(self, *args, **kwargs):
        kwargs["attention_mask"] = None
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        from megatron.training.training import unwrap_model

        return getattr(unwrap_model(self._model), name)


def make_custom_forward(original: Callable) -> Callable:
    """RLinf's ``custom_forward``, packed only for a model whose attention is Transformer Engine's.

    RLinf packs every micro-batch into THD form (``packed_seq_params``); only TE's attention runs
    that, megatron-core's own ``DotProductAttention`` asserts. A model built with TE attention
    (``rlinf_pangu.megatron.spec.packs_sequences``) gets RLinf's packed forward unchanged; any
    other one (TE absent, or ``actor.megatron.transformer_impl: local``) gets RLinf's own unpacked
    path (left padding removed), which computes the same log-probs; its 2-D padding mask is left
    to TE too, so the model is called causal-only (:class:`_CausalOnly`).
    """

    def custom_forward(model, *args, **kwargs):
        from rlinf_pangu.megatron.spec import packs_sequences

        if packs_sequences(model):
            return original(model, *args, **kwargs)
        kwargs["pack_seqs"] = False
        return original(_CausalOnly(model), *args, **kwargs)

    return mark(custom_forward, original)


@patch(
    NO_PACKING_WITHOUT_TE,
    why="RLinf's Megatron forward always packs sequences (THD), which only Transformer Engine's attention runs; a model built without TE attention (TE absent, or transformer_impl: local) uses RLinf's own unpacked path, a TE model RLinf's packed forward unchanged",
    module=_MM,
    # installed wherever upstream packs: whether a model packs is known only once the YAML's
    # transformer_impl has built it, and TE models pass straight through
    applies=lambda: "pack_seqs=True" in upstream_source(_MM),
    startup=True,
)
def _no_packing_without_te() -> None:
    def install(mm) -> None:
        cls = mm.MegatronModelManager
        fn = cls.__dict__["custom_forward"]
        original = fn.__func__ if isinstance(fn, staticmethod) else fn
        if not patched(original):
            cls.custom_forward = staticmethod(make_custom_forward(original))

    after_import(_MM, install)


# ======================================================================================
# The start-up HF -> Megatron conversion
# ======================================================================================

CKPT_CONVERT_DISPATCH = "rlinf.convert_hf_to_mg:pangu"


def _rlinf_converter_lacks_pangu() -> bool:
    """RLinf's converter knows a model only through its packaged default_args.yaml (read as
    text: importing the converter costs seconds)."""
    spec = importlib.util.find_spec("rlinf")
    if spec is None or not spec.submodule_search_locations:
        return False
    yaml_path = Path(spec.submodule_search_locations[0]) / "utils/ckpt_convertor/megatron_convertor/default_args.yaml"
    return yaml_path.is_file() and "pangu" not in yaml_path.read_text().lower()


@patch(
    CKPT_CONVERT_DISPATCH,
    why="RLinf's convert_hf_to_mg has no Pangu entry, its GQA path drops o_proj.bias, and it reconverts on every start: Pangu goes through ckpt_convertor (cached, atomic, locked)",
    module=_RLINF_CONVERTER,
    applies=_rlinf_converter_lacks_pangu,
)
def _route_pangu_conversion() -> None:
    def install(converter) -> None:
        from ckpt_convertor.startup import dispatching_converter

        converter.convert_hf_to_mg = dispatching_converter(converter.convert_hf_to_mg)

    after_import(_RLINF_CONVERTER, install)


# ======================================================================================
# The weight sync
# ======================================================================================

RESHARD_DISPATCH = "rlinf.get_reshard_fn:pangu"


def _rlinf_has_no_pangu_reshard() -> bool:
    return any(
        "pangu" not in source_of(_RESHARD_UTILS, getter).lower()
        for getter in ("get_tp_reshard_fn", "get_pp_reshard_fn")
    )


@patch(
    RESHARD_DISPATCH,
    why="RLinf's get_tp/pp_reshard_fn are hard-coded if/else chains (imported by name into reshard_config) that raise for any model type they do not list",
    module=_RESHARD_CONFIG,
    applies=_rlinf_has_no_pangu_reshard,
)
def _dispatch_reshard_fns() -> None:
    # Installed when reshard_config is imported (it pulls in megatron.core, too heavy for register()).
    def install(rc) -> None:
        import resharding

        ru = mod(_RESHARD_UTILS)
        for getter, table in (("get_tp_reshard_fn", resharding.TP_RESHARD_FNS), ("get_pp_reshard_fn", resharding.PP_RESHARD_FNS)):
            original = getattr(ru, getter)
            if not patched(original):

                def dispatch(model_type, _original=original, _table=table):
                    target = _table.get(getattr(model_type, "value", model_type))
                    return resharding.resolve(target) if target is not None else _original(model_type)

                setattr(ru, getter, mark(dispatch, original))
            setattr(rc, getter, getattr(ru, getter))  # ReshardConfig calls the name it imported

    after_import(_RESHARD_CONFIG, install)


ROLLOUT_SYNC_SETUP = "rlinf.MegatronActor:rollout-sync-setup"


def _set_bucket_capacity(actor) -> None:
    capacity = actor.cfg.actor.get("sync_bucket_capacity", None)
    if capacity is not None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"actor.sync_bucket_capacity must be a positive number of bytes, got {capacity!r}")
        actor.rollout_weights_reshard.bucket_capacity = capacity
    log.info("weight-sync bucket capacity: %d MiB", actor.rollout_weights_reshard.bucket_capacity // 2**20)


def _choose_packing(actor) -> None:
    from resharding.convertor import PanguConvertor

    from rlinf_pangu.packed_bucket import rollout_reads_packed

    convertor = getattr(getattr(actor.rollout_weights_reshard, "config", None), "_convertor", None)
    if not isinstance(convertor, PanguConvertor):
        return  # another model type, the mcore format, or a caller's own convert_fn
    rollout = actor.cfg.rollout
    convertor.packed, why = rollout_reads_packed(rollout.get("rollout_backend", "sglang"), rollout.model.model_path)
    log.info("weight-sync buckets: %s (%s)", "one packed buffer each" if convertor.packed else "a tensor per HF name", why)


def sync_path(actor) -> str:
    """How this actor's buckets reach the rollout, as RLinf's ``sync_model_to_rollout`` chooses it:
    it branches on the ``rollout_sync_mode`` the placement gave the actor. COLLOCATED turns every
    tensor into a CUDA IPC handle (``reduce_tensor``); DISAGGREGATED sends the tensors themselves
    with RLinf's collective ``send`` to each mapped rollout rank (NCCL for GPU tensors, gloo for
    CPU ones). The CPU mode forces DISAGGREGATED even for a colocated placement (CPU tensors have
    no IPC handle), so the placement mode is named too."""
    sync_mode = getattr(getattr(actor, "rollout_sync_mode", None), "name", "?")
    placement_mode = getattr(getattr(actor, "placement_mode", None), "name", "?")
    if sync_mode == "COLLOCATED":
        transport = "as CUDA IPC handles"
    else:
        device = "cpu"
        with contextlib.suppress(Exception):
            device = next(actor.model[0].parameters()).device.type
        transport = f"over the collective ({'gloo' if device == 'cpu' else 'nccl'} send/recv)"
    dst = getattr(actor, "_weight_dst_rank_in_rollout", None)
    return (f"weight-sync path: placement {placement_mode}, rollout sync {sync_mode}: buckets go {transport} "
            f"to rollout rank(s) (dp, tp) {dst}")


def make_rollout_sync_setup(original: Callable) -> Callable:
    """After RLinf's ``MegatronActor.init_worker_customize`` built the rollout sync: give it the
    bucket capacity ``actor.sync_bucket_capacity`` (bytes; the key and unit RLinf's FSDP actor
    already reads; absent: RLinf's 128 MiB), let Pangu's convertor pack buckets only when the
    rollout is the class that unpacks them (``rlinf_pangu.packed_bucket.rollout_reads_packed``),
    and log the path the buckets take (:func:`sync_path`)."""

    def init_worker_customize(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        _set_bucket_capacity(self)
        _choose_packing(self)
        log.info(sync_path(self))
        return out

    return mark(init_worker_customize, original)


@patch(
    ROLLOUT_SYNC_SETUP,
    why="RLinf's Megatron actor builds its rollout sync from the model type alone: no bucket capacity (ReshardConfig's 128 MiB; a 7B sync measured 0.30 s vs 0.10 s in 2 GiB buckets) and no say in whether the rollout can unpack Pangu's packed buckets",
    module=_MACTOR,
    applies=lambda: "rollout_weights_reshard = MegatronCoreWeightReshard" in upstream_source(_MACTOR)
    and "bucket_capacity" not in upstream_source(_MACTOR)
    and "get_mg2hf_convertor(self.model_type, self, strict=True)" in upstream_source(_RESHARD_CONFIG),
)
def _rollout_sync_setup() -> None:
    def install(ma) -> None:
        fn = ma.MegatronActor.init_worker_customize
        if not patched(fn):
            ma.MegatronActor.init_worker_customize = make_rollout_sync_setup(fn)

    after_import(_MACTOR, install)


INFERENCE_RESHARD = "rlinf.ReshardConfig:pangu-megatron-target"


def make_reshard_post_init(original: Callable) -> Callable:
    """``ReshardConfig.__post_init__`` that gives a Pangu config with a Megatron target
    (``reshard_weights_format="mcore"``) the TP reshard that keeps Megatron's vocabulary split
    (``tp_reshard_fn_pangu(vocab="megatron")``); anything else is left to RLinf (and, for the
    rollout's SGLang format, to Pangu's convertor, which picks its own)."""

    def __post_init__(self, *args, **kwargs):
        from rlinf_pangu import MODEL_TYPE

        model_type = getattr(self.model_type, "value", self.model_type)
        if self.tp_reshard_fn is None and self.reshard_weights_format == "mcore" and model_type == MODEL_TYPE:
            from resharding.reshard import tp_reshard_fn_pangu

            self.tp_reshard_fn = functools.partial(tp_reshard_fn_pangu, vocab="megatron")
        return original(self, *args, **kwargs)

    return mark(__post_init__, original)


@patch(
    INFERENCE_RESHARD,
    why="RLinf picks a TP reshard function from the model type alone; Pangu's cuts the vocabulary to SGLang's padded rows at TP > 1, which is wrong for RLinf's actor -> inference sync of the disaggregated mode (a Megatron target, reshard_weights_format mcore): the inference group's embedding/output shards would not fit",
    module=_RESHARD_CONFIG,
    applies=lambda: "self.tp_reshard_fn = get_tp_reshard_fn(self.model_type)" in source_of(_RESHARD_CONFIG, "ReshardConfig.__post_init__"),
)
def _inference_reshard_keeps_megatron_vocab() -> None:
    def install(rc) -> None:
        cls = rc.ReshardConfig
        if not patched(cls.__post_init__):
            cls.__post_init__ = make_reshard_post_init(cls.__post_init__)

    after_import(_RESHARD_CONFIG, install)


# ======================================================================================
# RLinf's SGLang rollout on sglang 0.5.17 (rlinf-compat #5, #6, #9, #16, #17)
# ======================================================================================

SGLANG_GATE = "rlinf.rollout.sglang:version-gate"

#: The SGLang releases RLinf's rollout is run with here: 0.4.4 (RLinf's own floor) .. the pinned one.
SGLANG_SUPPORTED = ("0.4.4", "0.5.17")
#: The literal of RLinf 0.3.0's upper bound in ``rlinf/workers/rollout/sglang/__init__.py``.
RLINF_SGLANG_BOUND = 'package_version <= parse("0.5.4")'


def widen_sglang_gate(module) -> None:
    """Execute RLinf's ``rlinf.workers.rollout.sglang`` with its upper bound at the pinned SGLang.

    The gate is module-level code, so the only narrow fix is to run that module's own source with
    one literal changed (the same file name, so tracebacks and ``inspect`` still point at it).
    """
    path = upstream_file(module.__name__)
    source = path.read_text()
    if RLINF_SGLANG_BOUND not in source:
        return
    source = source.replace(RLINF_SGLANG_BOUND, f'package_version <= parse("{SGLANG_SUPPORTED[1]}")')
    module.__rlinf_pangu_source__ = source
    loader = module.__spec__.loader
    while isinstance(getattr(loader, "_inner", None), HookedLoader):  # hook loaders wrap each other
        loader = loader._inner
    loader_inner = getattr(loader, "_inner", loader)

    class _Rewritten(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, mod):
            exec(compile(source, str(path), "exec"), mod.__dict__)

        def get_source(self, name):
            return source

        def __getattr__(self, name):
            return getattr(loader_inner, name)

    rewritten = _Rewritten()
    # the hook loader runs its inner loader after this callback: point it at the rewritten source.
    if isinstance(loader, HookedLoader):
        loader._inner = rewritten


def _sglang_gate_too_narrow() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import parse

    try:
        installed = parse(version("sglang"))
    except PackageNotFoundError:
        return False
    return RLINF_SGLANG_BOUND in upstream_source(_SGL_GATE) and installed > parse("0.5.4")


@patch(
    SGLANG_GATE,
    why="RLinf 0.3.0's SGLang rollout refuses sglang > 0.5.4; torch 2.11 needs sglang 0.5.11..0.5.17 (the pinned 0.5.17 runs with the patches below)",
    module=_SGL_GATE,
    applies=_sglang_gate_too_narrow,
    startup=True,
)
def _widen_sglang_gate() -> None:
    if not before_exec(_SGL_GATE, widen_sglang_gate):
        log.error("%s was imported before the SGLang version patch could run", _SGL_GATE)


SGLANG_COMMUNICATOR = "rlinf.TokenizerManager:_Communicator"


def make_communicator_cls():
    """RLinf's ``_Communicator(sender, fan_out)`` on sglang 0.5.17's ``FanOutCommunicator``.

    RLinf hands the ZMQ socket; 0.5.17's communicator wants the function that sends on it.
    """
    from sglang.srt.managers.communicator import FanOutCommunicator


    class _Communicator(FanOutCommunicator):
        def __init__(self, sender, fan_out: int, mode: str = "queueing"):
            send = sender if callable(sender) else functools.partial(_sock_send, sender)
            super().__init__(send, fan_out, mode)

    return _Communicator


def _sock_send(sock, obj) -> None:
    from sglang.srt.managers.io_struct import sock_send

    sock_send(sock, obj)


def _communicator_moved() -> bool:
    return (
        "tokenizer_communicator_mixin import _Communicator" in upstream_source(_SGL_TM)
        and "class _Communicator" not in upstream_source("sglang.srt.managers.tokenizer_manager")
        and upstream_file("sglang.srt.managers.tokenizer_communicator_mixin") is None
    )


@patch(
    SGLANG_COMMUNICATOR,
    why="RLinf's TokenizerManager imports _Communicator from sglang modules 0.5.17 no longer has; 0.5.17's FanOutCommunicator does the job given the send function",
    module=_SGL_TM,
    applies=_communicator_moved,
    startup=True,
)
def _provide_communicator() -> None:
    def provide(_rlinf_tm) -> None:
        stm = mod("sglang.srt.managers.tokenizer_manager")
        if not hasattr(stm, "_Communicator"):
            stm._Communicator = make_communicator_cls()

    before_exec(_SGL_TM, provide)


SGLANG_SERVER_ARGS = "rlinf.SGLangWorker:ServerArgs-renamed"

#: RLinf 0.3.0 ``ServerArgs`` keyword -> sglang 0.5.17 name.
SERVER_ARGS_RENAMED = {"cuda_graph_max_bs": "cuda_graph_max_bs_decode"}

#: Extra ``kwargs -> kwargs`` rewrites of RLinf's ServerArgs (the CPU mode adds its settings here).
SERVER_ARGS_HOOKS: list[Callable[[dict[str, Any]], dict[str, Any]]] = []


def make_server_args_factory(server_args_cls: type) -> Callable[..., Any]:
    """``ServerArgs(**kwargs)`` with RLinf's renamed keywords mapped (a real ServerArgs comes out)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(server_args_cls)}

    def ServerArgs(**kwargs):  # noqa: N802  (stands in for the class at RLinf's call site)
        for old, new in SERVER_ARGS_RENAMED.items():
            if old in kwargs and old not in fields:
                kwargs[new] = kwargs.pop(old)
        for hook in SERVER_ARGS_HOOKS:
            kwargs = hook(kwargs)
        return server_args_cls(**kwargs)

    return mark(ServerArgs, server_args_cls)


@patch(
    SGLANG_SERVER_ARGS,
    why="RLinf passes ServerArgs(cuda_graph_max_bs=...); sglang 0.5.17 calls it cuda_graph_max_bs_decode",
    module=_SGL_WORKER,
    applies=lambda: "cuda_graph_max_bs=" in upstream_source(_SGL_WORKER)
    and "cuda_graph_max_bs:" not in upstream_source("sglang.srt.server_args"),
    startup=True,
)
def _rename_server_args() -> None:
    def install(sw) -> None:
        if not patched(sw.ServerArgs):
            sw.ServerArgs = make_server_args_factory(sw.ServerArgs)

    after_import(_SGL_WORKER, install)


SGLANG_PARALLEL_STATE = "rlinf.Scheduler:tp_size"


def add_parallel_state_properties(scheduler_cls: type) -> list[str]:
    """RLinf's Scheduler reads ``self.tp_size``/``self.tp_rank``; sglang 0.5.17 keeps them in ``self.ps``."""
    added = []
    for name in ("tp_size", "tp_rank"):
        if name in vars(scheduler_cls) or any(name in vars(b) for b in scheduler_cls.__mro__[1:]):
            continue
        setattr(scheduler_cls, name, property(lambda self, _n=name: getattr(self.ps, _n)))
        added.append(name)
    return added


@patch(
    SGLANG_PARALLEL_STATE,
    why="RLinf's Scheduler reads self.tp_size/self.tp_rank; sglang 0.5.17's Scheduler keeps them in self.ps",
    module=_SGL_SCHED,
    applies=lambda: "self.tp_size" in upstream_source(_SGL_SCHED)
    and "self.tp_size =" not in upstream_source("sglang.srt.managers.scheduler"),
    startup=True,
)
def _scheduler_parallel_state() -> None:
    after_import(_SGL_SCHED, lambda m: add_parallel_state_properties(m.Scheduler))


SGLANG_MEMORY_OCCUPATION = "rlinf.Scheduler:release/resume-routing"


def route_memory_occupation(rlinf_scheduler_cls: type) -> None:
    """Send SGLang's release/resume requests through RLinf's Scheduler overrides again.

    RLinf's overrides keep ``is_weight_offloaded`` (its weight sync resumes the weights only when
    that flag says they were released) and call ``super()``; sglang 0.5.17 dispatches both
    requests straight to ``self.weight_updater`` and its Scheduler has no such methods. Without
    this the sync writes into paused (unmapped) weight memory: ``CUDA error: invalid argument``.
    """
    base = rlinf_scheduler_cls.__mro__[1]
    for name in ("release_memory_occupation", "resume_memory_occupation"):
        if not hasattr(base, name):
            setattr(base, name, lambda self, req, _n=name: getattr(self.weight_updater, _n)(req))
    original = rlinf_scheduler_cls.__init__
    if patched(original):
        return

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        reroute_memory_requests(self)

    rlinf_scheduler_cls.__init__ = mark(__init__, original)


def reroute_memory_requests(scheduler) -> None:
    """Point this scheduler's release/resume requests at its own (RLinf's) methods."""
    from sglang.srt.managers.io_struct import ReleaseMemoryOccupationReqInput, ResumeMemoryOccupationReqInput

    mapping = scheduler._request_dispatcher._mapping
    mapping[ReleaseMemoryOccupationReqInput] = scheduler.release_memory_occupation
    mapping[ResumeMemoryOccupationReqInput] = scheduler.resume_memory_occupation


@patch(
    SGLANG_MEMORY_OCCUPATION,
    why="sglang 0.5.17 dispatches release/resume_memory_occupation to its weight updater, past RLinf's Scheduler overrides: RLinf never learns the weights were paused and syncs into unmapped memory (CUDA invalid argument)",
    module=_SGL_SCHED,
    applies=lambda: "def release_memory_occupation" in upstream_source(_SGL_SCHED)
    and "self.weight_updater.release_memory_occupation" in upstream_source("sglang.srt.managers.scheduler")
    and "def release_memory_occupation" not in upstream_source("sglang.srt.managers.scheduler"),
    startup=True,
)
def _route_memory_occupation() -> None:
    after_import(_SGL_SCHED, lambda m: route_memory_occupation(m.Scheduler))


# ======================================================================================
# The training loop: cluster, dataset, runner, metrics
# ======================================================================================

RAY_STATE_WITHOUT_DASHBOARD = "rlinf.Cluster:failure-handler-without-dashboard"


def make_list_actors(original: Callable) -> Callable:
    """Ray's ``list_actors``, or no actors when the state API (the dashboard) is not running.

    RLinf's SIGUSR1 handler kills the listed actors, then shuts Ray down, which ends every actor
    this driver created anyway; listing nothing lets it reach that and its exit message.
    """

    def list_actors(*args, **kwargs):
        from ray.util.state.exception import ServerUnavailable

        try:
            return original(*args, **kwargs)
        except ServerUnavailable:
            log.warning("Ray's state API is not running (no dashboard): leaving actor clean-up to ray.shutdown()")
            return []

    return mark(list_actors, original)


@patch(
    RAY_STATE_WITHOUT_DASHBOARD,
    why="RLinf's worker-failure handler lists actors through Ray's state API, which needs the dashboard the driver does not start: its ServerUnavailable buried the worker's real error",
    module=_CLUSTER,
    applies=lambda: "list_actors(" in upstream_source(_CLUSTER),
)
def _failure_handler_without_dashboard() -> None:
    def install(cl) -> None:
        if not patched(cl.list_actors):
            cl.list_actors = make_list_actors(cl.list_actors)

    after_import(_CLUSTER, install)


DATASET_ENCODE = "rlinf.ReasoningDataset.encode_batch"


def encode_batch(self, texts) -> list[list[int]]:
    """``ReasoningDataset.encode_batch`` through the tokenizer's ``__call__`` (transformers 5)."""
    return self.tokenizer(list(texts))["input_ids"]


@patch(
    DATASET_ENCODE,
    why="RLinf's dataset calls tokenizer.batch_encode_plus (gone in transformers 5): every sample is silently dropped, then 'No samples found within max_prompt_length'",
    module=_DATASET,
    applies=lambda: "batch_encode_plus" in upstream_source(_DATASET)
    and "def batch_encode_plus" not in upstream_source("transformers.tokenization_utils_base"),
)
def _dataset_encode_batch() -> None:
    def install(ds) -> None:
        ds.ReasoningDataset.encode_batch = encode_batch

    after_import(_DATASET, install)


RUNNER_LAST_STEP = "rlinf.ReasoningRunner:log-last-step"


class RunFinished(Exception):
    """Raised at the start of the step after the last one, once the last step has been logged."""


def make_check_progress(original: Callable) -> Callable:
    """RLinf's ``check_progress`` that never reports the end itself: the runner then logs the last
    step's metrics (it returns before logging them otherwise) and stops at the next batch."""

    def check_progress(step, max_steps, *args, **kwargs):
        run_val, save_model, is_train_end = original(step, max_steps, *args, **kwargs)
        if is_train_end:
            check_progress.finished = True
        return run_val, save_model, False

    check_progress.finished = False
    return mark(check_progress, original)


def make_put_batch(original: Callable, progress: Callable) -> Callable:
    def _put_batch(self, *args, **kwargs):
        if getattr(progress, "finished", False):
            raise RunFinished()
        return original(self, *args, **kwargs)

    return mark(_put_batch, original)


def make_run(original: Callable, progress: Callable) -> Callable:
    def run(self, *args, **kwargs):
        progress.finished = False
        try:
            return original(self, *args, **kwargs)
        except RunFinished:
            logging.getLogger("rlinf_pangu.train").info("Step limit max_steps=%s reached. Stopping run", self.max_steps)
        finally:
            self.metric_logger.finish()

    return mark(run, original)


def _runner_drops_last_step() -> bool:
    run = source_of(_RUNNER, "ReasoningRunner.run")
    end, log_at = run.find("if is_train_end:"), run.find("self.metric_logger.log(")
    return 0 <= end < log_at


@patch(
    RUNNER_LAST_STEP,
    why="RLinf's ReasoningRunner.run returns on the last step before logging its metrics (and never closes its TensorBoard writer): log it, then stop",
    module=_RUNNER,
    applies=_runner_drops_last_step,
)
def _runner_logs_last_step() -> None:
    def install(rr) -> None:
        if patched(rr.check_progress):
            return
        progress = make_check_progress(rr.check_progress)
        rr.check_progress = progress
        cls = rr.ReasoningRunner
        cls._put_batch = make_put_batch(cls._put_batch, progress)
        cls.run = make_run(cls.run, progress)

    after_import(_RUNNER, install)


LOGPROB_GAP = "rlinf.MegatronWorker:logprob-gap-metric"


def logprob_gap(batch: dict, response_len: int) -> dict[str, float]:
    """Mean and max |recomputed - rollout| log-prob over response tokens (this DP rank's batch)."""
    import torch

    if "rollout_logprobs" not in batch or "recomputed_logprobs" not in batch:
        return {}
    mask = batch["response_mask"][:, -response_len:].bool()
    a = batch["rollout_logprobs"].float()[:, -response_len:]
    b = batch["recomputed_logprobs"].float()[:, -response_len:]
    diff = (a - b).abs().cpu()[mask.cpu()]
    if diff.numel() == 0:
        return {}
    return {"logprob_gap_mean": float(diff.mean()), "logprob_gap_max": float(diff.max())}


def make_rollout_metrics(original: Callable) -> Callable:
    """Adds the rollout-vs-recompute log-prob gap to RLinf's per-step rollout metrics."""

    def _compute_rollout_metrics(self, batch):
        metrics = original(self, batch)
        if metrics is None:
            return metrics
        try:
            metrics.update(logprob_gap(batch, self.response_len))
        except Exception as e:  # a metric must never break training
            log.debug("logprob gap not computed: %s", e)
        return metrics

    return mark(_compute_rollout_metrics, original)


@patch(
    LOGPROB_GAP,
    why="additive metric: the per-step gap between SGLang's rollout log-probs and the actor's recomputed ones (the weight-sync health check), which RLinf does not report",
    module=_MWORKER,
    applies=lambda: "logprob_gap" not in upstream_source(_MWORKER),
)
def _logprob_gap_metric() -> None:
    def install(mw) -> None:
        fn = mw.MegatronWorker._compute_rollout_metrics
        if not patched(fn):
            mw.MegatronWorker._compute_rollout_metrics = make_rollout_metrics(fn)

    after_import(_MWORKER, install)


PIPELINE_MERGE = "rlinf.RolloutResult:merge-batches-without-returns"
_IO_STRUCT = "rlinf.data.io_struct"


def make_merge_batches(original: Callable) -> Callable:
    """``RolloutResult.merge_batches`` that carries a key which is None in *every* batch as None.

    Why: in the disaggregated (pipelined) mode RLinf's actor computes advantages on each piece of
    rollout it receives (``compute_advantages_and_returns`` as the batch iterator's handler), and
    GRPO has no returns (``compute_grpo_advantages`` returns ``advantages, None``), so every piece
    holds ``returns: None``. With ``algorithm.normalize_advantages`` the iterator then merges pieces
    into whole global batches, and RLinf's merge raises on the None ("Unsupported batch key
    type"). A key None in some batches only is still refused, as before.
    """

    def merge_batches(batches):
        absent = [k for k in batches[0] if all(b.get(k) is None for b in batches)] if len(batches) > 1 else []
        if not absent:
            return original(batches)
        merged = original([{k: v for k, v in b.items() if k not in absent} for b in batches])
        merged.update(dict.fromkeys(absent))
        return merged

    return mark(merge_batches, original)


def _pipeline_merge_fails_on_grpo_returns() -> bool:
    import re

    merge = source_of(_IO_STRUCT, "RolloutResult.merge_batches")
    return ("Unsupported batch key type" in merge and "None" not in merge
            and re.search(r"return \(?advantages, None\)?", source_of("rlinf.algorithms.advantages", "compute_grpo_advantages")) is not None
            and "_fill_global_batches" in upstream_source(_IO_STRUCT))


@patch(
    PIPELINE_MERGE,
    why="RLinf's pipelined (disaggregated) actor merges pieces of rollout after computing their advantages, and GRPO's returns are None: its RolloutResult.merge_batches raises 'Unsupported batch key type: NoneType' whenever algorithm.normalize_advantages makes it fill a global batch",
    module=_IO_STRUCT,
    applies=_pipeline_merge_fails_on_grpo_returns,
)
def _pipeline_merge_without_returns() -> None:
    def install(io) -> None:
        fn = io.RolloutResult.__dict__["merge_batches"]
        original = fn.__func__ if isinstance(fn, staticmethod) else fn
        if not patched(original):
            io.RolloutResult.merge_batches = staticmethod(make_merge_batches(original))

    after_import(_IO_STRUCT, install)


REWARD_TEXT = "rlinf.RewardWorker:reward-reads-chat-markers"
_REWARD_WORKER = "rlinf.workers.reward.reward_worker"


def make_reward_text(original: Callable) -> Callable:
    """``RewardWorker._compute_rule_based_rewards`` that, when the tokenizer is Pangu's and the
    rollout brought no text (SGLang's), hands the reward the completion decoded *without*
    skipping special tokens: ``[unused16] thinking [unused17] answer [unused10]``, the text the
    official recipe splits. RLinf decodes with ``skip_special_tokens=True``, which drops every token
    tokenizer_config.json flags special, the thinking markers included: the reward could then not
    tell the answer from the thinking (``pangu_math`` would grade the thinking as a fast-mode
    answer). The text is set for the reward's call only; RLinf's later decoding is unchanged."""

    def _compute_rule_based_rewards(self, rollout_result):
        from rlinf_pangu.hf.tokenization import PanguTokenizer

        tok = getattr(self, "tokenizer", None)
        if rollout_result.response_texts is not None or not isinstance(tok, PanguTokenizer):
            return original(self, rollout_result)
        rollout_result.response_texts = tok.batch_decode(rollout_result.response_ids, skip_special_tokens=False)
        try:
            return original(self, rollout_result)
        finally:
            rollout_result.response_texts = None

    return mark(_compute_rule_based_rewards, original)


@patch(
    REWARD_TEXT,
    why="RLinf's reward worker decodes SGLang rollouts with skip_special_tokens=True, which drops Pangu's thinking markers ([unused16]/[unused17] are flagged special), so a reward could not tell the answer from the thinking",
    module=_REWARD_WORKER,
    applies=lambda: "rollout_result.response_ids, skip_special_tokens=True" in upstream_source(_REWARD_WORKER),
)
def _reward_reads_chat_markers() -> None:
    def install(rw) -> None:
        fn = rw.RewardWorker._compute_rule_based_rewards
        if not patched(fn):
            rw.RewardWorker._compute_rule_based_rewards = make_reward_text(fn)

    after_import(_REWARD_WORKER, install)


# ======================================================================================
# RLinf's FSDP actor (actor.training_backend: fsdp): the HF Pangu model under torch's FSDP2
# ======================================================================================

_FSDP_MM = "rlinf.hybrid_engines.fsdp.fsdp_model_manager"

FSDP_ATTN = "rlinf.FSDPModelManager:attn_implementation"


def fsdp_attn_implementation(actor_cfg: Any) -> str:
    """``actor.model.attn_implementation``; unset: RLinf's flash_attention_2 where flash-attn is
    installed, else torch's sdpa."""
    impl = actor_cfg.model.get("attn_implementation", None)
    if impl:
        return str(impl)
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


class _AutoConfigWithAttention:
    """Stands in for ``AutoConfig`` in RLinf's FSDP model manager while it builds the model: the
    same ``from_pretrained``, with the attention implementation the YAML chose."""

    def __init__(self, auto_config: Any, implementation: str) -> None:
        self._auto_config, self._implementation = auto_config, implementation

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        if "attn_implementation" in kwargs:
            kwargs["attn_implementation"] = self._implementation
        return self._auto_config.from_pretrained(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._auto_config, name)


def make_fsdp_model_provider(original: Callable) -> Callable:
    """RLinf's ``model_provider_func`` with ``AutoConfig`` standing in by the name it reads.

    The name is swapped in the function's own globals, not in the module: Ray ships the actor
    class to its worker by value once a method was patched in the driver, and the function then
    reads a globals dict of its own (measured: a module-level swap left flash_attention_2 there).
    """

    def model_provider_func(self, *args, **kwargs):
        names = original.__globals__
        implementation = fsdp_attn_implementation(self._cfg)
        auto_config = names["AutoConfig"]
        names["AutoConfig"] = _AutoConfigWithAttention(auto_config, implementation)
        try:
            model = original(self, *args, **kwargs)
        finally:
            names["AutoConfig"] = auto_config
        log.info("FSDP actor: %s with %s attention", type(model).__name__, model.config._attn_implementation)
        return model

    return mark(model_provider_func, original)


@patch(
    FSDP_ATTN,
    why="RLinf's FSDP model manager builds every HF model with attn_implementation='flash_attention_2', which needs the flash-attn package this stack does not have (no wheel for torch 2.11): transformers refuses to build the model; the YAML's actor.model.attn_implementation (sdpa) is used instead",
    module=_FSDP_MM,
    applies=lambda: "attn_implementation='flash_attention_2'" in source_of(_FSDP_MM, "FSDPModelManager.model_provider_func"),
)
def _fsdp_attn_implementation() -> None:
    def install(fm) -> None:
        cls = fm.FSDPModelManager
        if not patched(cls.model_provider_func):
            cls.model_provider_func = make_fsdp_model_provider(cls.model_provider_func)

    after_import(_FSDP_MM, install)


FSDP2_GRAD_NORM = "rlinf.FSDP2Strategy:grad-norm-over-all-shards"
_FSDP_UTILS = "rlinf.hybrid_engines.fsdp.utils"
_FSDP2_STRATEGY = "rlinf.hybrid_engines.fsdp.strategy.fsdp2"


def shard_group(model: Any) -> Any:
    """The process group FSDP2 shards ``model``'s parameters over (their device mesh), or None."""
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        if isinstance(p, DTensor):
            return p.device_mesh.get_group()
    return None


def make_fsdp2_clip_grad_norm(original: Callable) -> Callable:
    """``FSDP2Strategy.clip_grad_norm_`` over the whole gradient: RLinf sums the squared norms of
    the local shards over its ``_dp_group``, which its FSDP model manager finds only on a mesh
    dimension named "ddp"; its mesh has one dimension, "fsdp", so the group was None and every
    rank clipped by the norm of its own shard. The group the parameters are sharded over is used
    instead (each rank's shard is a disjoint part of the gradient, so the sum is the full norm)."""

    def clip_grad_norm_(self, model, *args, **kwargs):
        if self._dp_group is None:
            self._dp_group = shard_group(model)
        return original(self, model, *args, **kwargs)

    return mark(clip_grad_norm_, original)


def _fsdp2_grad_norm_per_shard() -> bool:
    return (
        "mesh_dim_names=['fsdp']" in source_of(_FSDP_UTILS, "create_device_mesh")
        and "'ddp' in self._device_mesh.mesh_dim_names" in source_of(_FSDP_MM, "FSDPModelManager.__init__")
        and "dp_group=self._dp_group" in source_of(_FSDP2_STRATEGY, "FSDP2Strategy.clip_grad_norm_")
    )


@patch(
    FSDP2_GRAD_NORM,
    why="RLinf's FSDP2 actor clips each rank's gradient shard by that shard's own norm (its grad-norm all-reduce group is looked up on a mesh dimension 'ddp' its 1-D 'fsdp' mesh lacks): the reported grad_norm and the clipping are wrong at 2+ actor ranks (measured 5.66 and 5.52 on two ranks for a true 7.91)",
    module=_FSDP2_STRATEGY,
    applies=_fsdp2_grad_norm_per_shard,
)
def _fsdp2_grad_norm() -> None:
    def install(fs) -> None:
        cls = fs.FSDP2Strategy
        if not patched(cls.clip_grad_norm_):
            cls.clip_grad_norm_ = make_fsdp2_clip_grad_norm(cls.clip_grad_norm_)

    after_import(_FSDP2_STRATEGY, install)


FSDP_LOGPROB_GAP = "rlinf.FSDPActor:logprob-gap-metric"
_FACTOR = "rlinf.workers.actor.fsdp_actor_worker"


def logprob_gap_all_ranks(batch: dict, response_len: int, group: Any = None) -> dict[str, float]:
    """:func:`logprob_gap` over every rank's batch of ``group`` (default: all actor ranks): the
    mean over all response tokens, the max over all. Every rank must call it (two all-reduces)."""
    import torch
    import torch.distributed as dist

    if "rollout_logprobs" not in batch or "recomputed_logprobs" not in batch:
        return {}
    mask = batch["response_mask"][:, -response_len:].bool()
    a = batch["rollout_logprobs"].float()[:, -response_len:]
    b = batch["recomputed_logprobs"].float()[:, -response_len:].to(a.device)
    d = (a - b).abs()[mask.to(a.device)]
    totals = torch.tensor([float(d.sum()) if d.numel() else 0.0, float(d.numel())], dtype=torch.float64, device=a.device)
    worst = torch.tensor([float(d.max()) if d.numel() else 0.0], dtype=torch.float64, device=a.device)
    if d.numel() and not torch.isfinite(d).all():
        worst.fill_(float("nan"))
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, group=group)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    if totals[1] == 0:
        return {}
    return {"logprob_gap_mean": float(totals[0] / totals[1]), "logprob_gap_max": float(worst[0])}


def make_fsdp_rollout_metrics(original: Callable) -> Callable:
    """RLinf's math rollout metrics (as the FSDP actor calls them) plus the log-prob gap."""

    def compute_rollout_metrics(rollout_batch, max_prompt_len, response_len, *args, **kwargs):
        out = original(rollout_batch, max_prompt_len, response_len, *args, **kwargs)
        group = args[0] if args else kwargs.get("data_parallel_group")
        out[0].update(logprob_gap_all_ranks(rollout_batch, response_len, group))
        return out

    return mark(compute_rollout_metrics, original)


@patch(
    FSDP_LOGPROB_GAP,
    why="additive metric: the per-step gap between SGLang's rollout log-probs and the FSDP actor's recomputed ones (the weight-sync health check), which RLinf does not report; over all actor ranks",
    module=_FACTOR,
    applies=lambda: "logprob_gap" not in upstream_source(_FACTOR)
    and "compute_math_rollout_metrics(" in source_of(_FACTOR, "FSDPActor.run_training"),
)
def _fsdp_logprob_gap_metric() -> None:
    def install(fa) -> None:
        if not patched(fa.compute_math_rollout_metrics):
            fa.compute_math_rollout_metrics = make_fsdp_rollout_metrics(fa.compute_math_rollout_metrics)

    after_import(_FACTOR, install)


FSDP_FP32_LOGPROBS = "rlinf.FSDPActor:fp32-logprobs"
_RLINF_UTILS = "rlinf.utils.utils"


def make_fp32_compute_logprobs(original: Callable) -> Callable:
    """``FSDPActor.compute_logprobs`` with RLinf's ``torch`` op fed fp32 logits (bf16/fp16 ones
    upcast for the log-softmax only; fp32 ones pass unchanged)."""
    import torch

    def compute_logprobs(self, logits, target):
        if getattr(self, "entropy_op_type", "torch") == "torch" and logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()
        return original(self, logits, target)

    return mark(compute_logprobs, original)


def _torch_logprobs_in_logits_dtype() -> bool:
    ours = source_of(_RLINF_UTILS, "compute_logprobs_from_logits")
    return (
        "-F.cross_entropy(logits, labels" in ours
        and "logits.float()" not in ours
        and "op_type=self.entropy_op_type" in source_of(_FACTOR, "FSDPActor.compute_logprobs")
    )


@patch(
    FSDP_FP32_LOGPROBS,
    why="RLinf's FSDP actor computes log-probs with flash-attn's fp32 kernel by default; its 'torch' op (the one this stack can run) does the 153k-vocab log-softmax in the logits' dtype: in bf16 that is off by 0.017-0.027 nats on average, 0.06 worst (measured), more than the whole Megatron sync gap (0.014) and straight into the PPO ratio",
    module=_FACTOR,
    applies=_torch_logprobs_in_logits_dtype,
)
def _fsdp_fp32_logprobs() -> None:
    def install(fa) -> None:
        cls = fa.FSDPActor
        if not patched(cls.compute_logprobs):
            cls.compute_logprobs = make_fp32_compute_logprobs(cls.compute_logprobs)

    after_import(_FACTOR, install)


# ======================================================================================
# RLinf's own models on this stack (benchmarks/grpo_step.py runs a Qwen2 baseline through
# RLinf's native path: its converter, its TransformFuncs sync, SGLang's own model class),
# and the step-phase trace that benchmark reads
# ======================================================================================

ROPE_THETA = "rlinf.validate_model_cfg_by_hf_config:rope_theta"


def expose_rope_theta(hf_config: Any) -> None:
    """Give a transformers-5 config (and its ``text_config``) the ``rope_theta`` attribute that
    transformers 4 configs had, read from ``rope_parameters``; a config that has one is left alone."""
    for cfg in (hf_config, getattr(hf_config, "text_config", None)):
        if cfg is None or hasattr(cfg, "rope_theta"):
            continue
        params = getattr(cfg, "rope_parameters", None)
        if isinstance(params, dict) and "rope_theta" in params:
            cfg.rope_theta = params["rope_theta"]


@contextlib.contextmanager
def rope_theta_readable():
    """While active, configs from ``transformers.AutoConfig.from_pretrained`` expose ``rope_theta``."""
    import transformers

    auto = transformers.AutoConfig
    descriptor = auto.__dict__["from_pretrained"]
    load = auto.from_pretrained

    def from_pretrained(*args, **kwargs):
        cfg = load(*args, **kwargs)
        expose_rope_theta(cfg)
        return cfg

    auto.from_pretrained = from_pretrained
    try:
        yield
    finally:
        auto.from_pretrained = descriptor


def make_rope_theta_validate(original: Callable) -> Callable:
    def validate_model_cfg_by_hf_config(cfg, hf_model_path):
        with rope_theta_readable():
            return original(cfg, hf_model_path)

    validate_model_cfg_by_hf_config.__rlinf_pangu_rope_theta__ = True  # type: ignore[attr-defined]
    return mark(validate_model_cfg_by_hf_config, original)


def _rlinf_reads_rope_theta() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("transformers").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return False
    return major >= 5 and "hf_config.rope_theta" in source_of("rlinf.config", "validate_model_cfg_by_hf_config")


@patch(
    ROPE_THETA,
    why="RLinf's validate_model_cfg_by_hf_config reads hf_config.rope_theta, which transformers 5 configs no longer have (moved into rope_parameters): every Qwen2/Qwen3/Llama checkpoint, a Qwen2.5 config.json from the hub included, fails with AttributeError before a worker starts (Pangu's own config class keeps the attribute)",
    module="rlinf.config",
    applies=_rlinf_reads_rope_theta,
)
def _rope_theta_from_rope_parameters() -> None:
    # Declared (so applied) after rlinf.validate_model_cfg_by_hf_config: it wraps the Pangu check,
    # whose own idempotence test would otherwise take this wrapper for its own and skip.
    rc = mod("rlinf.config")
    fn = rc.validate_model_cfg_by_hf_config
    if not getattr(fn, "__rlinf_pangu_rope_theta__", False):
        rc.validate_model_cfg_by_hf_config = make_rope_theta_validate(fn)


SAMPLING_PARAMS = "rlinf.SGLangWorker:sampling-params-complete"
#: ``algorithm.sampling_params`` keys RLinf's SGLang rollout drops, and what SGLang takes for each.
#: (Not ``min_new_tokens``: SGLang refuses it when, as RLinf sets up its engine, it has no tokenizer.)
SAMPLING_KEYS_PASSED_ON: dict[str, Callable[[Any], Any]] = {"ignore_eos": bool}


def make_sampling_params(original: Callable) -> Callable:
    """RLinf's ``get_sampling_param_from_config`` plus the keys of :data:`SAMPLING_KEYS_PASSED_ON`
    that the YAML sets (not null); RLinf's own keys are never overridden."""

    def get_sampling_param_from_config(cfg_sampling_params):
        params = original(cfg_sampling_params)
        for key, kind in SAMPLING_KEYS_PASSED_ON.items():
            value = cfg_sampling_params.get(key, None)
            if value is not None and key not in params:
                params[key] = kind(value)
        return params

    return mark(get_sampling_param_from_config, original)


@patch(
    SAMPLING_PARAMS,
    why="RLinf's SGLang rollout hands SGLang only temperature/top_k/top_p/repetition_penalty/max_new_tokens, so no YAML can keep a response from stopping at eos: algorithm.sampling_params.ignore_eos is passed on (benchmarks/grpo_step.py fixes every response's length with it; random weights would otherwise stop at random)",
    module=_SGL_WORKER,
    applies=lambda: "def get_sampling_param_from_config" in upstream_source(_SGL_WORKER)
    and "ignore_eos" not in upstream_source(_SGL_WORKER),
)
def _sampling_params_complete() -> None:
    def install(sw) -> None:
        fn = sw.SGLangWorker.get_sampling_param_from_config
        if not patched(fn):
            sw.SGLangWorker.get_sampling_param_from_config = staticmethod(make_sampling_params(fn))

    after_import(_SGL_WORKER, install)


PHASE_TRACE = "rlinf.*:phase-trace"


@patch(
    PHASE_TRACE,
    why="additive timing, only with RLINF_PANGU_PHASE_TRACE set: RLinf's step timers overlap (time/reward holds the whole rollout) and leave out the offload/onload around each phase, so 'step minus the named phases' says nothing; every process appends wall-clock spans of RLinf's phases and of its offload/onload calls (rlinf_pangu.phase_trace; read by benchmarks/grpo_step.py)",
    module=_RUNNER,
    applies=lambda: "worker_timer" not in source_of(_MM, "MegatronModelManager.offload_megatron_optimizer")
    and "timer" not in source_of(_MWORKER, "MegatronWorker._load_weight_and_optimizer"),
    startup=True,  # SGLang's scheduler processes (release/resume, weight loading) are traced too
)
def _phase_trace() -> None:
    from rlinf_pangu import phase_trace

    if not phase_trace.enabled():
        return
    for module, targets in phase_trace.targets_by_module().items():
        after_import(module, functools.partial(phase_trace.install, targets=targets))


# --- megatron-core's own modules (no Transformer Engine) for RLinf's native models ------

NATIVE_CKPT_NORM_NAMES = "rlinf.convert_hf_to_mg:norm-names-of-the-spec"
NATIVE_SYNC_NORM_NAMES = "rlinf.MegatronCoreWeightReshard:local-norm-names"
#: Megatron norm names: Transformer Engine fuses each pre-norm into the linear after it
#: (RLinf's converter writes and its TransformFuncs read only these); megatron-core's own
#: modules keep them apart. (TE-fused suffix, local suffix) within a layer.
TE_TO_LOCAL_NORMS: tuple[tuple[str, str], ...] = (
    ("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"),
    ("self_attention.linear_qkv.layer_norm_bias", "input_layernorm.bias"),
    ("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight"),
    ("mlp.linear_fc1.layer_norm_bias", "pre_mlp_layernorm.bias"),
)
def _layer_split(name: str) -> tuple[str, str] | None:
    """``("decoder.layers.3.", "mlp.linear_fc1.layer_norm_weight")`` for a layer parameter, else None."""
    i = name.rfind("layers.")
    if i < 0 or (i > 0 and name[i - 1] != "."):
        return None
    num, dot, suffix = name[i + len("layers."):].partition(".")
    if not (num.isdigit() and dot and suffix):
        return None
    return name[: i + len("layers.") + len(num) + 1], suffix


def te_norm_to_local(name: str) -> str | None:
    """The local-module name of a TE-fused norm parameter (None: not one)."""
    split = _layer_split(name)
    return next((split[0] + local for te, local in TE_TO_LOCAL_NORMS if split and split[1] == te), None)


def local_norm_to_te(name: str) -> str | None:
    """The TE-fused name of a local module's norm parameter (None: not one)."""
    split = _layer_split(name)
    return next((split[0] + te for te, local in TE_TO_LOCAL_NORMS if split and split[1] == local), None)


def localize_megatron_checkpoint(save_path: str | Path) -> int:
    """Rename the TE-fused norm keys of every rank file under ``save_path`` to megatron-core's own
    names and drop TE's ``_extra_state`` entries (local modules have none, and Megatron's strict
    load would fail on them); each file is rewritten aside and renamed into place. Returns how
    many keys were renamed."""
    import torch

    renamed = 0
    for f in sorted(Path(save_path).rglob("model_optim_rng.pt")):
        ckpt = torch.load(f, map_location="cpu", weights_only=False)
        changed = False
        for key in [k for k in ckpt if k == "model" or (k.startswith("model") and k[5:].isdigit())]:
            state = ckpt[key]
            new = {}
            for name, value in state.items():
                if name.endswith("._extra_state"):
                    changed = True
                    continue
                local = te_norm_to_local(name)
                new[local or name] = value
                renamed += local is not None
                changed |= local is not None
            ckpt[key] = new
        if changed:
            tmp = f.with_name(f.name + ".partial")
            torch.save(ckpt, tmp)
            tmp.replace(f)
    return renamed


def make_native_norm_converter(original: Callable) -> Callable:
    """RLinf's ``convert_hf_to_mg``; then, for a checkpoint RLinf itself converted (not Pangu's:
    the project's converter writes the names the spec needs) for an actor config (``ckpt_cfg`` is
    its ``megatron.ckpt_convertor``, as RLinf's runner passes it) that builds megatron-core's own
    modules (``ckpt_convertor.startup.settings_from_config``: spec name, ``transformer_impl``, TE
    installed), the norm keys renamed to the local modules' names."""

    def convert_hf_to_mg(hf_ckpt_path, ckpt_cfg):
        from ckpt_convertor.startup import is_pangu_checkpoint, settings_from_config

        out = original(hf_ckpt_path, ckpt_cfg)
        in_actor = getattr(getattr(ckpt_cfg, "_get_parent", lambda: None)(), "_get_parent", lambda: None)() is not None
        if (in_actor and not is_pangu_checkpoint(hf_ckpt_path)  # a bare call: the model is unknown, names kept
                and settings_from_config(hf_ckpt_path, ckpt_cfg)["norm_names"] == "local"):
            n = localize_megatron_checkpoint(ckpt_cfg.save_path)
            log.info("RLinf's converter wrote Transformer Engine's fused norm names; renamed %d to megatron-core's "
                     "local modules' names in %s", n, ckpt_cfg.save_path)
        return out

    convert_hf_to_mg.__rlinf_pangu_local_norms__ = True  # type: ignore[attr-defined]
    return mark(convert_hf_to_mg, original)


@patch(
    NATIVE_CKPT_NORM_NAMES,
    why="RLinf's converter writes only Transformer Engine's fused norm names (linear_qkv.layer_norm_weight, linear_fc1.layer_norm_weight; it asserts te_ln_linear_qkv); a Qwen/Llama actor built with megatron-core's own modules (no TE, or transformer_impl: local) names them input_layernorm/pre_mlp_layernorm, so Megatron's strict load fails and its non-strict fallback leaves every norm at its initial value, silently",
    module=_RLINF_CONVERTER,
    applies=lambda: "te_ln_linear_qkv is True" in upstream_source(_RLINF_CONVERTER),
)
def _native_ckpt_norm_names() -> None:
    def install(converter) -> None:
        fn = converter.convert_hf_to_mg
        if not getattr(fn, "__rlinf_pangu_local_norms__", False):
            converter.convert_hf_to_mg = make_native_norm_converter(fn)

    after_import(_RLINF_CONVERTER, install)  # after the Pangu dispatch (declared earlier): it wraps it


_MCORE_RESHARD = "rlinf.utils.resharding.mcore_weight_reshard"


def make_native_norm_gather(original: Callable) -> Callable:
    """``MegatronCoreWeightReshard.gather_and_reshard_model`` that, for one of RLinf's own model
    types synced to an HF-format rollout, hands RLinf's TP/PP reshard and TransformFuncs the norms
    of megatron-core's local modules under Transformer Engine's fused names, the only ones they
    know. Pangu (its reshard and convertor take both) and Megatron targets (``mcore``: the
    receiving model has the local names) are passed through unchanged."""

    def gather_and_reshard_model(self, bucket_weight, dst_tp_rank):
        from rlinf_pangu import MODEL_TYPE

        cfg = self.config
        if getattr(cfg.model_type, "value", cfg.model_type) != MODEL_TYPE and cfg.reshard_weights_format != "mcore":
            bucket_weight = {local_norm_to_te(k) or k: v for k, v in bucket_weight.items()}
        return original(self, bucket_weight, dst_tp_rank)

    return mark(gather_and_reshard_model, original)


def _rlinf_sync_knows_only_te_norms() -> bool:
    src = upstream_source(_RESHARD_UTILS)  # RLinf's TP reshard of its own models
    return '"linear_qkv.layer_norm_weight"' in src and "input_layernorm" not in src and "def gather_and_reshard_model" in upstream_source(_MCORE_RESHARD)


@patch(
    NATIVE_SYNC_NORM_NAMES,
    why="RLinf's weight sync of its own models (the Qwen TP reshard, which asserts on any other name, and its TransformFuncs) knows only Transformer Engine's fused norm names: a model built with megatron-core's own modules (no TE, or transformer_impl: local) fails the first sync with 'Unknown parameter: decoder.layers.0.input_layernorm.weight'",
    module=_MCORE_RESHARD,
    applies=_rlinf_sync_knows_only_te_norms,
)
def _native_sync_norm_names() -> None:
    def install(mr) -> None:
        cls = mr.MegatronCoreWeightReshard
        if not patched(cls.gather_and_reshard_model):
            cls.gather_and_reshard_model = make_native_norm_gather(cls.gather_and_reshard_model)

    after_import(_MCORE_RESHARD, install)


#: What RLinf's own model path needs on this stack (benchmarks/grpo_step.py names them in its JSON).
NATIVE_MODEL_PATCHES = (ROPE_THETA, SAMPLING_PARAMS, NATIVE_CKPT_NORM_NAMES, NATIVE_SYNC_NORM_NAMES)


# ======================================================================================
# Checkpoints: saving, resuming (rlinf_pangu.run_checkpoint)
# ======================================================================================

RUNNER_ATOMIC_SAVE = "rlinf.ReasoningRunner:atomic-save"


def _runner_saves_in_place() -> bool:
    save = source_of(_RUNNER, "ReasoningRunner._save_checkpoint")
    return "global_step_" in save and "torch.save(" in save and not any(w in save for w in ("rename", "replace("))


@patch(
    RUNNER_ATOMIC_SAVE,
    why="RLinf's runner writes each checkpoint in place, file by file, and its resume_dir=auto takes the highest global_step_* directory: a crash during a save leaves a half-written checkpoint that the resume then loads",
    module=_RUNNER,
    applies=_runner_saves_in_place,
)
def _runner_atomic_save() -> None:
    def install(rr) -> None:
        cls = rr.ReasoningRunner
        original = cls._save_checkpoint
        if patched(original):
            return

        def _save_checkpoint(self):
            from rlinf_pangu import run_checkpoint

            run_checkpoint.save(self)

        cls._save_checkpoint = mark(_save_checkpoint, original)

    after_import(_RUNNER, install)


MEGATRON_CHECKPOINT_DIGEST = "rlinf.MegatronModelManager:checkpoint-digest"


def make_digesting_save(original: Callable) -> Callable:
    """``MegatronModelManager.save_checkpoint`` that also returns this rank's state digest
    (weights, optimizer, LR schedule; ``rlinf_pangu.run_checkpoint.state_digest``), taken with the
    state on its device, right before Megatron writes it."""

    def save_checkpoint(self, *args, **kwargs):
        if not getattr(self, "is_running", True):
            return original(self, *args, **kwargs)
        from rlinf_pangu.run_checkpoint import state_digest

        with self.ensure_onloaded_and_then_offload():  # the original's own context nests as a no-op
            digest = state_digest(self)
            original(self, *args, **kwargs)
        return digest

    return mark(save_checkpoint, original)


def make_verified_load(original: Callable) -> Callable:
    """``MegatronModelManager.load_checkpoint`` that digests the loaded state and fails when it
    differs from the digest this rank recorded when it saved (the checkpoint's marker)."""

    def load_checkpoint(self, load_path, *args, **kwargs):
        out = original(self, load_path, *args, **kwargs)
        from rlinf_pangu.run_checkpoint import state_digest, verify_loaded

        with self.ensure_onloaded_and_then_offload():
            digest = state_digest(self)
        if verify_loaded(load_path, digest):
            log.info("resume: rank %d loaded exactly the weights, optimizer state and LR schedule it saved (weights %s, optimizer %s)",
                     digest["rank"], digest["weights"][:12], digest["optimizer"][:12])
        return out

    return mark(load_checkpoint, original)


@patch(
    MEGATRON_CHECKPOINT_DIGEST,
    why="RLinf's Megatron load_checkpoint never checks what it loaded (Megatron falls back to a non-strict load on a name mismatch, and a truncated or swapped file loads silently): each rank digests its state when saving and again after loading, and a difference fails the resume",
    module=_MM,
    applies=lambda: "def load_checkpoint" in upstream_source(_MM) and "digest" not in upstream_source(_MM),
)
def _megatron_checkpoint_digest() -> None:
    def install(mm) -> None:
        cls = mm.MegatronModelManager
        if not patched(cls.save_checkpoint):
            cls.save_checkpoint = make_digesting_save(cls.save_checkpoint)
        if not patched(cls.load_checkpoint):
            cls.load_checkpoint = make_verified_load(cls.load_checkpoint)

    after_import(_MM, install)


RUNNER_RESUMABLE_SAMPLER = "rlinf.ReasoningRunner:resumable-sampler"


def _runner_sampler_not_stateful() -> bool:
    src = upstream_source(_RUNNER)
    imported = src.split("from torch.utils.data import", 1)[1].split("\n", 1)[0] if "from torch.utils.data import" in src else ""
    return "RandomSampler" in imported and "RandomSampler(" in source_of(_RUNNER, "ReasoningRunner._build_dataloader")


@patch(
    RUNNER_RESUMABLE_SAMPLER,
    why="RLinf shuffles with torch's RandomSampler, whose generator state its StatefulDataLoader does not save: a run resumed after the first epoch draws the first epoch's order again instead of the current one",
    module=_RUNNER,
    applies=_runner_sampler_not_stateful,
)
def _runner_resumable_sampler() -> None:
    def install(rr) -> None:
        from rlinf_pangu.run_checkpoint import ResumableRandomSampler

        rr.RandomSampler = ResumableRandomSampler

    after_import(_RUNNER, install)


MEGATRON_SAVE_KEEPS_OFFLOAD_POLICY = "rlinf.MegatronModelManager:checkpoint-keeps-offload-policy"


def restore_offload_policy(manager: Any) -> None:
    """Bring back onto the device what the role's ``offload_weight/grad/optimizer`` settings keep
    there between steps. RLinf's loop only reloads gradients when ``offload_grad`` is set, so a
    gradient buffer left offloaded (resized to 0) is written by the next backward: a segfault."""
    cfg = manager._cfg
    keep_weights = not cfg.get("offload_weight", False)
    keep_grads = not cfg.get("offload_grad", False)
    if (keep_grads and manager.is_grad_offloaded) or (keep_weights and manager.is_weight_offloaded):
        weights_were_offloaded = manager.is_weight_offloaded
        manager.onload_model_weights_and_grad(load_grad=keep_grads)
        if weights_were_offloaded and not keep_weights:
            manager.offload_model_weights_and_grad(offload_grad=False, offload_weight=True)
    if not cfg.get("offload_optimizer", False) and manager.is_optimizer_offloaded:
        manager.onload_megatron_optimizer()


def make_offload_restoring_context(original: Callable) -> Callable:
    import contextlib

    @contextlib.contextmanager
    def ensure_onloaded_and_then_offload(self):
        with original(self):
            yield
        restore_offload_policy(self)

    return mark(ensure_onloaded_and_then_offload, original)


def _checkpoint_offloads_everything() -> bool:
    ctx = source_of(_MM, "MegatronModelManager.ensure_onloaded_and_then_offload")
    load = source_of(_MWORKER, "MegatronWorker._load_weight_and_optimizer")
    return "self.offload_model_weights_and_grad()" in ctx and "offload_grad" not in ctx and "load_grad=self.offload_grad" in load


@patch(
    MEGATRON_SAVE_KEEPS_OFFLOAD_POLICY,
    why="RLinf's Megatron save/load_checkpoint offload weights, gradients and optimizer afterwards whatever the role's offload_* settings, but the next step reloads gradients only when offload_grad is set: with offload_grad=False (the CPU mode, the disaggregated GPU placement) the step after a mid-run save segfaults in backward",
    module=_MM,
    applies=_checkpoint_offloads_everything,
)
def _checkpoint_keeps_offload_policy() -> None:
    def install(mm) -> None:
        cls = mm.MegatronModelManager
        if not patched(cls.ensure_onloaded_and_then_offload):
            cls.ensure_onloaded_and_then_offload = make_offload_restoring_context(cls.ensure_onloaded_and_then_offload)

    after_import(_MM, install)

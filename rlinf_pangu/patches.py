"""Every change this project makes to RLinf, SGLang and Megatron-core behaviour, in one place.

Each patch is a :class:`Patch` with a one-line ``why``, an ``applies`` probe that is True while
upstream still has the problem (tests assert it, so an upstream change under a patch fails a
test instead of silently double-patching), and ``apply``. ``apply_all()`` is called by
``rlinf_pangu.register()``; patches are idempotent and import their targets lazily, so a
package that is not installed simply has nothing patched.

Additive registrations (a new model type, convertor, spec) are not patches; they live in
``rlinf_pangu.integration``. CPU-only redirects are not here either: they live in
``rlinf_pangu.cpu_mode`` and are active only in the YAML-selected CPU mode.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


@dataclass
class Patch:
    name: str
    why: str
    module: str  # the upstream module the patch changes (imported lazily)
    applies: Callable[[], bool]  # True while upstream still needs this patch
    apply: Callable[[], None]
    done: bool = field(default=False, repr=False)


PATCHES: dict[str, Patch] = {}


def patch(name: str, why: str, module: str, applies: Callable[[], bool]):
    """Register ``fn`` as the ``apply`` of a patch on ``module``."""

    def deco(fn: Callable[[], None]) -> Callable[[], None]:
        if name in PATCHES:
            raise RuntimeError(f"patch {name!r} declared twice")
        PATCHES[name] = Patch(name, why, module, applies, fn)
        return fn

    return deco


def _installed(module: str) -> bool:
    top = module.split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def apply_patch(name: str) -> bool:
    """Apply one patch if its module is installed and upstream still needs it; True if applied now."""
    p = PATCHES[name]
    if p.done or not _installed(p.module):
        return False
    if not p.applies():
        log.info("patch %s not needed: upstream already changed (%s)", name, p.why)
        p.done = True
        return False
    p.apply()
    p.done = True
    log.debug("patched %s: %s", name, p.why)
    return True


#: Patches their owner applies at the right moment (e.g. SGLang's CPU-only ones, from inside an
#: SGLang process that serves on the CPU); ``apply_all()`` leaves them alone.
ON_DEMAND: set[str] = set()


def apply_all(only: list[str] | None = None) -> list[str]:
    """Apply every registered patch (or ``only`` those); returns the names applied now."""
    return [n for n in (only or [n for n in PATCHES if n not in ON_DEMAND]) if apply_patch(n)]


def _mod(name: str):
    return importlib.import_module(name)


# ======================================================================================
# Megatron-core and RLinf's Megatron model building (owner: the Megatron helper)
# ======================================================================================


class _ImportHooks(importlib.abc.MetaPathFinder):
    """Runs callbacks right after (or, with ``before=True``, right before) a module executes.

    After: patches on modules too heavy to import at ``register()`` time (RLinf's Megatron model
    manager pulls in megatron.training; SGLang scheduler processes call ``register()`` too and
    never need it). Before: fixes a module's import-time failures (``rlinf_compat.before_exec``).
    """

    def __init__(self, before: bool = False) -> None:
        self.pending: dict[str, list[Callable]] = {}
        self.before = before
        self._resolving: set[str] = set()  # two hook finders ask each other once, not forever

    def find_spec(self, fullname, path=None, target=None):
        if not self.pending.get(fullname) or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._resolving.discard(fullname)
        # find_spec alone (importlib.util.find_spec) must not use the hooks up: they are taken
        # when the module actually executes.
        if spec.loader is not None:
            spec.loader = _HookedLoader(spec.loader, self.pending, fullname, self.before)
        return spec


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, inner, pending: dict[str, list[Callable]], name: str, before: bool) -> None:
        self._inner, self._pending, self._name, self._before = inner, pending, name, before

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        if not self._before:
            self._inner.exec_module(module)
        for fn in self._pending.pop(self._name, []):
            fn(module)
        if self._before:
            self._inner.exec_module(module)

    def __getattr__(self, name):  # get_source, get_filename, ... for inspect and tracebacks
        return getattr(self._inner, name)


_POST_IMPORT = _ImportHooks()


def after_import(module: str, fn: Callable) -> None:
    """Call ``fn(module_object)`` now if ``module`` is imported, else right after its import."""
    mod = sys.modules.get(module)
    if mod is not None:
        fn(mod)
        return
    _POST_IMPORT.pending.setdefault(module, []).append(fn)
    if _POST_IMPORT not in sys.meta_path:
        sys.meta_path.insert(0, _POST_IMPORT)


def _source_of(module: str, qualname: str) -> str:
    """Source text of a function/method in ``module`` without importing it ('' if not found)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return ""
    tree = ast.parse(Path(spec.origin).read_text())
    scopes: list[ast.AST] = [tree]
    for part in qualname.split("."):
        found = None
        for scope in scopes:
            for node in getattr(scope, "body", []):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == part:
                    found = node
        if found is None:
            return ""
        scopes = [found]
    return ast.unparse(scopes[0])


_MM = "rlinf.hybrid_engines.megatron.megatron_model_manager"


@patch(
    "megatron.legacy.fused_kernels",
    why="RLinf's initialize imports megatron.legacy.fused_kernels, which no megatron-core wheel ships",
    module="megatron.core",
    applies=lambda: _mod("rlinf_pangu.megatron_legacy_shim").upstream_missing(),
)
def _provide_fused_kernels() -> None:
    # Ray workers import RLinf before register() runs: they get the same finder from the
    # start-up .pth that scripts/setup.sh installs (see megatron_legacy_shim).
    _mod("rlinf_pangu.megatron_legacy_shim").install()


@patch(
    "rlinf.get_specs",
    why="RLinf's get_specs builds every spec eagerly (the TE one fails without TE) and cannot learn Pangu's spec",
    module=_MM,
    applies=lambda: "pangu" not in _source_of(_MM, "get_specs").lower(),
)
def _lazy_get_specs() -> None:
    def install(mm) -> None:
        from .megatron.provider import make_get_specs

        if not hasattr(mm.get_specs, "__rlinf_pangu_original__"):
            mm.get_specs = make_get_specs(mm.get_specs)

    after_import(_MM, install)


@patch(
    "rlinf.model_provider_func",
    why="RLinf 0.3.0's provider takes (pre_process, post_process) only (megatron-core>=0.17 passes config/pg_collection/vp_stage) and cannot build Pangu",
    module=_MM,
    applies=lambda: "pangu" not in _source_of(_MM, "MegatronModelManager.model_provider_func").lower(),
)
def _pangu_model_provider() -> None:
    def install(mm) -> None:
        from .megatron.provider import make_model_provider_func

        cls = mm.MegatronModelManager
        if not hasattr(cls.model_provider_func, "__rlinf_pangu_original__"):
            cls.model_provider_func = make_model_provider_func(cls.model_provider_func)

    after_import(_MM, install)


@patch(
    "rlinf.validate_model_cfg_by_hf_config",
    why="RLinf's HF-config validation does not check Pangu's architecture keys or its TP/PP divisibility (errors would surface inside Megatron workers)",
    module="rlinf.config",
    applies=lambda: "pangu" not in _source_of("rlinf.config", "validate_model_cfg_by_hf_config").lower(),
)
def _validate_pangu_cfg() -> None:
    rc = _mod("rlinf.config")
    original = rc.validate_model_cfg_by_hf_config
    if hasattr(original, "__rlinf_pangu_original__"):
        return

    def validate_model_cfg_by_hf_config(cfg, hf_model_path):
        cfg = original(cfg, hf_model_path)
        from transformers import AutoConfig

        from .megatron.config import check_rlinf_model_cfg, is_pangu_hf_config

        hf_config = AutoConfig.from_pretrained(hf_model_path, trust_remote_code=True)
        if is_pangu_hf_config(hf_config):
            check_rlinf_model_cfg(cfg, hf_config)
        return cfg

    validate_model_cfg_by_hf_config.__doc__ = original.__doc__
    validate_model_cfg_by_hf_config.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    rc.validate_model_cfg_by_hf_config = validate_model_cfg_by_hf_config


# ======================================================================================
# RLinf's HF -> Megatron start-up conversion (owner: the ckpt_convertor helper)
# ======================================================================================

CKPT_CONVERT_DISPATCH = "rlinf.convert_hf_to_mg:pangu"
_RLINF_CONVERTER = "rlinf.utils.ckpt_convertor.megatron_convertor.convert_hf_to_mg"


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
    def install(mod) -> None:
        from ckpt_convertor.startup import dispatching_converter

        mod.convert_hf_to_mg = dispatching_converter(mod.convert_hf_to_mg)

    after_import(_RLINF_CONVERTER, install)


# ======================================================================================
# RLinf weight sync (owner: the sync helper)
# ======================================================================================

RESHARD_DISPATCH = "rlinf.get_reshard_fn:pangu"
_RESHARD_UTILS = "rlinf.utils.resharding.utils"
_RESHARD_CONFIG = "rlinf.utils.resharding.reshard_config"


def _rlinf_has_no_pangu_reshard() -> bool:
    return any(
        "pangu" not in _source_of(_RESHARD_UTILS, getter).lower()
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

        ru = _mod(_RESHARD_UTILS)
        for getter, table in (("get_tp_reshard_fn", resharding.TP_RESHARD_FNS), ("get_pp_reshard_fn", resharding.PP_RESHARD_FNS)):
            original = getattr(ru, getter)
            if not hasattr(original, "__rlinf_pangu_original__"):

                def dispatch(model_type, _original=original, _table=table):
                    target = _table.get(getattr(model_type, "value", model_type))
                    return resharding.resolve(target) if target is not None else _original(model_type)

                dispatch.__doc__ = original.__doc__
                dispatch.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
                setattr(ru, getter, dispatch)
            setattr(rc, getter, getattr(ru, getter))  # ReshardConfig calls the name it imported

    after_import(_RESHARD_CONFIG, install)


# ======================================================================================
# SGLang serving Pangu (owner: the sync helper). Child interpreters that SGLang spawns get
# these through rlinf_pangu.boot (its post-import hooks), the current one through register().
# ======================================================================================

#: transformers 5.17 already ships configs that sglang 0.5.17 (pinned to 5.12.1) registers.
SGLANG_EXIST_OK = "transformers.AutoConfig.register:sglang-exist_ok"
#: Config types sglang 0.5.17 registers unconditionally at import of ``sglang.srt.configs``.
_SGLANG_REGISTERED_CONFIGS = ("qwen3_asr", "qwen3_asr_thinker")


def _sglang_config_clash() -> bool:
    if not _installed("sglang"):
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return any(t in CONFIG_MAPPING_NAMES for t in _SGLANG_REGISTERED_CONFIGS)


@patch(
    SGLANG_EXIST_OK,
    why="sglang 0.5.17 re-registers configs transformers 5.17 ships ('qwen3_asr' is already used by a Transformers config), which kills `import sglang`",
    module="transformers.models.auto.configuration_auto",
    applies=_sglang_config_clash,
)
def _tolerate_sglang_config_registration() -> None:
    ca = _mod("transformers.models.auto.configuration_auto")
    original = ca.AutoConfig.register
    if hasattr(original, "__rlinf_pangu_original__"):
        return

    def register(model_type, config, exist_ok=False):
        # Only SGLang's own config classes get the tolerance; everyone else keeps the check.
        if str(getattr(config, "__module__", "")).startswith("sglang."):
            exist_ok = True
        return original(model_type, config, exist_ok=exist_ok)

    register.__doc__ = original.__doc__
    register.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    ca.AutoConfig.register = staticmethod(register)


# --------------------------------------------------------------------------------------
# SGLang, CPU mode only. These apply only inside an SGLang process whose server args say
# device="cpu" (their probes read SGLang's published server args, which exist only in
# SGLang's own processes), so they can never touch the GPU path. The Pangu model class
# calls apply_sglang_cpu_patches() when it is built.
# --------------------------------------------------------------------------------------

SGLANG_CPU_ROPE = "sglang.RotaryEmbedding:native-on-cpu"
SGLANG_CPU_PATCHES = (SGLANG_CPU_ROPE,)
ON_DEMAND.update(SGLANG_CPU_PATCHES)


def _sglang_serving_on_cpu() -> bool:
    rc = sys.modules.get("sglang.srt.runtime_context")  # never import SGLang just to look
    args = rc.get_context().server_args if rc is not None else None
    return args is not None and getattr(args, "device", None) == "cpu"


def _sglang_rope_needs_cpu_flag() -> bool:
    if not _installed("sglang") or not _sglang_serving_on_cpu():
        return False
    return not _mod("sglang.srt.layers.rotary_embedding.base")._is_cpu


@patch(
    SGLANG_CPU_ROPE,
    why="[CPU mode only] without SGLang's CPU kernel build (SGLANG_USE_CPU_ENGINE), RotaryEmbedding on device=cpu reaches for vllm's custom op; flag the host as CPU so it takes the native path",
    module="sglang.srt.layers.rotary_embedding.base",
    applies=_sglang_rope_needs_cpu_flag,
)
def _sglang_rope_native_on_cpu() -> None:
    _mod("sglang.srt.layers.rotary_embedding.base")._is_cpu = True


def apply_sglang_cpu_patches() -> list[str]:
    """Apply the CPU-only SGLang patches if this SGLang process serves on the CPU.

    Unlike :func:`apply_patch` this re-probes every time: an earlier probe in the same process
    (before SGLang published its server args) must not rule the patch out for good.
    """
    applied = []
    for name in SGLANG_CPU_PATCHES:
        p = PATCHES[name]
        if p.applies():
            p.apply()
            p.done = True
            applied.append(name)
            log.info("patched %s: %s", name, p.why)
    return applied


# ======================================================================================
# RLinf's training loop on this stack (owner: the entry-point helper). The code these
# install is in rlinf_pangu.rlinf_compat. Probes read upstream source from disk (no import),
# so the start-up ones are cheap in every child interpreter (see arm_startup()).
# ======================================================================================

_INIT = "rlinf.utils.initialize"
_RUNNER = "rlinf.runners.reasoning_runner"
_MWORKER = "rlinf.workers.megatron_worker"
_CLUSTER = "rlinf.scheduler.cluster.cluster"
_SGL_GATE = "rlinf.workers.rollout.sglang"
_SGL_WORKER = "rlinf.workers.rollout.sglang.sglang_worker"
_SGL_SCHED = "rlinf.hybrid_engines.sglang.common.sgl_scheduler"
_SGL_TM = "rlinf.hybrid_engines.sglang.common.tokenizer_manager"
_FSDP_MM = "rlinf.hybrid_engines.fsdp.fsdp_model_manager"
_DATASET = "rlinf.data.datasets.reasoning"


def _src(module: str) -> str:
    return _mod("rlinf_pangu.rlinf_compat").upstream_source(module)


def _compat():
    return _mod("rlinf_pangu.rlinf_compat")


MEGATRON_ARGS = "rlinf.set_megatron_args:complete"


def _megatron_args_incomplete() -> bool:
    init = _src(_INIT)
    training = _src("megatron.training.training")
    return "extract_selected_fields" in init and "perform_rl_step" in training and "perform_rl_step" not in init


@patch(
    MEGATRON_ARGS,
    why="RLinf builds Megatron's global args from its own YAML field list; megatron-core 0.19's megatron.training reads ~800 argparse keys it lacks (perform_rl_step ...): add the missing ones with Megatron's defaults",
    module=_INIT,
    applies=_megatron_args_incomplete,
)
def _complete_megatron_args() -> None:
    # set_megatron_args() (called again in setup_model_and_optimizer) hands its args to the
    # module-global set_args: wrapping that catches every rebuild.
    def install(init) -> None:
        if not hasattr(init.set_args, "__rlinf_pangu_original__"):
            init.set_args = _compat().make_complete_set_args(init.set_args)

    after_import(_INIT, install)


SGLANG_GATE = "rlinf.rollout.sglang:version-gate"


def _sglang_gate_too_narrow() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import parse

    try:
        installed = parse(version("sglang"))
    except PackageNotFoundError:
        return False
    return _compat().RLINF_SGLANG_BOUND in _src(_SGL_GATE) and installed > parse("0.5.4")


@patch(
    SGLANG_GATE,
    why="RLinf 0.3.0's SGLang rollout refuses sglang > 0.5.4; torch 2.11 needs sglang 0.5.11..0.5.17 (the pinned 0.5.17 runs with the patches below)",
    module=_SGL_GATE,
    applies=_sglang_gate_too_narrow,
)
def _widen_sglang_gate() -> None:
    if not _compat().before_exec(_SGL_GATE, _compat().widen_sglang_gate):
        log.error("%s was imported before the SGLang version patch could run", _SGL_GATE)


SGLANG_DISPATCH_EXTEND = "sglang.TypeBasedDispatcher:extend"


@patch(
    SGLANG_DISPATCH_EXTEND,
    why="RLinf registers its scheduler/tokenizer handlers with _mapping.extend(...); sglang >= 0.5.5 made _mapping an OrderedDict",
    module="sglang.utils",
    applies=lambda: "OrderedDict(mapping)" in _src("sglang.utils") and "_mapping.extend" in _src(_SGL_SCHED),
)
def _extendable_dispatch() -> None:
    def install(su) -> None:
        init = su.TypeBasedDispatcher.__init__
        if not hasattr(init, "__rlinf_pangu_original__"):
            su.TypeBasedDispatcher.__init__ = _compat().make_dispatcher_init(init)

    after_import("sglang.utils", install)


SGLANG_COMMUNICATOR = "rlinf.TokenizerManager:_Communicator"


def _communicator_moved() -> bool:
    return (
        "tokenizer_communicator_mixin import _Communicator" in _src(_SGL_TM)
        and "class _Communicator" not in _src("sglang.srt.managers.tokenizer_manager")
        and _compat().upstream_file("sglang.srt.managers.tokenizer_communicator_mixin") is None
    )


@patch(
    SGLANG_COMMUNICATOR,
    why="RLinf's TokenizerManager imports _Communicator from sglang modules 0.5.17 no longer has; 0.5.17's FanOutCommunicator does the job given the send function",
    module=_SGL_TM,
    applies=_communicator_moved,
)
def _provide_communicator() -> None:
    def provide(_rlinf_tm) -> None:
        stm = _mod("sglang.srt.managers.tokenizer_manager")
        if not hasattr(stm, "_Communicator"):
            stm._Communicator = _compat().make_communicator_cls()

    _compat().before_exec(_SGL_TM, provide)


SGLANG_SERVER_ARGS = "rlinf.SGLangWorker:ServerArgs-renamed"


@patch(
    SGLANG_SERVER_ARGS,
    why="RLinf passes ServerArgs(cuda_graph_max_bs=...); sglang 0.5.17 calls it cuda_graph_max_bs_decode",
    module=_SGL_WORKER,
    applies=lambda: "cuda_graph_max_bs=" in _src(_SGL_WORKER)
    and "cuda_graph_max_bs:" not in _src("sglang.srt.server_args"),
)
def _rename_server_args() -> None:
    def install(sw) -> None:
        if not hasattr(sw.ServerArgs, "__rlinf_pangu_original__"):
            sw.ServerArgs = _compat().make_server_args_factory(sw.ServerArgs)

    after_import(_SGL_WORKER, install)


SGLANG_PARALLEL_STATE = "rlinf.Scheduler:tp_size"


@patch(
    SGLANG_PARALLEL_STATE,
    why="RLinf's Scheduler reads self.tp_size/self.tp_rank; sglang 0.5.17's Scheduler keeps them in self.ps",
    module=_SGL_SCHED,
    applies=lambda: "self.tp_size" in _src(_SGL_SCHED)
    and "self.tp_size =" not in _src("sglang.srt.managers.scheduler"),
)
def _scheduler_parallel_state() -> None:
    after_import(_SGL_SCHED, lambda m: _compat().add_parallel_state_properties(m.Scheduler))


SGLANG_MEMORY_OCCUPATION = "rlinf.Scheduler:release/resume-routing"


@patch(
    SGLANG_MEMORY_OCCUPATION,
    why="sglang 0.5.17 dispatches release/resume_memory_occupation to its weight updater, past RLinf's Scheduler overrides: RLinf never learns the weights were paused and syncs into unmapped memory (CUDA invalid argument)",
    module=_SGL_SCHED,
    applies=lambda: "def release_memory_occupation" in _src(_SGL_SCHED)
    and "self.weight_updater.release_memory_occupation" in _src("sglang.srt.managers.scheduler")
    and "def release_memory_occupation" not in _src("sglang.srt.managers.scheduler"),
)
def _route_memory_occupation() -> None:
    after_import(_SGL_SCHED, lambda m: _compat().route_memory_occupation(m.Scheduler))


RAY_STATE_WITHOUT_DASHBOARD = "rlinf.Cluster:failure-handler-without-dashboard"


@patch(
    RAY_STATE_WITHOUT_DASHBOARD,
    why="RLinf's worker-failure handler lists actors through Ray's state API, which needs the dashboard the driver does not start: its ServerUnavailable buried the worker's real error",
    module=_CLUSTER,
    applies=lambda: "list_actors(" in _src(_CLUSTER),
)
def _failure_handler_without_dashboard() -> None:
    def install(cl) -> None:
        if not hasattr(cl.list_actors, "__rlinf_pangu_original__"):
            cl.list_actors = _compat().make_list_actors(cl.list_actors)

    after_import(_CLUSTER, install)


ROLLOUT_SYNC_SETUP = "rlinf.MegatronActor:rollout-sync-setup"
_MACTOR = "rlinf.workers.actor.megatron_actor_worker"


@patch(
    ROLLOUT_SYNC_SETUP,
    why="RLinf's Megatron actor builds its rollout sync from the model type alone: no bucket capacity (ReshardConfig's 128 MiB; a 7B sync measured 0.30 s vs 0.10 s in 2 GiB buckets) and no say in whether the rollout can unpack Pangu's packed buckets",
    module=_MACTOR,
    applies=lambda: "rollout_weights_reshard = MegatronCoreWeightReshard" in _src(_MACTOR)
    and "bucket_capacity" not in _src(_MACTOR)
    and "get_mg2hf_convertor(self.model_type, self, strict=True)" in _src(_RESHARD_CONFIG),
)
def _rollout_sync_setup() -> None:
    def install(ma) -> None:
        fn = ma.MegatronActor.init_worker_customize
        if not hasattr(fn, "__rlinf_pangu_original__"):
            ma.MegatronActor.init_worker_customize = _compat().make_rollout_sync_setup(fn)

    after_import(_MACTOR, install)


DATASET_ENCODE = "rlinf.ReasoningDataset.encode_batch"


@patch(
    DATASET_ENCODE,
    why="RLinf's dataset calls tokenizer.batch_encode_plus (gone in transformers 5): every sample is silently dropped, then 'No samples found within max_prompt_length'",
    module=_DATASET,
    applies=lambda: "batch_encode_plus" in _src(_DATASET)
    and "def batch_encode_plus" not in _src("transformers.tokenization_utils_base"),
)
def _dataset_encode_batch() -> None:
    def install(ds) -> None:
        ds.ReasoningDataset.encode_batch = _compat().encode_batch

    after_import(_DATASET, install)


VISION2SEQ = "transformers.AutoModelForVision2Seq"


@patch(
    VISION2SEQ,
    why="RLinf's reward worker imports fsdp_model_manager, which imports AutoModelForVision2Seq (renamed AutoModelForImageTextToText in transformers 5)",
    module=_FSDP_MM,
    applies=lambda: "AutoModelForVision2Seq" in _src(_FSDP_MM)
    and "AutoModelForVision2Seq" not in _src("transformers.models.auto.modeling_auto"),
)
def _alias_vision2seq() -> None:
    if not _compat().before_exec(_FSDP_MM, _compat().alias_vision2seq):
        _compat().alias_vision2seq()


RUNNER_LAST_STEP = "rlinf.ReasoningRunner:log-last-step"


def _runner_drops_last_step() -> bool:
    run = _source_of(_RUNNER, "ReasoningRunner.run")
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
        if hasattr(rr.check_progress, "__rlinf_pangu_original__"):
            return
        progress = _compat().make_check_progress(rr.check_progress)
        rr.check_progress = progress
        cls = rr.ReasoningRunner
        cls._put_batch = _compat().make_put_batch(cls._put_batch, progress)
        cls.run = _compat().make_run(cls.run, progress)

    after_import(_RUNNER, install)


LOGPROB_GAP = "rlinf.MegatronWorker:logprob-gap-metric"


@patch(
    LOGPROB_GAP,
    why="additive metric: the per-step gap between SGLang's rollout log-probs and the actor's recomputed ones (the weight-sync health check), which RLinf does not report",
    module=_MWORKER,
    applies=lambda: "logprob_gap" not in _src(_MWORKER),
)
def _logprob_gap_metric() -> None:
    def install(mw) -> None:
        fn = mw.MegatronWorker._compute_rollout_metrics
        if not hasattr(fn, "__rlinf_pangu_original__"):
            mw.MegatronWorker._compute_rollout_metrics = _compat().make_rollout_metrics(fn)

    after_import(_MWORKER, install)


#: Patches that must be in place when a child interpreter (Ray worker, SGLang scheduler) first
#: imports RLinf: they fix import-time failures or run before ``register()`` can be called there.
STARTUP_PATCHES = (
    "megatron.legacy.fused_kernels",  # Ray workers unpickle the Megatron actor before register()
    "rlinf.get_specs",
    "rlinf.model_provider_func",
    MEGATRON_ARGS,
    SGLANG_GATE,
    SGLANG_DISPATCH_EXTEND,
    SGLANG_COMMUNICATOR,
    SGLANG_SERVER_ARGS,
    SGLANG_PARALLEL_STATE,
    SGLANG_MEMORY_OCCUPATION,
    VISION2SEQ,
)


def arm_startup() -> list[str]:
    """Arm the start-up patches (cheap: file reads and import hooks only); ``rlinf_pangu.boot`` calls it.

    In a process of an explicit CPU-mode run this also arms ``rlinf_pangu.cpu_mode`` (the only
    place that module is imported from at start-up).
    """
    applied = apply_all(list(STARTUP_PATCHES))
    from . import _cpu_mode_run

    if _cpu_mode_run():
        _mod("rlinf_pangu.cpu_mode").arm()
    return applied


LATEX2SYMPY = "latex2sympy2:antlr-4.11-vs-4.9"
_VERIFY = "rlinf.algorithms.rewards.math.math_verifier.verify"


def _latex2sympy_unimportable() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import parse

    lexer = _compat().upstream_file("gen.PSLexer")
    try:
        runtime = parse(version("antlr4-python3-runtime"))
    except PackageNotFoundError:
        return False
    return lexer is not None and "by ANTLR 4.1" in lexer.read_text()[:200] and runtime < parse("4.10")


@patch(
    LATEX2SYMPY,
    why="rlinf-latex2sympy2's lexer is generated by ANTLR 4.11 but hydra pins the 4.9 runtime: it fails while RLinf's math verifier imports it; a stand-in that raises lets the verifier's own parser fallbacks (parse_expr) grade",
    module=_VERIFY,
    applies=_latex2sympy_unimportable,
)
def _latex2sympy_standin() -> None:
    if not _compat().before_exec(_VERIFY, _compat().latex2sympy_standin):
        _compat().latex2sympy_standin()


NO_PACKING_WITHOUT_TE = "rlinf.custom_forward:no-packing-without-TE"


@patch(
    NO_PACKING_WITHOUT_TE,
    why="RLinf's Megatron forward always packs sequences (THD), which only Transformer Engine's attention runs; without TE, use RLinf's own unpacked path",
    module=_MM,
    applies=lambda: "pack_seqs=True" in _src(_MM) and not _compat().te_installed(),
)
def _no_packing_without_te() -> None:
    def install(mm) -> None:
        cls = mm.MegatronModelManager
        fn = cls.__dict__["custom_forward"]
        original = fn.__func__ if isinstance(fn, staticmethod) else fn
        if not hasattr(original, "__rlinf_pangu_original__"):
            cls.custom_forward = staticmethod(_compat().make_custom_forward(original))

    after_import(_MM, install)

STARTUP_PATCHES = STARTUP_PATCHES + (NO_PACKING_WITHOUT_TE,)

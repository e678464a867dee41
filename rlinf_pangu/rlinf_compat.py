"""What the patches of RLinf's training loop (``rlinf_pangu.patches``, entry-point section) install.

``patches.py`` declares each patch (why, probe, apply); the code they install lives here so the
declarations stay readable. Two kinds of change:

* run-time replacements (wrapping a function or method after its module is imported), and
* import-time fixes, for RLinf modules that fail *while importing* on this stack (a version gate,
  a moved SGLang symbol, a removed transformers class). Ray workers and SGLang's spawned processes
  import those modules before ``register()`` can run, so these fixes are armed by a pre-import hook
  (:func:`before_exec`) that ``rlinf_pangu.boot``'s start-up hook installs in every child interpreter.

Nothing here imports RLinf, SGLang or Megatron at module import.
"""

from __future__ import annotations

import argparse
import functools
import importlib.abc
import importlib.machinery
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from .patches import _HookedLoader, _ImportHooks

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Reading upstream source without importing it, and running code before a module executes
# --------------------------------------------------------------------------------------


def upstream_file(module: str) -> Path | None:
    """The source file of ``module`` (dotted) located on disk without importing any package."""
    top, *rest = module.split(".")
    spec = importlib.machinery.PathFinder.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def upstream_source(module: str) -> str:
    """``module``'s source text ('' when not installed), read from disk without importing it."""
    path = upstream_file(module)
    return path.read_text() if path is not None else ""


_PRE_EXEC = _ImportHooks(before=True)


def before_exec(module: str, fn: Callable[[Any], None]) -> bool:
    """Call ``fn(module_object)`` right before ``module`` executes; False if it already has."""
    if module in sys.modules:
        return False
    _PRE_EXEC.pending.setdefault(module, []).append(fn)
    if _PRE_EXEC not in sys.meta_path:
        sys.meta_path.insert(0, _PRE_EXEC)
    return True


# --------------------------------------------------------------------------------------
# Megatron's global args (rlinf-compat #19)
# --------------------------------------------------------------------------------------


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

    set_args.__doc__ = original.__doc__
    set_args.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return set_args


# --------------------------------------------------------------------------------------
# RLinf's SGLang rollout on sglang 0.5.17 (rlinf-compat #5, #6, #9, #16, #17)
# --------------------------------------------------------------------------------------

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
    while isinstance(getattr(loader, "_inner", None), _HookedLoader):  # hook loaders wrap each other
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
    if isinstance(loader, _HookedLoader):
        loader._inner = rewritten


def _extendable_mapping_cls():
    from collections import OrderedDict

    class ExtendableMapping(OrderedDict):
        """SGLang >= 0.5.5's dispatcher mapping (an OrderedDict) that also takes RLinf's ``extend``."""

        def extend(self, pairs) -> None:
            self.update(pairs)

    return ExtendableMapping


def make_dispatcher_init(original: Callable) -> Callable:
    mapping_cls = _extendable_mapping_cls()

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not hasattr(self._mapping, "extend"):
            self._mapping = mapping_cls(self._mapping)

    __init__.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return __init__


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


#: RLinf 0.3.0 ``ServerArgs`` keyword -> sglang 0.5.17 name.
SERVER_ARGS_RENAMED = {"cuda_graph_max_bs": "cuda_graph_max_bs_decode"}


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

    ServerArgs.__rlinf_pangu_original__ = server_args_cls  # type: ignore[attr-defined]
    return ServerArgs


#: Extra ``kwargs -> kwargs`` rewrites of RLinf's ServerArgs (the CPU mode adds its settings here).
SERVER_ARGS_HOOKS: list[Callable[[dict[str, Any]], dict[str, Any]]] = []


def add_parallel_state_properties(scheduler_cls: type) -> list[str]:
    """RLinf's Scheduler reads ``self.tp_size``/``self.tp_rank``; sglang 0.5.17 keeps them in ``self.ps``."""
    added = []
    for name in ("tp_size", "tp_rank"):
        if name in vars(scheduler_cls) or any(name in vars(b) for b in scheduler_cls.__mro__[1:]):
            continue
        setattr(scheduler_cls, name, property(lambda self, _n=name: getattr(self.ps, _n)))
        added.append(name)
    return added


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
    if hasattr(original, "__rlinf_pangu_original__"):
        return

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        reroute_memory_requests(self)

    __init__.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    rlinf_scheduler_cls.__init__ = __init__


def reroute_memory_requests(scheduler) -> None:
    """Point this scheduler's release/resume requests at its own (RLinf's) methods."""
    from sglang.srt.managers.io_struct import ReleaseMemoryOccupationReqInput, ResumeMemoryOccupationReqInput

    mapping = scheduler._request_dispatcher._mapping
    mapping[ReleaseMemoryOccupationReqInput] = scheduler.release_memory_occupation
    mapping[ResumeMemoryOccupationReqInput] = scheduler.resume_memory_occupation


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

    list_actors.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return list_actors


# --------------------------------------------------------------------------------------
# Datasets (rlinf-compat #12) and transformers 5 (rlinf-compat #2)
# --------------------------------------------------------------------------------------


def encode_batch(self, texts) -> list[list[int]]:
    """``ReasoningDataset.encode_batch`` through the tokenizer's ``__call__`` (transformers 5)."""
    return self.tokenizer(list(texts))["input_ids"]


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


# --------------------------------------------------------------------------------------
# The training loop (reasoning runner)
# --------------------------------------------------------------------------------------


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
    check_progress.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return check_progress


def make_put_batch(original: Callable, progress: Callable) -> Callable:
    def _put_batch(self, *args, **kwargs):
        if getattr(progress, "finished", False):
            raise RunFinished()
        return original(self, *args, **kwargs)

    _put_batch.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return _put_batch


def make_run(original: Callable, progress: Callable) -> Callable:
    def run(self, *args, **kwargs):
        progress.finished = False
        try:
            return original(self, *args, **kwargs)
        except RunFinished:
            logging.getLogger("rlinf_pangu.train").info("Step limit max_steps=%s reached. Stopping run", self.max_steps)
        finally:
            self.metric_logger.finish()

    run.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return run


def _set_bucket_capacity(actor) -> None:
    capacity = actor.cfg.actor.get("sync_bucket_capacity", None)
    if capacity is not None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"actor.sync_bucket_capacity must be a positive number of bytes, got {capacity!r}")
        actor.rollout_weights_reshard.bucket_capacity = capacity
    log.info("weight-sync bucket capacity: %d MiB", actor.rollout_weights_reshard.bucket_capacity // 2**20)


def _choose_packing(actor) -> None:
    from resharding.convertor import PanguConvertor

    from .packed_bucket import rollout_reads_packed

    convertor = getattr(getattr(actor.rollout_weights_reshard, "config", None), "_convertor", None)
    if not isinstance(convertor, PanguConvertor):
        return  # another model type, the mcore format, or a caller's own convert_fn
    rollout = actor.cfg.rollout
    convertor.packed, why = rollout_reads_packed(rollout.get("rollout_backend", "sglang"), rollout.model.model_path)
    log.info("weight-sync buckets: %s (%s)", "one packed buffer each" if convertor.packed else "a tensor per HF name", why)


def make_rollout_sync_setup(original: Callable) -> Callable:
    """After RLinf's ``MegatronActor.init_worker_customize`` built the rollout sync: give it the
    bucket capacity ``actor.sync_bucket_capacity`` (bytes; the key and unit RLinf's FSDP actor
    already reads; absent: RLinf's 128 MiB), and let Pangu's convertor pack buckets only when the
    rollout is the class that unpacks them (``rlinf_pangu.packed_bucket.rollout_reads_packed``)."""

    def init_worker_customize(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        _set_bucket_capacity(self)
        _choose_packing(self)
        return out

    init_worker_customize.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return init_worker_customize


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

    _compute_rollout_metrics.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return _compute_rollout_metrics


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


# --------------------------------------------------------------------------------------
# RLinf's math verifier and latex2sympy2 (rlinf-compat #18)
# --------------------------------------------------------------------------------------


def latex2sympy_standin(_module=None) -> bool:
    """Install a ``latex2sympy2`` whose ``latex2sympy()`` raises, if the real one cannot import.

    rlinf-latex2sympy2's parser is generated by ANTLR 4.11 while hydra/omegaconf need the 4.9
    runtime: its lexer fails while importing, and RLinf's verifier imports it at module level.
    The verifier calls it inside a try-chain (sympy's parse_latex, parse_expr, latex2sympy), so a
    stand-in that raises leaves the other parsers to do the work. Returns True if installed.
    """
    import types

    try:
        import latex2sympy2  # noqa: F401

        return False
    except Exception as e:  # TypeError from the ATN deserializer, ImportError after it
        reason = f"{type(e).__name__}: {e}"
    for name in [m for m in sys.modules if m == "latex2sympy2" or m.startswith("gen.")]:
        sys.modules.pop(name, None)
    mod = types.ModuleType("latex2sympy2", "Stand-in from rlinf_pangu.rlinf_compat: " + reason)

    def latex2sympy(*args, **kwargs):
        raise NotImplementedError(f"latex2sympy2 is not importable here ({reason})")

    mod.latex2sympy = latex2sympy
    sys.modules["latex2sympy2"] = mod
    log.info("latex2sympy2 replaced by a stand-in (%s)", reason)
    return True


# --------------------------------------------------------------------------------------
# Sequence packing needs Transformer Engine
# --------------------------------------------------------------------------------------


def te_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformer_engine") is not None


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
    """RLinf's ``custom_forward`` without sequence packing when Transformer Engine is absent.

    RLinf packs every micro-batch into THD form (``packed_seq_params``); only TE's attention runs
    that, megatron-core's own ``DotProductAttention`` asserts. RLinf's own unpacked path (left
    padding removed) computes the same log-probs; its 2-D padding mask is left to TE too, so the
    model is called causal-only (:class:`_CausalOnly`).
    """

    def custom_forward(model, *args, **kwargs):
        kwargs["pack_seqs"] = False
        return original(_CausalOnly(model), *args, **kwargs)

    custom_forward.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return custom_forward

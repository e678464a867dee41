"""Where a GRPO step's time goes: wall-clock spans of RLinf's phases, from every process of a run.

Why: RLinf times a step's phases from the driver's side (``time/rollout``, ``time/reward``, ...), and
those durations overlap (``time/reward`` runs from the step's start, so it holds the whole rollout)
and leave out the offload/onload of the Megatron state and of SGLang's memory around each phase.
"step minus the named phases" then neither adds up nor says what is left. The GRPO benchmark
(``benchmarks/grpo_step.py``) needs each phase as an interval on one clock, so that a step can be cut
into phases that do not overlap and the rest is what no phase covers.

With ``RLINF_PANGU_PHASE_TRACE=<file>`` in the environment of ``python -m rlinf.train`` (Ray workers
and SGLang's scheduler processes inherit it), patch ``rlinf.*:phase-trace``
(``rlinf_pangu.patches.rlinf``) wraps the functions in :data:`TRACED` and every call appends one
JSON line: ``{"span", "pid", "t0", "t1", "ok", ...}`` (``time.monotonic()``: one clock for all the
processes of a host). Without the variable nothing is wrapped and nothing changes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

ENV = "RLINF_PANGU_PHASE_TRACE"
_MARK = "__rlinf_pangu_trace__"
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Traced:
    """One function to time: ``module:Class.method`` -> span name; ``attrs`` reads call details."""

    module: str
    qualname: str
    span: str
    attrs: Callable[..., dict[str, Any]] | None = None


def _pinned_alloc_attrs(self: Any, tensor: Any) -> dict[str, Any]:
    """RLinf's ``_get_pinned_buffer`` allocates page-locked host memory only on a tensor's first
    offload (later offloads reuse ``tensor.cpu_data``): say which call this is, and its size."""
    existing = getattr(tensor, "cpu_data", None)
    size = tensor.untyped_storage().size()
    return {"allocates": existing is None or existing.untyped_storage().size() < size, "bytes": int(size)}


def _flags(*names: str) -> Callable[..., dict[str, Any]]:
    def attrs(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {n: kwargs[n] for n in names if n in kwargs} | {f"arg{i}": a for i, a in enumerate(args) if isinstance(a, bool)}

    return attrs


_MM = "rlinf.hybrid_engines.megatron.megatron_model_manager"
_MW = "rlinf.workers.megatron_worker"
_MA = "rlinf.workers.actor.megatron_actor_worker"
_FM = "rlinf.hybrid_engines.fsdp.fsdp_model_manager"
_FA = "rlinf.workers.actor.fsdp_actor_worker"
_RUNNER = "rlinf.runners.reasoning_runner"
_SGL_WORKER = "rlinf.workers.rollout.sglang.sglang_worker"
_SGL_SCHED = "rlinf.hybrid_engines.sglang.common.sgl_scheduler"
_REWARD = "rlinf.workers.reward.reward_worker"

#: What is timed, as data. Spans nest (``actor.sync_send`` holds the offloads it makes); the
#: benchmark's analysis (``benchmarks/grpo_step.py``) cuts them into non-overlapping phases.
TRACED: tuple[Traced, ...] = (
    # the driver (RLinf's ReasoningRunner): a step starts with its batch going to the rollout
    Traced(_RUNNER, "ReasoningRunner._put_batch", "driver.prepare_data"),
    Traced(_RUNNER, "ReasoningRunner._sync_weights", "driver.sync_weights"),
    # the actor: RLinf's offload/onload of the Megatron state (weights, grads, optimizer)
    Traced(_MM, "MegatronModelManager.onload_model_weights_and_grad", "actor.onload_weights", _flags("load_grad")),
    Traced(_MM, "MegatronModelManager.offload_model_weights_and_grad", "actor.offload_weights",
           _flags("offload_grad", "offload_weight")),
    Traced(_MM, "MegatronModelManager.onload_megatron_optimizer", "actor.onload_optimizer"),
    Traced(_MM, "MegatronModelManager.offload_megatron_optimizer", "actor.offload_optimizer"),
    Traced(_MM, "MegatronModelManager._get_pinned_buffer", "actor.pinned_buffer", _pinned_alloc_attrs),
    # the actor: the phases' own work, and what sits between them
    Traced(_MA, "MegatronActor.sync_model_to_rollout", "actor.sync_send"),
    Traced(_MW, "MegatronWorker.run_inference", "actor.run_inference"),
    Traced(_MW, "MegatronWorker.inference_step", "actor.logprob_compute"),
    Traced(_MW, "MegatronWorker.run_training", "actor.run_training"),
    Traced(_MW, "MegatronWorker.training_step", "actor.train_compute"),
    Traced(_MW, "MegatronWorker._load_weight_and_optimizer", "actor.load_state"),
    Traced(_MW, "MegatronWorker.compute_advantages_and_returns", "actor.advantages"),
    Traced(_MW, "MegatronWorker._compute_rollout_metrics", "actor.rollout_metrics"),
    # RLinf's FSDP actor (actor.training_backend: fsdp): the same spans under the same names, so the
    # benchmark cuts its steps as it cuts the Megatron actor's
    Traced(_FM, "FSDPModelManager.load_param_and_grad", "actor.onload_weights", _flags("load_grad")),
    Traced(_FM, "FSDPModelManager.offload_param_and_grad", "actor.offload_weights", _flags("offload_grad")),
    Traced(_FM, "FSDPModelManager.load_optimizer", "actor.onload_optimizer"),
    Traced(_FM, "FSDPModelManager.offload_optimizer", "actor.offload_optimizer"),
    Traced(_FA, "FSDPActor.sync_model_to_rollout", "actor.sync_send"),
    Traced(_FA, "FSDPActor.run_inference", "actor.run_inference"),
    Traced(_FA, "FSDPActor.inference_step", "actor.logprob_compute"),
    Traced(_FA, "FSDPActor.run_training", "actor.run_training"),
    Traced(_FA, "FSDPActor.training_step", "actor.train_compute"),
    Traced(_FA, "FSDPActor._load_weight_and_optimizer", "actor.load_state"),
    Traced(_FA, "FSDPActor.compute_advantages_and_returns", "actor.advantages"),
    # the rollout worker (SGLang engine owner) and SGLang's scheduler process
    Traced(_SGL_WORKER, "SGLangWorker.rollout", "rollout.total"),
    Traced(_SGL_WORKER, "SGLangWorker.offload_engine", "rollout.release"),
    Traced(_SGL_WORKER, "SGLangWorker.sync_model_from_actor", "rollout.sync_receive"),
    Traced(_SGL_SCHED, "Scheduler.resume_memory_occupation", "sglang.resume"),
    Traced(_SGL_SCHED, "Scheduler.release_memory_occupation", "sglang.release"),
    Traced(_SGL_SCHED, "Scheduler.batch_load_hf_weight", "sglang.load_weights"),
    Traced(_SGL_SCHED, "Scheduler.flush_cache", "sglang.flush_cache"),
    # the reward worker: the grading itself (RLinf's time/reward also holds the wait for the rollout)
    Traced(_REWARD, "RewardWorker._compute_rule_based_rewards", "reward.compute"),
)


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def record(span: str, t0: float, t1: float, ok: bool = True, **attrs: Any) -> None:
    """Append one span to the trace file (a no-op when tracing is off)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"span": span, "pid": os.getpid(), "t0": t0, "t1": t1, "ok": ok, **attrs}, default=str) + "\n"
    with _LOCK:  # one write per line, O_APPEND: lines of several processes never interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


@contextlib.contextmanager
def span(name: str, **attrs: Any) -> Iterator[None]:
    t0, ok = time.monotonic(), False
    try:
        yield
        ok = True
    finally:
        record(name, t0, time.monotonic(), ok, **attrs)


def _safe_attrs(fn: Callable[..., dict[str, Any]] | None, args: tuple, kwargs: dict) -> dict[str, Any]:
    if fn is None:
        return {}
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # a trace must never break the run
        return {"attrs_error": f"{type(e).__name__}: {e}"}


def traced(fn: Callable, name: str, attrs: Callable[..., dict[str, Any]] | None = None) -> Callable:
    """``fn`` (sync or async) that records a span per call; the signature and async-ness are kept
    (RLinf dispatches coroutine methods differently)."""
    if getattr(fn, _MARK, False):
        return fn
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            extra = _safe_attrs(attrs, args, kwargs)
            with span(name, **extra):
                return await fn(*args, **kwargs)
    else:

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            extra = _safe_attrs(attrs, args, kwargs)
            with span(name, **extra):
                return fn(*args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def wrap_class_method(cls: type, method: str, name: str, attrs: Callable[..., dict[str, Any]] | None = None) -> bool:
    """Replace ``cls.method`` (found on ``cls`` or a base) by its traced version, on ``cls``."""
    fn = getattr(cls, method, None)
    if fn is None:
        log.warning("phase trace: %s has no %s; not traced", cls.__qualname__, method)
        return False
    raw = inspect.getattr_static(cls, method)
    if isinstance(raw, staticmethod):
        setattr(cls, method, staticmethod(traced(raw.__func__, name, attrs)))
    else:
        setattr(cls, method, traced(fn, name, attrs))
    return True


def targets_by_module() -> dict[str, list[Traced]]:
    out: dict[str, list[Traced]] = {}
    for t in TRACED:
        out.setdefault(t.module, []).append(t)
    return out


def install(module: Any, targets: list[Traced]) -> list[str]:
    """Wrap ``targets`` (all in ``module``); returns the span names installed."""
    done = []
    for t in targets:
        cls_name, method = t.qualname.split(".", 1)
        cls = getattr(module, cls_name, None)
        if cls is not None and wrap_class_method(cls, method, t.span, t.attrs):
            done.append(t.span)
    return done


# --------------------------------------------------------------------------------------
# Reading a trace back
# --------------------------------------------------------------------------------------


def load(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The spans of a trace file, sorted by start (a torn last line from a killed process is skipped)."""
    spans = []
    with open(path) as f:
        for line in f:
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return sorted(spans, key=lambda s: s["t0"])

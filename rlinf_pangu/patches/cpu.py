"""The CPU-mode redirects (``cluster.device: cpu``): RLinf's real GRPO loop on a host with no GPU.

Why a separate module: RLinf 0.3.0, megatron-core and RLinf's SGLang engine assume CUDA in a
handful of places. Everything that redirects them lives here, each redirect with its reason, and
this module is imported **only** when the YAML says ``cluster.device: cpu`` (the driver then sets
``RLINF_PANGU_DEVICE=cpu`` for every process of the run). The GPU path never imports it; a test
checks that.

Where each redirect runs (all are idempotent):

* the driver — :func:`driver_placement`: node placement and the direct-tensor weight sync;
  every process — placement ranks as CPU slots (:func:`placement_cluster`);
* every RLinf worker process — :func:`activate` (called by ``rlinf_pangu.register()``, i.e. by
  RLinf's ``RLINF_EXT_MODULE`` hook): the CPU torch platform for RLinf's accelerator layer, and
  hooks that take effect when the Megatron actor, the FSDP actor or the SGLang rollout is imported;
* SGLang's scheduler processes — :func:`arm` (called by ``rlinf_pangu.patches.arm_startup()``
  from the :mod:`rlinf_pangu.startup.children` start-up hook).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any, Callable

import torch

from .core import CPU_MODE_ENV as ENV
from .core import after_import as _after_import
from .core import cpu_mode_run

log = logging.getLogger(__name__)

#: SGLang's KV cache size in tokens (from ``rollout.cpu_max_total_tokens``), set by the driver.
ENV_MAX_TOTAL_TOKENS = "RLINF_PANGU_SGLANG_MAX_TOTAL_TOKENS"
#: ``1``: SGLang loads none of the weights the Megatron -> SGLang sync sends. Only the CPU e2e's
#: negative control sets it (SGLang then keeps its random start weights: the post-sync gate must fail).
ENV_SKIP_SYNC = "RLINF_PANGU_CPU_SKIP_SYNC"

_DONE: set[str] = set()


def enabled() -> bool:
    """True in a process of a CPU-mode run (the driver exported ``RLINF_PANGU_DEVICE=cpu``)."""
    return cpu_mode_run()


def _once(name: str) -> bool:
    if name in _DONE:
        return False
    _DONE.add(name)
    return True


# --------------------------------------------------------------------------------------
# RLinf's accelerator layer
# --------------------------------------------------------------------------------------


class _NoStream:
    """Stands in for a CUDA stream/event: CPU work is synchronous, so waiting is a no-op."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def record_event(self, *args: Any) -> "_NoStream":
        return _NoStream()

    def record(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait(self, *args: Any) -> None:
        pass

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class CpuPlatform:
    """What RLinf reads from ``Worker.torch_platform`` (torch.cuda's API), answered for the CPU.

    RLinf sets the platform to ``None`` when no accelerator is found and then calls it in ~60
    places; model-parallel initialisation also runs only when ``device_count() > 0``.
    """

    Stream = _NoStream
    Event = _NoStream

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def set_device(*args: Any) -> None:
        pass

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def synchronize(*args: Any) -> None:
        pass

    @staticmethod
    def empty_cache() -> None:
        pass

    @staticmethod
    def ipc_collect() -> None:
        pass

    @staticmethod
    def current_stream(*args: Any) -> _NoStream:
        return _NoStream()

    @staticmethod
    def stream(*args: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @staticmethod
    def mem_get_info(*args: Any) -> tuple[int, int]:
        import psutil

        vm = psutil.virtual_memory()
        return vm.available, vm.total

    @staticmethod
    def memory_allocated(*args: Any) -> int:
        return 0

    @staticmethod
    def memory_reserved(*args: Any) -> int:
        return 0

    @staticmethod
    def max_memory_allocated(*args: Any) -> int:
        return 0

    @staticmethod
    def reset_peak_memory_stats(*args: Any) -> None:
        pass

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def get_rng_state(*args: Any) -> torch.Tensor:
        # RLinf's FSDP checkpoint saves the accelerator's RNG state beside the CPU's: on the CPU they are one.
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, *args: Any) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def get_device_properties(*args: Any) -> Any:
        return None

    @staticmethod
    def get_device_name(*args: Any) -> str:
        return "cpu"


def _platform(worker_mod) -> None:
    worker_mod.Worker.torch_platform = CpuPlatform


# --------------------------------------------------------------------------------------
# Megatron-core and RLinf's Megatron actor (the actor's process only)
# --------------------------------------------------------------------------------------


class _CudaDeviceToCpu(torch.overrides.TorchFunctionMode):
    """``device='cuda…'`` in tensor factories -> CPU, ``Tensor.to('cuda…')`` -> CPU.

    megatron-core and RLinf hard-code CUDA devices (rotary cache, attention buffers, pipeline
    schedules, RLinf's loss helpers); this is the one place that catches them all.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if dev is not None and "cuda" in str(dev):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):  # page-locked host memory needs the CUDA driver (offload buffers)
            kwargs["pin_memory"] = False
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and "cuda" in str(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # Megatron's optimizers accept only parameters whose type() is 'torch.cuda.*Tensor'.
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        return func(*args, **kwargs)


_MODE_THREADS: set[int] = set()


def enter_device_mode() -> None:
    """Enter the CUDA->CPU device mode in this thread (torch function modes are per thread)."""
    tid = threading.get_ident()
    if tid in _MODE_THREADS:
        return
    _CudaDeviceToCpu().__enter__()
    _MODE_THREADS.add(tid)


def _redirect_torch_cuda() -> None:
    """torch.cuda calls megatron-core and RLinf make outside tensor factories."""
    cuda = torch.cuda
    cuda.current_device = lambda: "cpu"  # allocation device for buffers and caches
    cuda.synchronize = lambda *a, **k: None  # CPU work is synchronous
    cuda.empty_cache = lambda: None
    cuda.Stream = _NoStream  # DDP wrapping and pipeline p2p create side streams
    cuda.Event = _NoStream
    cuda.current_stream = lambda *a, **k: _NoStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()  # Megatron's RNG tracker forks CUDA RNG
    cuda.set_rng_state = lambda s, *a, **k: torch.set_rng_state(s)
    cuda.manual_seed = lambda s: torch.default_generator.manual_seed(int(s))  # the CPU generator
    cuda.manual_seed_all = lambda s: None  # torch.manual_seed calls it after seeding the CPU
    cuda.mem_get_info = CpuPlatform.mem_get_info  # offload/memory logging
    cuda.memory_allocated = CpuPlatform.memory_allocated
    cuda.memory_reserved = CpuPlatform.memory_reserved
    cuda.max_memory_allocated = CpuPlatform.max_memory_allocated
    torch.Tensor.cuda = lambda self, *a, **k: self  # RLinf moves batches with .cuda()


def _gloo_groups(parallel_state) -> None:
    """RLinf's weight reshard creates its TP subgroups with a hard-coded backend="nccl"."""
    create = parallel_state.create_group
    if getattr(create, "__rlinf_pangu_cpu__", False):
        return

    def create_group(*args, **kwargs):
        if kwargs.get("backend") == "nccl":
            kwargs["backend"] = "gloo"
        return create(*args, **kwargs)

    create_group.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    parallel_state.create_group = create_group


def _megatron_rng(mcore_random) -> None:
    # The tensor-parallel RNG tracker saves/restores CUDA generator states around dropout.
    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda s, *a, **k: torch.set_rng_state(s)


def fp32_megatron_args(original: Callable) -> Callable:
    """RLinf's ``set_megatron_args`` that also accepts ``actor.model.precision: fp32``.

    Why: this CPU has no bf16 instructions (a bf16 matmul of the tiny model's LM head measured
    3.7 s vs 0.45 s in fp32), and in fp32 SGLang's rollout and the actor's recompute agree to
    ~1e-5 (bf16: ~0.1), which lets the CPU e2e hold the whole loop to a tight gate. RLinf asserts fp16/bf16
    only because it writes Megatron's ``params_dtype`` from that branch; everything downstream
    (the model config's params_dtype, the optimizer without a grad scaler, the sync's reshard
    dtype) already handles fp32. Upstream runs with bf16 standing in for the branch; the args it
    built are then made fp32 (the same object it handed to Megatron's ``set_args``).
    """
    from omegaconf import open_dict

    def set_megatron_args(cfg):
        from rlinf.config import torch_dtype_from_precision

        precision = cfg.model.precision
        if torch_dtype_from_precision(precision) != torch.float32:
            return original(cfg)
        with open_dict(cfg):
            cfg.model.precision = "bf16"
        try:
            args = original(cfg)
        finally:
            with open_dict(cfg):
                cfg.model.precision = precision
        with open_dict(args):
            args.params_dtype = "${torch.dtype:float32}"
            args.bf16 = False
            args.fp16 = False
            if "precision" in args:
                args.precision = precision
        return args

    set_megatron_args.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    return set_megatron_args


def _fp32_args(module) -> None:
    fn = module.set_megatron_args
    if not getattr(fn, "__rlinf_pangu_cpu__", False):
        module.set_megatron_args = fp32_megatron_args(fn)


def _megatron_manager(mm) -> None:
    """In the Megatron actor's process: redirect torch.cuda and enter the device mode in the
    thread that builds the model (Ray runs the actor's tasks on that thread)."""
    _redirect_torch_cuda()
    _fp32_args(mm)  # imported by name from rlinf.utils.initialize
    cls = mm.MegatronModelManager
    init = cls.__init__
    if getattr(init, "__rlinf_pangu_cpu__", False):
        return

    def __init__(self, *args, **kwargs):
        enter_device_mode()
        init(self, *args, **kwargs)

    __init__.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def _megatron_worker(mw) -> None:
    """Every public task of the Megatron worker enters the device mode in the thread it runs on."""
    cls = mw.MegatronWorker
    for name in ("init_worker", "run_training", "run_inference", "sync_model_to_rollout", "sync_model_to_inference",
                 "save_checkpoint", "load_checkpoint", "del_reshard_state_dict"):
        fn = cls.__dict__.get(name)
        if fn is None or getattr(fn, "__rlinf_pangu_cpu__", False):
            continue
        cls_fn = _with_device_mode(fn)
        setattr(cls, name, cls_fn)


def _with_device_mode(fn: Callable) -> Callable:
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enter_device_mode()
        return fn(*args, **kwargs)

    wrapper.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    return wrapper


def _megatron_actor(ma) -> None:
    cls = ma.MegatronActor
    for name in ("init_worker", "run_training", "sync_model_to_rollout", "run_inference"):
        fn = cls.__dict__.get(name)
        if fn is not None and not getattr(fn, "__rlinf_pangu_cpu__", False):
            setattr(cls, name, _with_device_mode(fn))


def _megatron_inference(mi) -> None:
    """The disaggregated mode's inference group: RLinf's ``MegatronActorInference`` defines its
    own ``init_worker`` (builds the model) and ``sync_model_from_actor`` (loads the received
    weights), which the actor's wrappers above do not cover."""
    cls = mi.MegatronActorInference
    for name in ("init_worker", "sync_model_from_actor"):
        fn = cls.__dict__.get(name)
        if fn is not None and not getattr(fn, "__rlinf_pangu_cpu__", False):
            setattr(cls, name, _with_device_mode(fn))


# --------------------------------------------------------------------------------------
# RLinf's FSDP actor (actor.training_backend: fsdp; the actor's process)
# --------------------------------------------------------------------------------------


def _fsdp_manager(fm) -> None:
    """RLinf's FSDP model manager on the CPU.

    It names its device by ``Worker.torch_device_type`` (torch's device mesh, ``torch.device``),
    which RLinf leaves None on a host without an accelerator: "cpu" here (a gloo mesh, CPU
    tensors). RLinf's batch helpers call ``.cuda()`` and ``torch.cuda.current_device()`` as on the
    Megatron path: the same torch.cuda redirect, and the device mode in the thread that builds
    the model.
    """
    _redirect_torch_cuda()
    cls = fm.FSDPModelManager
    init = cls.__init__
    if getattr(init, "__rlinf_pangu_cpu__", False):
        return

    def __init__(self, *args, **kwargs):
        from rlinf.scheduler import Worker

        Worker.torch_device_type = "cpu"  # the class attribute RLinf's FSDP code reads
        enter_device_mode()
        init(self, *args, **kwargs)

    __init__.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def fsdp_sync_sends_tensors(fn: Callable) -> Callable:
    """``FSDPActor.sync_model_to_rollout`` through RLinf's own disaggregated branch.

    Why: colocated, the FSDP actor sends each tensor as a CUDA IPC handle (``reduce_tensor``) to
    one rollout rank; CPU tensors cannot travel that way, and :func:`driver_placement` gives the
    run RLinf's disaggregated rank maps (a list of rollout ranks per actor rank). RLinf's FSDP
    actor already sends the tensors themselves to every rank of that list when it runs
    disaggregated (``is_pipeline``); the sync takes that branch, and only the sync.
    """
    import functools

    @functools.wraps(fn)
    def sync_model_to_rollout(self, *args, **kwargs):
        enter_device_mode()
        pipeline = self.is_pipeline
        self.is_pipeline = True
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.is_pipeline = pipeline

    sync_model_to_rollout.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    return sync_model_to_rollout


def _fsdp_actor(fa) -> None:
    """Every public task of RLinf's FSDP actor enters the device mode in the thread it runs on;
    its rollout sync sends tensors, not CUDA IPC handles (:func:`fsdp_sync_sends_tensors`)."""
    cls = fa.FSDPActor
    for name in ("init_worker", "run_training", "run_inference", "save_checkpoint", "load_checkpoint"):
        fn = cls.__dict__.get(name) or getattr(cls, name, None)
        if fn is not None and not getattr(fn, "__rlinf_pangu_cpu__", False):
            setattr(cls, name, _with_device_mode(fn))
    fn = cls.__dict__.get("sync_model_to_rollout")
    if fn is not None and not getattr(fn, "__rlinf_pangu_cpu__", False):
        cls.sync_model_to_rollout = fsdp_sync_sends_tensors(fn)


# --------------------------------------------------------------------------------------
# SGLang (the rollout worker and its scheduler processes)
# --------------------------------------------------------------------------------------


def cpu_server_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """RLinf's SGLang ServerArgs has no device setting: serve on the CPU without CUDA kernels."""
    kwargs["device"] = "cpu"
    kwargs["attention_backend"] = "torch_native"  # no flashinfer/triton attention on CPU
    kwargs["sampling_backend"] = "pytorch"  # flashinfer sampling is CUDA-only
    kwargs["disable_cuda_graph"] = True
    kwargs["enable_memory_saver"] = False  # torch_memory_saver hooks CUDA allocations
    kwargs["enable_torch_compile"] = False
    # The KV pool would otherwise be sized from "GPU" memory (~3.6 GB at 0.3 on a CPU host).
    kwargs["max_total_tokens"] = int(os.environ.get(ENV_MAX_TOTAL_TOKENS, "4096"))
    if isinstance(kwargs.get("dtype"), torch.dtype):  # RLinf passes a torch.dtype; SGLang wants a name
        kwargs["dtype"] = str(kwargs["dtype"]).replace("torch.", "")
    return kwargs


def _sglang_worker(_sw) -> None:
    from .rlinf import SERVER_ARGS_HOOKS

    if cpu_server_args not in SERVER_ARGS_HOOKS:
        SERVER_ARGS_HOOKS.append(cpu_server_args)


def _sgl_scheduler(ss) -> None:
    """RLinf's scheduler asserts CUDA graphs are on before every weight sync; on CPU they cannot be."""
    cls = ss.Scheduler
    init = cls.init_rlinf_worker
    if getattr(init, "__rlinf_pangu_cpu__", False):
        return

    def init_rlinf_worker(self, *args, **kwargs):
        out = init(self, *args, **kwargs)
        cfg = getattr(self, "cfg", None)
        if cfg is not None:
            import copy

            from omegaconf import open_dict

            self.cfg = copy.deepcopy(cfg)
            with open_dict(self.cfg):
                self.cfg.rollout.enforce_eager = False  # only that assert reads it here
        return out

    init_rlinf_worker.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    cls.init_rlinf_worker = init_rlinf_worker


def _sglang_model_loader(loader) -> None:
    """SGLang's CPU-only patches (``rlinf_pangu/patches/sglang.py``: the native rotary path) before
    *any* model class is built. Pangu's class applies them itself; SGLang's own classes (the
    Qwen2 baseline of ``benchmarks/grpo_step.py``) otherwise reach for vllm's CUDA rotary op."""
    fn = loader._initialize_model
    if getattr(fn, "__rlinf_pangu_cpu__", False):
        return

    def _initialize_model(*args, **kwargs):
        from .sglang import apply_sglang_cpu_patches

        apply_sglang_cpu_patches()
        return fn(*args, **kwargs)

    _initialize_model.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    loader._initialize_model = _initialize_model


# --------------------------------------------------------------------------------------
# The negative control of the CPU e2e (SGLang's scheduler processes)
# --------------------------------------------------------------------------------------


def _skip_weight_load(ss) -> None:
    """With ``RLINF_PANGU_CPU_SKIP_SYNC=1``, SGLang receives every sync bucket and loads none.

    Why: the CPU e2e's post-sync gate (SGLang's log-probs equal the actor's to 1e-4) must be able
    to fail; without the load SGLang keeps serving its random ``load_format=dummy`` start weights.
    The rest of RLinf's sync runs as always (the actor sends, the scheduler receives and resumes
    its weights), so its offload/resume bookkeeping stays consistent; skipping the whole sync in
    the driver left the scheduler's weights marked offloaded and its next release asserted.
    """
    if os.environ.get(ENV_SKIP_SYNC) != "1":
        return
    cls = ss.Scheduler
    if getattr(cls.batch_load_hf_weight, "__rlinf_pangu_cpu__", False):
        return

    def batch_load_hf_weight(self, state_dict: dict[str, Any]) -> None:
        log.warning("CPU mode: %s=1, weight sync skipped: %d received tensors not loaded (negative control)",
                    ENV_SKIP_SYNC, len(state_dict))

    batch_load_hf_weight.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    cls.batch_load_hf_weight = batch_load_hf_weight


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------

_WORKER = "rlinf.scheduler.worker.worker"
_ACCEL = "rlinf.scheduler.hardware.accelerators.accelerator"


def _accelerator_util(accel) -> None:
    # Worker's class attribute is computed at import from get_torch_platform(NO_ACCEL) -> None.
    util = accel.AcceleratorUtil
    original = util.get_torch_platform
    if getattr(original, "__rlinf_pangu_cpu__", False):
        return

    def get_torch_platform(accelerator_type):
        platform = original(accelerator_type)
        return CpuPlatform if platform is None else platform

    get_torch_platform.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    util.get_torch_platform = staticmethod(get_torch_platform)


def arm() -> None:
    """Arm the import hooks of the CPU mode in this process (any process of a CPU-mode run)."""
    if not _once("arm"):
        return
    _after_import(_ACCEL, _accelerator_util)
    _after_import(_WORKER, _platform)
    _after_import("rlinf.scheduler.placement.placement", _component_placement)
    _after_import("megatron.core.tensor_parallel.random", _megatron_rng)
    _after_import("megatron.core.parallel_state", _gloo_groups)
    _after_import("rlinf.utils.initialize", _fp32_args)
    _after_import("rlinf.hybrid_engines.megatron.megatron_model_manager", _megatron_manager)
    _after_import("rlinf.workers.megatron_worker", _megatron_worker)
    _after_import("rlinf.workers.actor.megatron_actor_worker", _megatron_actor)
    _after_import("rlinf.workers.inference.megatron_inference_worker", _megatron_inference)
    _after_import("rlinf.hybrid_engines.fsdp.fsdp_model_manager", _fsdp_manager)
    _after_import("rlinf.workers.actor.fsdp_actor_worker", _fsdp_actor)
    _after_import("rlinf.workers.rollout.sglang.sglang_worker", _sglang_worker)
    _after_import("rlinf.hybrid_engines.sglang.common.sgl_scheduler", _sgl_scheduler)
    _after_import("sglang.srt.model_loader.loader", _sglang_model_loader)
    _after_import("rlinf.hybrid_engines.sglang.common.sgl_scheduler", _skip_weight_load)
    log.info("CPU mode: redirects armed in pid %d", os.getpid())


def activate() -> None:
    """Called by ``rlinf_pangu.register()`` in every process of a CPU-mode run."""
    arm()


def driver_environment(cfg: Any) -> None:
    """Export the CPU mode to every process the driver starts (Ray workers, SGLang)."""
    os.environ[ENV] = "cpu"
    os.environ[ENV_MAX_TOTAL_TOKENS] = str(int(cfg.rollout.get("cpu_max_total_tokens", 4096)))
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # nothing may pick up a GPU by accident
    # The loop's phases take turns (rollout, reward, log-prob recompute, training): the one that
    # computes may use every core (the demo's steps took ~12 s with 1 thread on 2 cores; see
    # docs/runs/cpu-demo-2026-12-07 for 2).
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def placement_cluster(cfg: Any, cluster: Any) -> Any:
    """What RLinf's placement classes read the CPU YAML's ranks against: CPU slots of node 0.

    On a node without accelerators RLinf counts placement ranks in nodes, so one host offers rank
    0 only, and every component lands on it: colocated in RLinf's eyes. Its disaggregated mode
    needs actor, rollout and inference on disjoint ranks; here the ranks number CPU slots of node
    0 instead (as many as the YAML names, :func:`rlinf_pangu.placement.planned_devices`). Each
    component runs in processes of its own either way; :func:`driver_placement` then puts them
    all on node 0. ``cluster`` (RLinf's, one CPU node) has nothing to add.
    """
    from rlinf_pangu.placement import PlannedDevices, planned_devices

    del cluster
    return PlannedDevices(planned_devices(cfg))


def _component_placement(pm) -> None:
    """Every parse of ``cluster.component_placement`` in a CPU-mode process counts CPU slots
    (:func:`placement_cluster`): the driver's placement, and the ones RLinf builds inside workers
    (its reward worker parses the YAML against ``Cluster()`` in its own process)."""
    from rlinf_pangu.placement import PlannedDevices

    cls = pm.ComponentPlacement
    init = cls.__init__
    if getattr(init, "__rlinf_pangu_cpu__", False):
        return

    def __init__(self, config, cluster, *args, **kwargs):
        if not isinstance(cluster, PlannedDevices):
            cluster = placement_cluster(config, cluster)
        init(self, config, cluster, *args, **kwargs)

    __init__.__rlinf_pangu_cpu__ = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def driver_placement(placement: Any) -> None:
    """RLinf's placement on a CPU-only node.

    * Packed placement needs accelerators ("Packed placement requires hardware resources"): put
      each component's processes on node 0 instead (same ranks, same colocation).
    * The colocated weight sync sends CUDA IPC handles and rewrites their device index; CPU tensors
      cannot travel that way, so the sync sends the tensors themselves (RLinf's own
      disaggregated-sync path), with the rank maps of that path.
    """
    from rlinf.scheduler import NodePlacementStrategy
    from rlinf.utils.placement import RolloutSyncMode

    sizes = {
        "actor": placement.actor_world_size,
        "rollout": placement.rollout_dp_size,
        "inference": max(1, getattr(placement, "inference_world_size", 1) or 1),
        "reward": max(1, getattr(placement, "reward_world_size", 1) or 1),
    }
    for name in list(placement._placements):
        n = sizes.get(name, 1)
        placement._placements[name] = NodePlacementStrategy(node_ranks=[0] * n)
    placement._rollout_sync_mode = RolloutSyncMode.DISAGGREGATED

"""The cuda -> cpu redirects megatron-core needs to run on a CPU-only torch (test ranks only).

megatron-core assumes a GPU in a handful of places that the CPU tests go through:

* ``torch.cuda.current_device()`` as an allocation device (rotary embedding cache, the global
  memory buffer of the attention core, pipeline p2p receive buffers);
* ``torch.cuda.synchronize()`` after batched p2p in the pipeline schedule;
* the CUDA RNG state behind ``model_parallel_cuda_manual_seed`` / ``get_cuda_rng_tracker()``;
* hard-coded ``device="cuda"`` tensor factories and ``Tensor.cuda()`` (schedules' token counter,
  the default causal mask, RLinf's loss helpers).

:func:`apply` redirects all of them to the CPU for the rest of the process. It is meant for the
spawned test ranks of :mod:`harness.launcher` (which apply it by default) and must never run in
the pytest process itself or in product code: the product's CPU mode has its own, opt-in module
(``rlinf_pangu.patches.cpu``), and the GPU path has none.
"""

from __future__ import annotations

import logging

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["apply", "applied"]

_STATE: dict[str, object] = {}


class _CudaToCpu(TorchFunctionMode):
    """Rewrites ``device='cuda…'`` keyword arguments to ``'cpu'`` and makes ``Tensor.cuda()`` a no-op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if dev is not None and str(dev).startswith("cuda"):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and args and len(args) > 1 and str(args[1]).startswith("cuda"):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def applied() -> bool:
    """True once :func:`apply` ran in this process."""
    return bool(_STATE)


def apply() -> None:
    """Redirect megatron-core's CUDA assumptions to the CPU in this process (idempotent)."""
    if _STATE:
        return
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()  # type: ignore[assignment]
    torch.cuda.set_rng_state = lambda s, *a, **k: torch.set_rng_state(s)  # type: ignore[assignment]
    # torch.cuda.manual_seed stays as it is (a lazy no-op without CUDA): redirecting it to the
    # CPU generator would seed each TP rank's CPU RNG differently, which a GPU run never does.
    torch.cuda.empty_cache = lambda: None  # type: ignore[assignment]

    from megatron.core.tensor_parallel import random as mcore_random

    # The RNG tracker forks CUDA generator states; back it with the CPU generator.
    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda s, *a, **k: torch.set_rng_state(s)

    # With the CUDA RNG backed by the CPU generator, megatron's "CPU RNG state changed within
    # GPU RNG context" check fires on every parameter init; it means nothing here.
    logging.getLogger("megatron.core.tensor_parallel.random").setLevel(logging.ERROR)

    mode = _CudaToCpu()
    mode.__enter__()
    _STATE["mode"] = mode

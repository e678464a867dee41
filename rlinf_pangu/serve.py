"""Serve a (trained) openPangu-Embedded checkpoint with SGLang's HTTP server.

Two equivalent ways (the server is SGLang's own; only Pangu's registration is added):

* ``python -m rlinf_pangu.serve --model-path DIR [any sglang.launch_server option]``
* ``eval "$(python -m rlinf_pangu.serve --print-env)"`` once in a shell, then SGLang's own
  ``python -m sglang.launch_server --model-path DIR ...``: the printed variables are
  ``SGLANG_EXTERNAL_MODEL_PACKAGE=rlinf_pangu.sglang_ext`` (SGLang's scheduler imports our model
  class) and ``PYTHONPATH`` with the start-up hook of :mod:`rlinf_pangu.startup.children` (patches SGLang's
  processes and registers the Pangu config/tokenizer there before SGLang parses them).

The first way also picks what SGLang cannot pick itself on the pinned stack: on a GPU the rollouts'
attention backend and a 16-bit dtype (:func:`gpu_argv`), on the CPU the kernels the CPU mode's rollouts
use (:func:`cpu_argv`); with the second way pass those options yourself.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

__all__ = ["cpu_argv", "gpu_argv", "main", "print_env", "rollout_attention_backend", "server_argv"]

logger = logging.getLogger(__name__)

#: dtypes SGLang's CUDA kernels refuse: sgl_kernel's RMSNorm has no float32 path ("failed to dispatch
#: data type Float", same run), so an fp32 server dies at its first forward.
_NO_CUDA_KERNEL = ("float32", "float")


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def rollout_attention_backend() -> str:
    """The attention backend the rollouts run, read from the one place it is set
    (``configs/rollout/sglang.yaml``). SGLang's own default on Hopper is FA3, which the pinned
    sglang-kernel wheel does not carry: on an H100 the server died at start with "Can not import FA3 in
    sgl_kernel" (docs/runs/gpu-h100-2026-12-07-resume)."""
    from omegaconf import OmegaConf

    from .config import CONFIGS_DIR

    return str(OmegaConf.load(CONFIGS_DIR / "rollout" / "sglang.yaml").rollout.sglang.attention_backend)


def gpu_argv(argv: list[str]) -> list[str]:
    """The options of a server on CUDA with the GPU defaults this stack needs; refuses what cannot run there.

    Decided before SGLang parses anything, because ``ServerArgs`` resolves its attention backend
    while it is built.
    """
    dtype = _option(argv, "--dtype")
    if dtype in _NO_CUDA_KERNEL:
        raise SystemExit(f"rlinf_pangu.serve: --dtype {dtype} on CUDA: SGLang's CUDA RMSNorm kernel (sgl_kernel) "
                         "has no float32 path on this stack; serve in bfloat16 (the rollouts' dtype) or float16, "
                         "or fp32 with --device cpu")
    if _option(argv, "--attention-backend") is None:
        backend = rollout_attention_backend()
        logger.info("no --attention-backend given: using %s, as the rollouts do", backend)
        return [*argv, "--attention-backend", backend]
    return argv


#: the CPU mode's SGLang settings a server on the CPU needs too, taken from the one place the rollouts get
#: them (:func:`rlinf_pangu.patches.cpu.cpu_server_args`); the rest of it (KV pool size, memory saver,
#: torch.compile) is either SGLang's own CLI default or a choice the caller makes.
_CPU_SERVER_FIELDS = ("attention_backend", "sampling_backend", "disable_cuda_graph")


def cpu_argv(argv: list[str]) -> list[str]:
    """The server's options with the CPU kernels the CPU mode's rollouts run, where none is named:
    SGLang's defaults (flashinfer/triton attention, flashinfer sampling, CUDA graphs) need CUDA."""
    from .patches.cpu import cpu_server_args

    chosen = cpu_server_args({})
    out = list(argv)
    for field in _CPU_SERVER_FIELDS:
        option, value = "--" + field.replace("_", "-"), chosen[field]
        if value is False or _option(out, option) is not None or option in out:
            continue
        out += [option] if value is True else [option, str(value)]
    return out


def server_argv(argv: list[str], cuda_available: bool) -> list[str]:
    """The options for the device the server will run on: ``--device`` if given, else CUDA when present."""
    device = _option(argv, "--device") or ("cuda" if cuda_available else "cpu")
    return gpu_argv(argv) if device == "cuda" else cpu_argv(argv)


def print_env(file=sys.stdout) -> None:
    """``export`` lines for the variables :func:`rlinf_pangu.startup.register.sglang_env` adds."""
    from .startup.register import sglang_env

    env = sglang_env()
    for key in ("SGLANG_EXTERNAL_MODEL_PACKAGE", "PYTHONPATH"):
        print(f"export {key}={shlex.quote(env[key])}", file=file)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--print-env"]:
        print_env()
        return 0
    import torch

    import rlinf_pangu

    argv = server_argv(argv, torch.cuda.is_available())
    rlinf_pangu.register(rlinf=False)
    from sglang.launch_server import run_server
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    server_args = prepare_server_args(argv)
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Serve a (trained) openPangu-Embedded checkpoint with SGLang's HTTP server.

Two equivalent ways (the server is SGLang's own; only Pangu's registration is added):

* ``python -m rlinf_pangu.serve --model-path DIR [any sglang.launch_server option]``
* ``eval "$(python -m rlinf_pangu.serve --print-env)"`` once in a shell, then SGLang's own
  ``python -m sglang.launch_server --model-path DIR ...``: the printed variables are
  ``SGLANG_EXTERNAL_MODEL_PACKAGE=rlinf_pangu.sglang_ext`` (SGLang's scheduler imports our model
  class) and ``PYTHONPATH`` with the start-up hook of :mod:`rlinf_pangu.startup.children` (patches SGLang's
  processes and registers the Pangu config/tokenizer there before SGLang parses them).
"""

from __future__ import annotations

import os
import shlex
import sys

__all__ = ["main", "print_env"]


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
    import rlinf_pangu

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

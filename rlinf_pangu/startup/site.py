"""The site-packages start-up line: what every interpreter of the venv runs before anything else.

Two finders must be on ``sys.meta_path`` before any user code runs, in *every* interpreter
(the driver, each Ray worker, each SGLang process), because those processes import RLinf before
``rlinf_pangu.register()`` can run there:

* ``megatron.legacy.fused_kernels`` (:mod:`rlinf_pangu.patches.megatron`): a Ray worker unpickles
  RLinf's Megatron actor, whose import chain needs it;
* ``rlinf.train`` (:mod:`rlinf_pangu.startup.rlinf_train`): makes ``python -m rlinf.train`` run this
  project's driver while RLinf ships none.

and one import hook: ``latex2sympy2``'s stand-in before RLinf's math verifier executes
(:func:`rlinf_pangu.patches.latex2sympy.arm`): the verifier's process-pool workers, when spawned, are
such interpreters.

The standard start-up hook for that is a ``.pth`` line in site-packages (the mechanism editable
installs use). ``rlinf_pangu_startup.pth`` at the repository root is that line; ``setup.py`` ships
it into regular and editable wheels. The line does nothing when ``rlinf_pangu`` is gone, and
everything it imports is standard library only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PTH_NAME = "rlinf_pangu_startup.pth"
#: The ``.pth`` line: guarded so a stale file cannot break interpreters once rlinf_pangu is gone.
PTH_LINE = (
    "import importlib.util as _u; _u.find_spec('rlinf_pangu') is not None and "
    "__import__('rlinf_pangu.startup.site', fromlist=['install']).install()\n"
)


def install() -> None:
    """Put the start-up finders on ``sys.meta_path`` of this interpreter (idempotent)."""
    from rlinf_pangu.patches import latex2sympy, megatron
    from rlinf_pangu.startup import rlinf_train

    megatron.install()
    rlinf_train.install()
    latex2sympy.arm()


def site_packages() -> Path:
    """The purelib directory of the running interpreter (the venv's site-packages)."""
    return Path(sysconfig.get_paths()["purelib"])


def install_pth(site_dir: Path | None = None) -> Path:
    """Write the ``.pth`` start-up line into ``site_dir`` atomically; returns its path."""
    site_dir = Path(site_dir or site_packages())
    target = site_dir / PTH_NAME
    if target.exists() and target.read_text() == PTH_LINE:
        return target
    fd, tmp = tempfile.mkstemp(dir=site_dir, prefix=".rlinf_pangu_", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(PTH_LINE)
    os.replace(tmp, target)
    log.info("wrote %s", target)
    return target


def remove_pth(site_dir: Path | None = None) -> None:
    (Path(site_dir or site_packages()) / PTH_NAME).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    from rlinf_pangu.patches import megatron
    from rlinf_pangu.startup import rlinf_train

    p = argparse.ArgumentParser(prog="python -m rlinf_pangu.startup.site", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["install-pth", "remove-pth", "status"])
    p.add_argument("--site-dir", type=Path, default=None, help="default: this interpreter's site-packages")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.action == "install-pth":
        sys.stdout.write(f"{install_pth(a.site_dir)}\n")
    elif a.action == "remove-pth":
        remove_pth(a.site_dir)
    else:
        pth = Path(a.site_dir or site_packages()) / PTH_NAME
        sys.stdout.write(
            f"upstream megatron.legacy.fused_kernels missing: {megatron.upstream_missing()}\n"
            f"megatron.legacy finder installed in this interpreter: {megatron.installed()}\n"
            f"rlinf.train finder installed in this interpreter: {rlinf_train.installed()}\n"
            f"start-up line {pth}: {'present' if pth.exists() else 'absent'}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Makes ``python -m rlinf.train`` run this project's driver, without touching RLinf's files.

RLinf 0.3.0 has no ``rlinf.train`` (no ``__main__``, no console script); its package is a regular
package, so no other distribution can add a module to it. :class:`RlinfTrainFinder` is a
meta-path finder that answers for exactly one name, ``rlinf.train``, and only when RLinf's own
package does not contain one: if a future RLinf ships ``rlinf/train.py``, the finder finds it on
disk first and steps aside, and RLinf's module runs.

The finder is installed at interpreter start by the ``.pth`` line of :mod:`rlinf_pangu.startup.site`.
The module it serves is ``rlinf_pangu/startup/rlinf_train_main.py`` (``main()`` of
:mod:`rlinf_pangu.train`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

NAME = "rlinf.train"
MAIN_FILE = Path(__file__).resolve().parent / "rlinf_train_main.py"


def rlinf_ships_train(path=None) -> bool:
    """True when RLinf's own package has a ``train`` module or package on disk."""
    if path is None:
        spec = importlib.machinery.PathFinder.find_spec("rlinf")
        if spec is None or not spec.submodule_search_locations:
            return False
        path = list(spec.submodule_search_locations)
    return importlib.machinery.PathFinder.find_spec(NAME, list(path)) is not None


class RlinfTrainFinder(importlib.abc.MetaPathFinder):
    """Serves ``rlinf.train`` from this project unless RLinf has its own."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        if rlinf_ships_train(path):
            return None  # RLinf's own rlinf.train wins
        loader = importlib.machinery.SourceFileLoader(NAME, str(MAIN_FILE))
        return importlib.machinery.ModuleSpec(NAME, loader, origin=str(MAIN_FILE))


def installed() -> bool:
    return any(isinstance(f, RlinfTrainFinder) for f in sys.meta_path)


def install() -> bool:
    """Append the finder to ``sys.meta_path`` (last: every real module wins); idempotent."""
    if installed():
        return False
    sys.meta_path.append(RlinfTrainFinder())
    return True

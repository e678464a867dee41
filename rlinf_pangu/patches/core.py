"""The patch mechanism: the :class:`Patch` record, ``@patch``, import hooks and upstream probes.

Every change this project makes to an upstream package is a :class:`Patch` declared with
:func:`patch` in the module of ``rlinf_pangu.patches`` named for that upstream. A patch carries a
one-line ``why``, an ``applies`` probe that is True while upstream still has the problem (tests
assert it, so an upstream change under a patch fails a test instead of silently double-patching)
and its body. Patches are idempotent and import their targets lazily, so a package that is not
installed simply has nothing patched.

Two import hooks let a body run at the right moment without importing heavy modules early:
:func:`after_import` (wrap a function once its module has executed) and :func:`before_exec`
(fix a module that fails *while importing* on this stack). Probes read upstream source from disk
(:func:`upstream_source`, :func:`source_of`) so they are cheap in every child interpreter.

This module imports only the standard library: it runs at every interpreter start-up.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("rlinf_pangu.patches")

#: Exported by the driver of an explicit CPU-mode run (``cluster.device: cpu``) to all its processes.
CPU_MODE_ENV = "RLINF_PANGU_DEVICE"


def cpu_mode_run() -> bool:
    """True in a process of an explicit CPU-mode run (the YAML said ``cluster.device: cpu``)."""
    return os.environ.get(CPU_MODE_ENV, "").lower() == "cpu"


@dataclass
class Patch:
    name: str
    why: str
    module: str  # the upstream module the patch changes (imported lazily)
    applies: Callable[[], bool]  # True while upstream still needs this patch
    apply: Callable[[], None]
    upstream: str = ""  # the rlinf_pangu.patches module that declares it (rlinf, sglang, ...)
    #: armed in every child interpreter at start-up (import-time fixes, or needed before register())
    startup: bool = False
    #: applied by its owner at the right moment, never by apply_all()
    on_demand: bool = False
    done: bool = field(default=False, repr=False)


PATCHES: dict[str, Patch] = {}


def patch(name: str, why: str, module: str, applies: Callable[[], bool], *, startup: bool = False,
          on_demand: bool = False) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register the decorated function as the body of a patch on ``module``."""

    def deco(fn: Callable[[], None]) -> Callable[[], None]:
        if name in PATCHES:
            raise RuntimeError(f"patch {name!r} declared twice")
        upstream = fn.__module__.rsplit(".", 1)[-1]
        PATCHES[name] = Patch(name, why, module, applies, fn, upstream, startup, on_demand)
        return fn

    return deco


def installed(module: str) -> bool:
    """True when the top-level package of ``module`` is installed (nothing is imported)."""
    top = module.split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def apply_patch(name: str) -> bool:
    """Apply one patch if its module is installed and upstream still needs it; True if applied now."""
    p = PATCHES[name]
    if p.done or not installed(p.module):
        return False
    if not p.applies():
        log.info("patch %s not needed: upstream already changed (%s)", name, p.why)
        p.done = True
        return False
    p.apply()
    p.done = True
    log.debug("patched %s: %s", name, p.why)
    return True


def apply_all(only: list[str] | None = None) -> list[str]:
    """Apply every registered patch (or ``only`` those); returns the names applied now."""
    names = only or [n for n, p in PATCHES.items() if not p.on_demand]
    return [n for n in names if apply_patch(n)]


def startup_patches() -> list[str]:
    return [n for n, p in PATCHES.items() if p.startup]


def mod(name: str) -> Any:
    return importlib.import_module(name)


def mark(fn: Callable, original: Any) -> Callable:
    """Tag a replacement with what it replaces (idempotence checks and tests read the tag)."""
    fn.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    if getattr(original, "__doc__", None) and not fn.__doc__:
        fn.__doc__ = original.__doc__
    return fn


def patched(obj: Any) -> bool:
    return hasattr(obj, "__rlinf_pangu_original__")


# --------------------------------------------------------------------------------------
# Import hooks
# --------------------------------------------------------------------------------------


class ImportHooks(importlib.abc.MetaPathFinder):
    """Runs callbacks right after (or, with ``before=True``, right before) a module executes.

    After: patches on modules too heavy to import at ``register()`` time (RLinf's Megatron model
    manager pulls in megatron.training; SGLang scheduler processes call ``register()`` too and
    never need it). Before: fixes a module's import-time failures.
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
            spec.loader = HookedLoader(spec.loader, self.pending, fullname, self.before)
        return spec


class HookedLoader(importlib.abc.Loader):
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


_POST_IMPORT = ImportHooks()
_PRE_EXEC = ImportHooks(before=True)


def _arm(hooks: ImportHooks, module: str, fn: Callable[[Any], None]) -> None:
    """Queue ``fn`` once: a hook armed twice (the start-up line, then ``register()``) runs once."""
    queued = hooks.pending.setdefault(module, [])
    if fn not in queued:
        queued.append(fn)


def after_import(module: str, fn: Callable[[Any], None]) -> None:
    """Call ``fn(module_object)`` now if ``module`` is imported, else right after its import."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        fn(loaded)
        return
    _arm(_POST_IMPORT, module, fn)
    if _POST_IMPORT not in sys.meta_path:
        sys.meta_path.insert(0, _POST_IMPORT)


def before_exec(module: str, fn: Callable[[Any], None]) -> bool:
    """Call ``fn(module_object)`` right before ``module`` executes; False if it already has."""
    if module in sys.modules:
        return False
    _arm(_PRE_EXEC, module, fn)
    if _PRE_EXEC not in sys.meta_path:
        sys.meta_path.insert(0, _PRE_EXEC)
    return True


# --------------------------------------------------------------------------------------
# Reading upstream source without importing it (what the probes use)
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


def source_of(module: str, qualname: str) -> str:
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

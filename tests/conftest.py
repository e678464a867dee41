"""Shared fixtures: factory-made Pangu checkpoints (real files, fresh random weights)."""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _torchs_cudnn_for_te() -> None:
    """The GPU tests build Megatron without ``register()``: give every rank they start (the variable is
    inherited) the cuDNN torch uses, before anything imports Transformer Engine (a no-op without TE)."""
    from rlinf_pangu.patches.transformer_engine import use_torchs_cudnn

    use_torchs_cudnn()


_torchs_cudnn_for_te()

#: The xdist work unit of every module marked ``whole_run``: one unit, so one worker runs them one after the other.
WHOLE_RUN_UNIT = "whole_run"


@functools.cache
def marked_whole_run(module: Path) -> bool:
    """Whether a test module carries the ``whole_run`` mark, read from its source: xdist's scheduler
    runs in the controller, which sees node ids, not collected items."""
    tree = ast.parse(module.read_text(), filename=str(module))
    return any(isinstance(n, ast.Attribute) and n.attr == "whole_run" for n in ast.walk(tree))


def work_unit(rootpath: Path, nodeid: str) -> str:
    """The unit of work a test belongs to under ``make test`` (``-n 2 --dist loadscope``).

    Whole modules are the units, so a module's fixtures (a Megatron build, an SGLang engine, a training
    run) run once, on one worker. The modules that start a whole training run (~13 GB each on the 23 GB
    CPU host; two at once got Ray's workers OOM-killed) share one unit, so they never overlap; any other
    module may run beside one of them (2 workers: at most one other)."""
    module = nodeid.split("::", 1)[0]
    return WHOLE_RUN_UNIT if marked_whole_run(rootpath / module) else module


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pragma: no cover - pytest-xdist is pinned; without it the suite runs in one process
    pass
else:

    class ModuleScheduling(LoadScopeScheduling):
        """xdist's ``loadscope`` with :func:`work_unit`'s units. (xdist's own ``loadgroup`` marks do not
        group under pytest 9.2: xdist 3.8.0 renames ``item._nodeid``, which pytest 9 no longer reads.)"""

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(self.config.rootpath, nodeid)

    def pytest_xdist_make_scheduler(config: pytest.Config, log):
        return ModuleScheduling(config, log) if config.getvalue("dist") == "loadscope" else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: its collection order is the controller's queue
        # The whole runs are the long pole (~30 of the suite's ~50 serial minutes): their unit goes first
        # (make test passes --no-loadscope-reorder, which keeps this order).
        items.sort(key=lambda it: work_unit(config.rootpath, it.nodeid) != WHOLE_RUN_UNIT)


def _make(root: Path, name: str, **kw) -> Path:
    from rlinf_pangu.make_checkpoint import make_checkpoint

    return make_checkpoint(root / name, overwrite=True, **kw)


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="session")
def tiny_fp32(ckpt_root) -> Path:
    """The tiny preset (6 layers, untied) in fp32, sharded small so the index spans several files."""
    return _make(ckpt_root, "tiny_fp32", preset_name="tiny", dtype="fp32", seed=1, shard_bytes=48 * 1024**2)


@pytest.fixture(scope="session")
def tiny_tied_fp32(ckpt_root) -> Path:
    """A 1B-shaped-but-shrunk tied variant: the 1B preset's tying and head ratio, tiny sizes."""
    return _make(
        ckpt_root, "tiny_tied_fp32", preset_name="1b", dtype="fp32", seed=2,
        hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
    )

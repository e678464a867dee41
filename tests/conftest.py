"""Shared fixtures: factory-made Pangu checkpoints (real files, fresh random weights)."""

from __future__ import annotations

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

#: The xdist group of every module marked ``whole_run``: one work unit, so one worker runs them one after the other.
WHOLE_RUN_GROUP = "whole_run"


def xdist_group_of(item: pytest.Item) -> str:
    """The work unit an item belongs to under ``--dist loadgroup`` (``make test``).

    Whole modules, not single tests, are the units: a module's fixtures (a Megatron build, an SGLang
    engine, a training run) then run once, on one worker. The modules that start a whole training run
    (~13 GB each on the 23 GB CPU host; two at once got Ray workers OOM-killed) share one unit, so they
    never overlap; any other module may run beside one of them (2 workers: at most one other)."""
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    return WHOLE_RUN_GROUP if item.get_closest_marker("whole_run") else item.module.__name__


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the marks to name the units
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(xdist_group_of(item)))
    if config.getoption("loadgroup", False):  # set in each xdist worker (where collection runs) under loadgroup
        # The whole runs are the long pole (~30 of the suite's ~50 serial minutes): their unit goes first.
        items.sort(key=lambda it: xdist_group_of(it) != WHOLE_RUN_GROUP)


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

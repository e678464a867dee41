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

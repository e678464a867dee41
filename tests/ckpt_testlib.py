"""Helpers for the ckpt_convertor tests: quick HF directories (the factory's weights and config
without its tokenizer training) and exact tensor comparison."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard
from rlinf_pangu.make_checkpoint import DTYPES, hf_config_dict, iter_tensors, write_weights
from rlinf_pangu.presets import preset

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)


def write_hf(out: Path, dtype: str = "bf16", seed: int = 0, shard_bytes: int = 1 << 20,
             tensors: dict[str, torch.Tensor] | None = None, **overrides) -> Path:
    """An official-layout HF directory (config.json, sharded safetensors, index with inv_freq).

    ``tensors`` replaces the generated weights (to build bad inputs); by default the factory's.
    """
    cfg = preset("tiny", **{**SMALL, **overrides})
    dt = DTYPES[dtype]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config_dict(cfg, dt), indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PanguTokenizer"}) + "\n")
    items = list(tensors.items()) if tensors is not None else list(iter_tensors(cfg, seed, dt))
    total = sum(t.numel() * t.element_size() for _, t in items)
    write_weights(out, iter(items), total, shard_bytes)
    return out


def hf_tensors(cfg_overrides: dict | None = None, dtype: str = "bf16", seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = preset("tiny", **{**SMALL, **(cfg_overrides or {})})
    return dict(iter_tensors(cfg, seed, DTYPES[dtype]))


def load_hf(d: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory, through its index."""
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for f in sorted(set(wm.values())):
        with safe_open(str(d / f), framework="pt") as h:
            for n in h.keys():
                out[n] = h.get_tensor(n)
    assert set(out) == set(wm), "index and files disagree"
    return out


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))[:5]
    for k in a:
        assert a[k].dtype == b[k].dtype, (k, a[k].dtype, b[k].dtype)
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        assert torch.equal(a[k].view(torch.uint8) if a[k].dtype != torch.bool else a[k],
                           b[k].view(torch.uint8) if b[k].dtype != torch.bool else b[k]), f"{k} differs"


def expected_rank_state(hf: dict[str, torch.Tensor], dims: PanguDims, tp_rank: int, tp: int,
                        layers, first: bool, last: bool) -> dict[str, torch.Tensor]:
    """The reference: the layout's own whole-stage function on the full HF state dict."""
    return hf_to_megatron_shard(hf, dims, tp_rank, tp, list(layers), first, last)


def dims_of(d: Path) -> PanguDims:
    return PanguDims.from_hf_config(json.loads((d / "config.json").read_text()))

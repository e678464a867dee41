"""Bad HF checkpoints fail with one clear error that names the field, file or tensor."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import rlinf_pangu
from rlinf_pangu.hf import PanguCheckpointError, PanguConfigError


@pytest.fixture(scope="module", autouse=True)
def _registered():
    rlinf_pangu.register(rlinf=False, sglang=False)


@pytest.fixture
def ckpt(tiny_fp32, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_fp32, d)
    return d


def _load(d):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(d, trust_remote_code=False)


def test_config_missing_required_field_names_it(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    del raw["num_key_value_heads"]
    (ckpt / "config.json").write_text(json.dumps(raw))
    from transformers import AutoConfig

    with pytest.raises(PanguConfigError, match="num_key_value_heads"):
        AutoConfig.from_pretrained(ckpt)


def test_shard_listed_in_index_but_absent_names_the_file(ckpt):
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (ckpt / victim).unlink()
    with pytest.raises(PanguCheckpointError, match=victim):
        _load(ckpt)


def test_tensor_of_wrong_shape_names_the_tensor(ckpt):
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    name = "model.layers.1.self_attn.o_proj.bias"
    f = ckpt / index["weight_map"][name]
    sd = load_file(f)
    sd[name] = torch.zeros(7)
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(PanguCheckpointError, match=r"model\.layers\.1\.self_attn\.o_proj\.bias.*\[7\].*\[128\]"):
        _load(ckpt)

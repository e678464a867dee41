"""The checkpoint factory writes what an official openPangu-Embedded release holds."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest

from rlinf_pangu.make_checkpoint import hf_config_dict, make_checkpoint
from rlinf_pangu.presets import preset


def test_7b_config_is_shaped_like_the_official_one():
    import torch

    cfg = hf_config_dict(preset("7b"), torch.bfloat16)
    official = {
        "architectures": ["PanguEmbeddedForCausalLM"], "model_type": "PanguEmbedded", "bias": True,
        "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 12800, "num_hidden_layers": 34,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 153376,
        "max_position_embeddings": 32768, "rope_theta": 16000000.0, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "pad_token_id": 0,
        "eos_token_id": 45892, "attention_dropout": 0.0,
    }
    assert {k: cfg[k] for k in official} == official
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_openpangu_dense.PanguEmbeddedForCausalLM"
    assert "attention_bias" not in cfg and "head_dim" not in cfg


def test_7b_shapes_count_the_official_parameter_number():
    from rlinf_pangu.layout import PanguDims

    dims = PanguDims.from_hf_config(preset("7b"))
    n = 0
    for shape in dims.hf_shapes().values():
        k = 1
        for s in shape:
            k *= s
        n += k
    assert n == 8_030_887_936  # openPangu-Embedded-7B's parameter count (16,061,784,576 bytes in bf16)


def test_1b_preset_is_tied_with_official_shapes():
    p = preset("1b")
    assert p["tie_word_embeddings"] is True
    assert (p["hidden_size"], p["num_hidden_layers"], p["num_attention_heads"], p["num_key_value_heads"]) == (1536, 26, 12, 6)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    from safetensors.torch import load_file

    kw = dict(preset_name="tiny", dtype="bf16", num_hidden_layers=1)
    a = make_checkpoint(tmp_path / "a", seed=3, **kw)
    b = make_checkpoint(tmp_path / "b", seed=3, **kw)
    c = make_checkpoint(tmp_path / "c", seed=4, **kw)
    la, lb, lc = (load_file(next(d.glob("*.safetensors"))) for d in (a, b, c))
    name = "model.layers.0.self_attn.q_proj.bias"
    assert la[name].dtype.is_floating_point and str(la[name].dtype) == "torch.bfloat16"
    assert (la[name] == lb[name]).all() and not (la[name] == lc[name]).all()


def test_refuses_to_overwrite_and_leaves_no_temp_dirs(tmp_path):
    out = make_checkpoint(tmp_path / "m", preset_name="tiny", num_hidden_layers=1)
    with pytest.raises(FileExistsError, match="m"):
        make_checkpoint(out, preset_name="tiny", num_hidden_layers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_cli_writes_a_loadable_directory(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "rlinf_pangu.make_checkpoint", "--preset", "tiny", "--out", str(out), "--seed", "5",
         "--tie-word-embeddings", "true"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.iterdir())
    for f in ("config.json", "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json",
              "special_tokens_map.json", "generation_config.json"):
        assert f in files
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    assert index["metadata"]["total_size"] > 0


def test_two_runs_making_the_same_checkpoint_at_once_both_get_the_first_ones(tmp_path, monkeypatch):
    """A fresh cache and two runs started together (two ``make demo``s, the parallel test workers): the
    one that renames second finds the other's complete checkpoint in place, keeps it, and cleans up."""
    import rlinf_pangu
    from rlinf_pangu import config as pc
    from rlinf_pangu import make_checkpoint as mc

    rlinf_pangu.register()  # as the driver does before it makes the checkpoint (the finish step loads it)
    target = tmp_path / "cache" / "pangu-tiny"
    cfg = pc.compose(Path(__file__).resolve().parents[1] / "examples/math/pangu-tiny-grpo-megatron-cpu.yaml",
                     [f"rollout.model.model_path={target}", "pangu.make_checkpoint.enabled=true"])
    real = mc.make_checkpoint

    def other_run_finishes_first(out, **kw):
        made = real(out, **kw)
        real(target, **kw)  # the other run's rename lands while this one is still finishing its copy
        (target / "made_by").write_text("the other run")
        return made

    monkeypatch.setattr(mc, "make_checkpoint", other_run_finishes_first)
    assert pc.ensure_checkpoint(cfg) == target
    assert (target / "made_by").read_text() == "the other run"
    assert sorted(p.name for p in target.parent.iterdir()) == ["pangu-tiny"]  # no staging left behind

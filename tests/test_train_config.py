"""The driver's configuration, YAML-only: three real variants resolve to the right RLinf config,
and bad YAML fails before any worker (or Ray) starts, naming the key.

The checkpoints here are config-only directories (``config.json`` from the factory's own
``hf_config_dict`` with the official 7B/1B shapes): RLinf's validation reads only the HF config,
so no 16 GB of weights are needed to check a 7B job's resolved config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlinf_pangu import config as pc
from rlinf_pangu.make_checkpoint import hf_config_dict
from rlinf_pangu.presets import preset

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "math"


def _config_dir(root: Path, name: str, **over) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf_config_dict(preset(name.split("-")[0], **over), torch.bfloat16)))
    return d


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfgonly")
    return {"7b": _config_dir(root, "7b"), "1b": _config_dir(root, "1b"), "tiny": _config_dir(root, "tiny")}


def _prepared(example: str, ckpt: Path, tmp_path: Path, *overrides: str):
    cfg = pc.compose(EX / example, [f"rollout.model.model_path={ckpt}", f"runner.output_dir={tmp_path}", *overrides])
    return pc.prepare(cfg, base=tmp_path)


def test_7b_resolves_to_tp4_pp2_rollout_tp2_bf16(ckpts, tmp_path):
    cfg = pc.resolve_rlinf(_prepared("pangu-7b-grpo-megatron.yaml", ckpts["7b"], tmp_path, "data.train_data_paths=[/x.jsonl]"))
    m = cfg.actor.model
    assert (m.tensor_model_parallel_size, m.pipeline_model_parallel_size, cfg.rollout.tensor_parallel_size) == (4, 2, 2)
    assert m.precision == "bf16" and cfg.actor.optim.bf16 and not cfg.actor.optim.fp16
    # shapes come from the checkpoint's config.json, architecture from the Pangu presets
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups) == (34, 4096, 32, 8)
    assert m.add_qkv_bias is True and m.add_bias_linear is False and cfg.actor.spec_name == "pangu"
    assert m.rotary_base == 16000000.0 and m.share_embeddings_and_output_weights is False
    assert cfg.actor.megatron.use_hf_ckpt and cfg.rollout.model.model_type == "pangu" and cfg.rollout.eos == 45892
    assert cfg.actor.tokenizer.tokenizer_model == str(ckpts["7b"]) and cfg.data.apply_chat_template
    assert cfg.reward.reward_type == "pangu_math"


def test_1b_resolves_tied_embeddings(ckpts, tmp_path):
    cfg = pc.resolve_rlinf(_prepared("pangu-1b-grpo-megatron.yaml", ckpts["1b"], tmp_path))
    assert cfg.actor.model.share_embeddings_and_output_weights is True
    assert cfg.actor.megatron.untie_embeddings_and_output_weights is False
    assert (cfg.actor.model.num_layers, cfg.actor.model.num_query_groups) == (26, 6)


def test_tiny_resolves_with_bundled_data_and_overrides(ckpts, tmp_path):
    cfg = pc.resolve_rlinf(_prepared("pangu-tiny-grpo-megatron.yaml", ckpts["tiny"], tmp_path, "runner.max_steps=3", "parallel=tp2-pp1-rollout-tp2"))
    assert cfg.runner.max_steps == 3 and cfg.actor.model.tensor_model_parallel_size == 2 and cfg.rollout.tensor_parallel_size == 2
    assert Path(cfg.data.train_data_paths[0]).is_file()
    assert cfg.actor.global_batch_size == cfg.data.rollout_batch_size * cfg.algorithm.group_size


def test_cpu_variant_is_explicit(ckpts, tmp_path):
    cfg = _prepared("pangu-tiny-grpo-megatron-cpu.yaml", ckpts["tiny"], tmp_path)
    assert pc.device(cfg) == "cpu" and cfg.actor.megatron.distributed_backend == "gloo"
    gpu = _prepared("pangu-tiny-grpo-megatron.yaml", ckpts["tiny"], tmp_path)
    assert pc.device(gpu) == "gpu" and gpu.actor.megatron.distributed_backend == "nccl"


@pytest.mark.parametrize(
    "override, key",
    [
        ("+actor.model.tensor_paralel_size=2", "actor.model.tensor_paralel_size"),  # unknown key (typo)
        ("rollout.model.model_type=qwen2.5", "rollout.model.model_type"),  # not pangu for a Pangu checkpoint
        ("actor.model.tensor_model_parallel_size=3", "actor.model.tensor_model_parallel_size"),  # 3 does not divide 32 heads
        ("rollout.tensor_parallel_size=3", "rollout.tensor_parallel_size"),
        ("actor.model.pipeline_model_parallel_size=4", "actor.model.pipeline_model_parallel_size"),  # 34 layers
        ("rollout.eos=2", "rollout.eos"),
        ("actor.model.precision=fp32", "actor.model.precision"),
    ],
)
def test_bad_yaml_names_the_key(ckpts, tmp_path, override, key):
    with pytest.raises(pc.ConfigError) as e:
        _prepared("pangu-7b-grpo-megatron.yaml", ckpts["7b"], tmp_path, "data.train_data_paths=[/x.jsonl]", override)
    assert e.value.key == key and key in str(e.value)


def test_unknown_key_inside_the_yaml_file_is_rejected(ckpts, tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (EX / "pangu-tiny-grpo-megatron.yaml").read_text()
    assert "  group_size: 8" in text
    bad.write_text(text.replace("  group_size: 8", "  grop_size: 8"))
    cfg = pc.compose(bad, [f"rollout.model.model_path={ckpts['tiny']}"])
    with pytest.raises(pc.ConfigError, match="algorithm.grop_size.*did you mean 'algorithm.group_size'"):
        pc.check_known_keys(cfg)


def test_driver_fails_before_ray_starts(ckpts, tmp_path):
    """The real entry point, in a fresh interpreter: exit code 2, the key named, no Ray started."""
    cmd = [sys.executable, "-m", "rlinf.train", "--config", str(EX / "pangu-7b-grpo-megatron.yaml"),
           f"rollout.model.model_path={ckpts['7b']}", "data.train_data_paths=[/x.jsonl]",
           "actor.model.tensor_model_parallel_size=3", f"runner.output_dir={tmp_path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "actor.model.tensor_model_parallel_size" in p.stderr
    assert "Ray" not in p.stderr and not (tmp_path / "pangu-7b-grpo" / "ray").exists()

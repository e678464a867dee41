"""The FSDP examples, YAML-only: they compose from configs/ (the schema plus its FSDP piece,
configs/rlinf/fsdp.yaml), resolve to RLinf's FSDP actor, and bad FSDP settings fail before any
worker (or Ray) starts, naming the key.

The checkpoints are config-only directories (``config.json`` from the factory's own
``hf_config_dict``), as in tests/test_train_config.py: the checks read only the HF config.
"""

from __future__ import annotations

import importlib.util
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
FSDP_1B = "pangu-1b-grpo-fsdp.yaml"
FSDP_CPU = "pangu-tiny-grpo-fsdp-cpu.yaml"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfgonly_fsdp")
    out = {}
    for name in ("1b", "tiny"):
        d = root / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(hf_config_dict(preset(name), torch.bfloat16)))
        out[name] = d
    return out


def _compose(example: str, ckpt: Path, tmp_path: Path, *overrides: str):
    return pc.compose(EX / example, [f"rollout.model.model_path={ckpt}", f"runner.output_dir={tmp_path}", *overrides])


def _prepared(example: str, ckpt: Path, tmp_path: Path, *overrides: str):
    return pc.prepare(_compose(example, ckpt, tmp_path, *overrides), base=tmp_path)


def test_1b_fsdp_resolves_to_rlinfs_fsdp2_actor_on_the_hf_checkpoint(ckpts, tmp_path):
    cfg = pc.resolve_rlinf(_prepared(FSDP_1B, ckpts["1b"], tmp_path))
    a = cfg.actor
    assert a.training_backend == "fsdp" and a.fsdp_config.strategy == "fsdp2"
    assert a.model.model_path == str(ckpts["1b"]) == cfg.rollout.model.model_path  # no conversion: one checkpoint
    assert a.model.precision == "fp32" and a.fsdp_config.mixed_precision.param_dtype == "bf16"
    assert cfg.rollout.model.precision == "bf16" and a.sync_precision == "bf16"
    assert a.model.attn_implementation == "sdpa" and a.model.variable_seq_lengths is False
    assert cfg.algorithm.entropy_op_type == "torch" and a.enable_offload is True
    assert (a.micro_batch_size, a.global_batch_size) == (8, 128)  # RLinf's reasoning validation ran
    assert cfg.rollout.model.model_type == "pangu" and cfg.reward.reward_type == "pangu_math"


def test_fsdp_and_megatron_1b_examples_run_the_same_workload(ckpts, tmp_path):
    """The GPU comparison (docs: Megatron vs FSDP) is only fair on the same data, batch and lengths."""
    fsdp = _compose(FSDP_1B, ckpts["1b"], tmp_path)
    mega = _compose("pangu-1b-grpo-megatron.yaml", ckpts["1b"], tmp_path)
    for key in ("runner.seq_length", "runner.max_steps", "algorithm.group_size", "algorithm.training_batch_size_per_gpu",
                "algorithm.logprob_forward_micro_batch_size", "algorithm.n_minibatches", "data.rollout_batch_size",
                "data.max_prompt_length", "data.train_data_paths", "actor.optim.lr", "rollout.gpu_memory_utilization",
                "rollout.max_running_requests", "algorithm.sampling_params.temperature"):
        assert pc.OmegaConf.select(fsdp, key) == pc.OmegaConf.select(mega, key), key


def test_cpu_example_is_fp32_throughout(ckpts, tmp_path):
    cfg = pc.resolve_rlinf(_prepared(FSDP_CPU, ckpts["tiny"], tmp_path))
    assert cfg.cluster.device == "cpu" and cfg.actor.training_backend == "fsdp"
    assert cfg.actor.model.precision == cfg.rollout.model.precision == "fp32"
    assert set(cfg.actor.fsdp_config.mixed_precision.values()) == {"fp32"}


def test_the_driver_builds_rlinfs_fsdp_actor(ckpts, tmp_path):
    from rlinf.workers.actor import get_actor_worker

    cfg = pc.resolve_rlinf(_prepared(FSDP_CPU, ckpts["tiny"], tmp_path))
    assert get_actor_worker(cfg).__name__ == "FSDPActor"


def test_fsdp_keys_are_unknown_to_the_megatron_backend(ckpts, tmp_path):
    cfg = pc.compose(EX / "pangu-1b-grpo-megatron.yaml", [f"rollout.model.model_path={ckpts['1b']}", "+actor.fsdp_config.strategy=fsdp2"])
    with pytest.raises(pc.ConfigError) as e:
        pc.check_known_keys(cfg)
    assert e.value.key == "actor.fsdp_config"


def test_a_misspelt_fsdp_key_is_named_with_its_closest_match(ckpts, tmp_path):
    cfg = _compose(FSDP_1B, ckpts["1b"], tmp_path, "+actor.fsdp_config.reshard_after_forwards=false")
    with pytest.raises(pc.ConfigError) as e:
        pc.check_known_keys(cfg)
    assert e.value.key == "actor.fsdp_config.reshard_after_forwards"
    assert "reshard_after_forward" in str(e.value) and "configs/rlinf/fsdp.yaml" in str(e.value)


@pytest.mark.parametrize("key", ["actor.model.tensor_model_parallel_size", "actor.model.pipeline_model_parallel_size"])
def test_megatron_parallel_sizes_are_refused_for_fsdp(ckpts, tmp_path, key):
    with pytest.raises(pc.ConfigError) as e:
        _prepared(FSDP_1B, ckpts["1b"], tmp_path, f"{key}=2")
    assert e.value.key == key and "data-parallel" in str(e.value)


@pytest.mark.parametrize("key", ["actor.model.variable_seq_lengths", "runner.enable_dynamic_batch_size"])
def test_packing_is_refused_with_an_attention_that_mixes_packed_sequences(ckpts, tmp_path, key):
    with pytest.raises(pc.ConfigError) as e:
        _prepared(FSDP_CPU, ckpts["tiny"], tmp_path, f"{key}=true")
    assert e.value.key == key and "sdpa" in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
@pytest.mark.parametrize("override", ["actor.model.attn_implementation=flash_attention_2", "algorithm.entropy_op_type=flash_attn"])
def test_flash_attention_choices_need_flash_attn(ckpts, tmp_path, override):
    with pytest.raises(pc.ConfigError) as e:
        _prepared(FSDP_CPU, ckpts["tiny"], tmp_path, override)
    assert e.value.key == override.split("=")[0] and "flash_attn" in str(e.value)


def test_rlinfs_own_fsdp_checks_fail_before_ray(ckpts, tmp_path):
    """RLinf asserts autocast and FSDP mixed precision exclusive only inside validate_cfg (Ray up)."""
    with pytest.raises(pc.ConfigError) as e:
        _prepared(FSDP_1B, ckpts["1b"], tmp_path, "actor.fsdp_config.amp_autocast.enabled=true")
    assert e.value.key == "actor.fsdp_config" and "amp_autocast" in str(e.value)


def test_dry_run_prints_the_resolved_fsdp_job(ckpts, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "rlinf.train", "--config", str(EX / FSDP_1B), "--dry-run",
         f"rollout.model.model_path={ckpts['1b']}", f"runner.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    resolved = json.loads(r.stdout[r.stdout.index("{"):])
    assert resolved["actor"]["training_backend"] == "fsdp"
    assert resolved["actor"]["fsdp_config"]["strategy"] == "fsdp2"

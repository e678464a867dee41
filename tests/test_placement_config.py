"""``cluster.component_placement`` before Ray starts (rlinf_pangu.placement, config.check_placement):
the disaggregated examples resolve to RLinf's disaggregated mode, and every placement RLinf cannot
run fails in the driver's checks, naming the key.

Checkpoints are config-only directories (config.json from the factory's ``hf_config_dict``): the
checks and RLinf's placement class read only the YAML and the HF config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlinf_pangu import config as pc
from rlinf_pangu import placement
from rlinf_pangu.make_checkpoint import hf_config_dict
from rlinf_pangu.presets import preset

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "math"
DISAGG_CPU = EX / "pangu-tiny-grpo-megatron-disagg-cpu.yaml"
DISAGG_GPU = EX / "pangu-1b-grpo-megatron-disagg.yaml"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfgonly")
    out = {}
    for name in ("tiny", "1b"):
        d = root / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(hf_config_dict(preset(name), torch.bfloat16)))
        out[name] = d
    return out


def _cfg(example: Path, ckpt: Path, *overrides: str):
    return pc.compose(example, [f"rollout.model.model_path={ckpt}", *overrides])


def _error(example: Path, ckpt: Path, *overrides: str) -> pc.ConfigError:
    with pytest.raises(pc.ConfigError) as e:
        pc.check_placement(_cfg(example, ckpt, *overrides))
    assert e.value.key in str(e.value)
    return e.value


# --- the examples ----------------------------------------------------------------------


def test_cpu_disagg_example_gives_actor_rollout_and_inference_ranks_of_their_own(ckpts):
    cfg = _cfg(DISAGG_CPU, ckpts["tiny"])
    entries = placement.parse(cfg.cluster.component_placement)
    assert {n: e.devices for n, e in entries.items()} == {"actor": (0,), "rollout": (1,), "inference": (2,), "reward": (0,)}
    assert pc.check_placement(cfg) == placement.DISAGGREGATED
    assert pc.device(cfg) == "cpu" and cfg.actor.megatron.distributed_backend == "gloo"


def test_a_null_entry_drops_the_inherited_colocated_key(ckpts):
    """cpu.yaml (which the disaggregated piece includes) and the schema place
    'actor,rollout,reward' together; the piece's null removes that key instead of leaving every
    component placed twice."""
    keys = set(_cfg(DISAGG_CPU, ckpts["tiny"]).cluster.component_placement)
    assert keys == {"actor", "rollout", "inference", "reward"}
    assert set(_cfg(EX / "pangu-tiny-grpo-megatron-cpu.yaml", ckpts["tiny"]).cluster.component_placement) == {"actor,rollout,reward"}


def test_colocated_examples_stay_colocated(ckpts):
    for example in ("pangu-tiny-grpo-megatron-cpu.yaml", "pangu-tiny-grpo-megatron.yaml"):
        assert pc.check_placement(_cfg(EX / example, ckpts["tiny"])) == placement.COLOCATED


def test_rlinfs_own_placement_class_picks_disaggregated_for_both_examples(ckpts):
    """RLinf's ModelParallelComponentPlacement, run on the devices the YAML names (no cluster),
    agrees: disaggregated mode, weights over the collective (its DISAGGREGATED sync mode)."""
    cpu = placement.resolve_with_rlinf(_cfg(DISAGG_CPU, ckpts["tiny"]))
    assert (cpu["mode"], cpu["rollout_sync_mode"], cpu["devices"]) == ("DISAGGREGATED", "DISAGGREGATED", 3)
    assert cpu["groups"] == {"actor": [0], "rollout": [1], "inference": [2], "reward": [0]}
    assert cpu["actor_to_rollout"] == {0: [(0, 0)]}
    gpu = placement.resolve_with_rlinf(_cfg(DISAGG_GPU, ckpts["1b"]))
    assert (gpu["mode"], gpu["devices"], gpu["groups"]) == ("DISAGGREGATED", 2, {"actor": [0], "rollout": [1], "reward": [0]})


def test_cpu_mode_numbers_cpu_slots_so_rlinf_sees_separate_ranks(ckpts):
    """On a CPU host RLinf counts ranks in nodes (one host: rank 0 only). The CPU mode's view
    numbers CPU slots of node 0, and its node placement gives every group its own processes."""
    from rlinf.utils.placement import ModelParallelComponentPlacement, PlacementMode, RolloutSyncMode

    from rlinf_pangu.patches import cpu as cpu_mode

    cfg = _cfg(DISAGG_CPU, ckpts["tiny"])
    p = ModelParallelComponentPlacement(cfg, cpu_mode.placement_cluster(cfg, cluster=None))
    assert p.placement_mode == PlacementMode.DISAGGREGATED and p.has_dedicated_inference
    cpu_mode.driver_placement(p)
    assert p._rollout_sync_mode == RolloutSyncMode.DISAGGREGATED
    nodes = {name: s._node_ranks for name, s in p._placements.items()}
    assert nodes == {"actor": [0], "rollout": [0], "inference": [0], "reward": [0]}


def test_two_gpu_example_has_no_inference_group_and_uses_sglangs_logprobs(ckpts):
    cfg = _cfg(DISAGG_GPU, ckpts["1b"])
    assert pc.check_placement(cfg) == placement.DISAGGREGATED
    assert not cfg.algorithm.recompute_logprobs and cfg.rollout.return_logprobs
    assert not (cfg.actor.offload_weight or cfg.actor.offload_optimizer or cfg.actor.offload_grad)


# --- placements RLinf cannot run: one error each, naming the key --------------------------


def test_overlapping_ranges_name_the_overlapping_component(ckpts):
    e = _error(DISAGG_CPU, ckpts["tiny"], "cluster.component_placement.rollout=0-1")
    assert e.key == "cluster.component_placement.rollout" and "overlap on devices [0]" in str(e)


def test_rlinf_itself_refuses_the_overlap_only_after_ray_would_have_started(ckpts):
    """The same overlap reaches RLinf's placement class as a bare ValueError: the rule above is
    RLinf's, checked earlier."""
    with pytest.raises(pc.ConfigError, match="does not match either the collocated mode"):
        placement.resolve_with_rlinf(_cfg(DISAGG_CPU, ckpts["tiny"], "cluster.component_placement.rollout=0-1"))


def test_inference_sharing_the_actors_devices_is_an_overlap(ckpts):
    e = _error(DISAGG_CPU, ckpts["tiny"], "cluster.component_placement.inference=0")
    assert e.key == "cluster.component_placement.inference"


def test_disaggregated_without_an_inference_group_is_refused(ckpts):
    """RLinf's placement contract for its disaggregated mode (actor, rollout and inference all
    placed); its placement class would accept the YAML and let the actor recompute."""
    e = _error(DISAGG_CPU, ckpts["tiny"], "~cluster.component_placement.inference")
    assert e.key == "cluster.component_placement" and "without an 'inference' entry" in str(e)


def test_rollout_tp_must_fit_its_devices(ckpts):
    # rollout TP 2 divides actor TP 2, but the rollout has one device
    e = _error(DISAGG_CPU, ckpts["tiny"], "actor.model.tensor_model_parallel_size=2", "cluster.component_placement.actor=0-1",
               "cluster.component_placement.rollout=2", "cluster.component_placement.inference=3-4", "rollout.tensor_parallel_size=2")
    assert e.key == "rollout.tensor_parallel_size" and "rollout's 1 device(s)" in str(e)


def test_rollout_devices_must_be_a_multiple_of_actor_tp_in_the_disaggregated_sync(ckpts):
    e = _error(DISAGG_CPU, ckpts["tiny"], "actor.model.tensor_model_parallel_size=2", "cluster.component_placement.actor=0-1",
               "cluster.component_placement.rollout=2", "cluster.component_placement.inference=3-4")
    assert e.key == "cluster.component_placement.rollout"


def test_inference_group_without_the_recompute_is_refused(ckpts):
    e = _error(DISAGG_CPU, ckpts["tiny"], "algorithm.recompute_logprobs=false")
    assert e.key == "algorithm.recompute_logprobs"


def test_inference_group_in_the_colocated_mode_is_refused(ckpts):
    e = _error(EX / "pangu-tiny-grpo-megatron-cpu.yaml", ckpts["tiny"], "+cluster.component_placement.inference=1")
    assert e.key == "cluster.component_placement.inference"


def test_inference_must_keep_the_actors_layout(ckpts):
    e = _error(DISAGG_CPU, ckpts["tiny"], "inference.model.tensor_model_parallel_size=2")
    assert e.key == "inference.model.tensor_model_parallel_size"


def test_ranges_must_be_contiguous(ckpts):
    e = _error(DISAGG_CPU, ckpts["tiny"], "cluster.component_placement.rollout='1,3'")
    assert e.key == "cluster.component_placement.rollout" and "contiguous" in str(e)


def test_unreadable_ranks_are_named(ckpts):
    e = _error(DISAGG_CPU, ckpts["tiny"], "cluster.component_placement.rollout=one")
    assert e.key == "cluster.component_placement.rollout"


# --- the real entry point ---------------------------------------------------------------


def test_driver_rejects_a_placement_before_ray_starts(ckpts, tmp_path):
    cmd = [sys.executable, "-m", "rlinf.train", "--config", str(DISAGG_CPU), f"rollout.model.model_path={ckpts['tiny']}",
           "~cluster.component_placement.inference", f"runner.output_dir={tmp_path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "config error: cluster.component_placement:" in p.stderr
    assert not (tmp_path / "pangu-tiny-grpo-disagg-cpu" / "ray").exists()


def test_dry_run_of_the_two_gpu_example_resolves_on_a_cpu_host(ckpts, tmp_path):
    """``python -m rlinf.train --config examples/math/pangu-1b-grpo-megatron-disagg.yaml --dry-run``:
    RLinf's validators and its placement class resolve the 2-GPU job without a GPU or Ray."""
    cmd = [sys.executable, "-m", "rlinf.train", "--config", str(DISAGG_GPU), "--dry-run",
           f"rollout.model.model_path={ckpts['1b']}", f"runner.output_dir={tmp_path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    resolved = json.loads(p.stdout)
    assert resolved["cluster"]["component_placement"] == {"actor": 0, "rollout": 1, "reward": 0}
    assert resolved["actor"]["model"]["share_embeddings_and_output_weights"] is True  # the 1B's tied embeddings
    assert resolved["rollout"]["model"]["model_type"] == "pangu" and resolved["actor"]["megatron"]["distributed_backend"] == "nccl"
    assert "RLinf placement on 2 device(s): DISAGGREGATED, rollout sync DISAGGREGATED" in p.stderr
    assert "actor rank -> rollout (dp, tp): {0: [(0, 0)]}" in p.stderr
    assert not (tmp_path / "pangu-1b-grpo-disagg" / "ray").exists()

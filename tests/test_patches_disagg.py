"""What RLinf's disaggregated path needs for Pangu (rlinf_pangu/patches: rlinf.py, cpu.py;
resharding/reshard.py): the actor -> inference reshard keeps Megatron's vocabulary split, the
actor says which way its buckets travel, and the CPU mode covers the inference worker.

Each patch: its probe says upstream still has the problem (read in a fresh interpreter, before
anything is patched), and the patched behaviour works on RLinf's own code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import sync_testlib as L
from harness import fresh_env
from rlinf_pangu.patches import rlinf as rp


def _fresh(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=fresh_env())
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stdout.strip().splitlines()[-1]


def test_upstream_picks_the_tp_reshard_from_the_model_type_alone():
    code = f"from rlinf_pangu import patches as p\nprint(p.PATCHES[{rp.INFERENCE_RESHARD!r}].applies())"
    assert _fresh(code) == "True"


# --- rlinf.ReshardConfig:pangu-megatron-target -------------------------------------------


def test_megatron_target_gets_the_reshard_that_keeps_megatrons_vocab_split(tiny_fp32):
    from resharding.reshard import tp_reshard_fn_pangu

    fn = L.reshard_config(tiny_fp32, 2, 2, reshard_weights_format="mcore").tp_reshard_fn
    assert fn.func is tp_reshard_fn_pangu and fn.keywords == {"vocab": "megatron"}


def test_the_rollouts_sglang_format_keeps_its_own_pairing(tiny_fp32):
    from resharding.reshard import tp_reshard_fn_pangu

    fn = L.reshard_config(tiny_fp32, 2, 2).tp_reshard_fn
    assert fn.func is tp_reshard_fn_pangu and fn.keywords == {"copy": False}  # vocab: SGLang's rows (default)


def test_other_model_types_are_left_to_rlinf(tiny_fp32):
    from rlinf.utils.resharding.reshard_config import ReshardConfig
    from rlinf.utils.resharding.utils import get_tp_reshard_fn

    rc = L.reshard_config(tiny_fp32, 2, 2, reshard_weights_format="mcore")
    other = ReshardConfig(model_type="qwen2.5", model_config=rc.model_config, reshard_weights_format="mcore", reshard_tp_size=2)
    assert other.tp_reshard_fn is get_tp_reshard_fn("qwen2.5")


def test_a_megatron_target_must_keep_the_actors_tp():
    from resharding.reshard import tp_reshard_fn_pangu

    with pytest.raises(ValueError, match="must keep the actor's TP"):
        tp_reshard_fn_pangu({}, 2, None, vocab="megatron")
    with pytest.raises(ValueError, match="vocab must be one of"):
        tp_reshard_fn_pangu({}, 1, None, vocab="hf")


def _inference_reshard_rank(rank: int, world: int, ckpt: str) -> dict:
    """RLinf's MegatronCoreWeightReshard as RLinf's actor builds it for its inference group
    (``reshard_weights_format="mcore"``, the inference's TP), on this rank's whole Megatron state
    (what ``_get_inference_model_state_dict`` hands it); and the same with SGLang's vocabulary
    rows, the TP reshard RLinf would pick for model type pangu without the patch."""
    import functools

    import rlinf_pangu

    rlinf_pangu.register()
    from rlinf.utils.resharding.mcore_weight_reshard import MegatronCoreWeightReshard
    from rlinf.utils.resharding.reshard_config import ReshardConfig

    from resharding.reshard import tp_reshard_fn_pangu

    model, tc, _ = L.build_megatron(ckpt, tp=2, pp=1)
    L.gloo_reshard_subgroups()
    state = {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}
    out = {}
    for variant, kw in (("patched", {}), ("sglang_vocab", {"tp_reshard_fn": tp_reshard_fn_pangu})):
        rc = ReshardConfig(model_type="pangu", model_config=tc, reshard_weights_format="mcore", reshard_tp_size=2, **kw)
        got = MegatronCoreWeightReshard(rc).gather_and_reshard_model(dict(state), rank % 2)
        out[variant] = {
            "differ": sorted(k for k in state if k not in got or got[k].shape != state[k].shape or not torch.equal(got[k], state[k])),
            "extra": sorted(set(got) - set(state)),
            "aliases": sorted(k for k in got if k in state and got[k].untyped_storage().data_ptr() == state[k].untyped_storage().data_ptr()),
            "vocab_rows": {k: int(got[k].shape[0]) for k in got if "word_embeddings" in k or "output_layer" in k},
        }
    out["own_vocab_rows"] = {k: int(v.shape[0]) for k, v in state.items() if "word_embeddings" in k or "output_layer" in k}
    return out


@pytest.mark.slow
def test_actor_to_inference_sync_at_tp2_hands_each_rank_its_own_megatron_shards(tiny_fp32):
    """Actor TP 2 -> inference TP 2 through RLinf's own reshard: every tensor arrives bit for bit
    as the inference rank's Megatron shard, in new memory (the actor trains on afterwards). The
    control: with the rollout's TP reshard (SGLang's padded vocabulary rows, vocabulary 153376 is
    not a multiple of 64) the embedding and output shards come out the wrong size."""
    from harness import run_ranks

    for rank, r in enumerate(run_ranks(_inference_reshard_rank, 2, str(tiny_fp32), timeout=600, grace=20)):
        assert r["patched"]["differ"] == [] and r["patched"]["extra"] == [], (rank, r["patched"])
        assert r["patched"]["aliases"] == [], f"rank {rank} would send live parameters: {r['patched']['aliases'][:5]}"
        assert r["patched"]["vocab_rows"] == r["own_vocab_rows"] == {
            "embedding.word_embeddings.weight": 153376 // 2, "output_layer.weight": 153376 // 2}
        control = r["sglang_vocab"]
        assert set(control["differ"]) == {"embedding.word_embeddings.weight", "output_layer.weight"}, (rank, control)
        assert control["vocab_rows"]["embedding.word_embeddings.weight"] != 153376 // 2


# --- rlinf.RolloutResult:merge-batches-without-returns ------------------------------------


def test_upstream_pipeline_merge_still_refuses_grpos_missing_returns():
    code = f"from rlinf_pangu import patches as p\nprint(p.PATCHES[{rp.PIPELINE_MERGE!r}].applies())"
    assert _fresh(code) == "True"


def _grpo_piece(n: int, seed: int) -> dict:
    """A piece of rollout as RLinf's pipelined actor holds it after its advantage handler: GRPO
    advantages, and returns None (compute_grpo_advantages has none)."""
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 100, (n, 5), generator=g), "advantages": torch.randn(n, 1, generator=g),
            "returns": None, "answers": [f"a{seed}"] * n}


def test_pieces_without_returns_merge_into_one_global_batch():
    from rlinf.data.io_struct import RolloutResult

    original = RolloutResult.__dict__["merge_batches"].__func__
    original = getattr(original, "__rlinf_pangu_original__", original)
    pieces = [_grpo_piece(3, 1), _grpo_piece(5, 2)]
    with pytest.raises(ValueError, match="Unsupported batch key type"):  # RLinf's own merge: the control
        original(pieces)
    merged = rp.make_merge_batches(original)(pieces)
    assert merged["returns"] is None and merged["answers"] == ["a1"] * 3 + ["a2"] * 5
    for key in ("input_ids", "advantages"):
        assert torch.equal(merged[key], torch.cat([p[key] for p in pieces]))


def test_a_key_missing_in_only_some_pieces_is_still_refused():
    from rlinf.data.io_struct import RolloutResult

    original = RolloutResult.__dict__["merge_batches"].__func__
    original = getattr(original, "__rlinf_pangu_original__", original)
    pieces = [_grpo_piece(2, 1), {**_grpo_piece(2, 2), "returns": torch.zeros(2, 1)}]
    with pytest.raises(ValueError, match="Unsupported batch key type"):
        rp.make_merge_batches(original)(pieces)


def test_register_installs_the_merge_on_rlinfs_class():
    code = (
        "import rlinf_pangu\nrlinf_pangu.register()\n"
        "from rlinf.data.io_struct import RolloutResult\n"
        "print(hasattr(RolloutResult.merge_batches, '__rlinf_pangu_original__'))\n"
    )
    assert _fresh(code) == "True"


# --- the sync path log line (rlinf.MegatronActor:rollout-sync-setup) ----------------------


def _actor(sync_mode: str, placement_mode: str, device: str = "cpu") -> SimpleNamespace:
    from rlinf.utils.placement import PlacementMode, RolloutSyncMode

    param = torch.nn.Parameter(torch.zeros(1, device=device))
    return SimpleNamespace(
        rollout_sync_mode=RolloutSyncMode[sync_mode], placement_mode=PlacementMode[placement_mode],
        model=[SimpleNamespace(parameters=lambda: iter([param]))], _weight_dst_rank_in_rollout=[(0, 0)],
    )


def test_the_log_says_disaggregated_buckets_go_over_the_collective():
    line = rp.sync_path(_actor("DISAGGREGATED", "DISAGGREGATED"))
    assert line == ("weight-sync path: placement DISAGGREGATED, rollout sync DISAGGREGATED: buckets go over the collective "
                    "(gloo send/recv) to rollout rank(s) (dp, tp) [(0, 0)]")


def test_the_log_says_colocated_buckets_go_as_ipc_handles():
    line = rp.sync_path(_actor("COLLOCATED", "COLLOCATED"))
    assert "placement COLLOCATED, rollout sync COLLOCATED: buckets go as CUDA IPC handles" in line


def test_the_log_tells_the_cpu_modes_forced_collective_from_a_disaggregated_placement():
    """The colocated CPU mode sends over the collective too (driver_placement forces it): the
    line names the placement, so a log can tell the two apart."""
    assert "placement COLLOCATED, rollout sync DISAGGREGATED: buckets go over the collective" in rp.sync_path(
        _actor("DISAGGREGATED", "COLLOCATED"))


def test_the_rollout_sync_setup_logs_the_path(caplog):
    import logging

    actor = _actor("DISAGGREGATED", "DISAGGREGATED")
    actor.cfg = SimpleNamespace(actor={}, rollout=SimpleNamespace(get=lambda k, d=None: d, model=SimpleNamespace(model_path="/nowhere")))

    def init_worker_customize(self):
        self.rollout_weights_reshard = SimpleNamespace(config=None, bucket_capacity=1 << 20)

    with caplog.at_level(logging.INFO, logger="rlinf_pangu.patches"):
        rp.make_rollout_sync_setup(init_worker_customize)(actor)
    assert any("buckets go over the collective (gloo send/recv)" in r.getMessage() for r in caplog.records)


# --- the CPU mode's inference worker ----------------------------------------------------


def test_cpu_mode_runs_the_inference_workers_own_tasks_in_the_device_mode():
    """RLinf's MegatronActorInference defines init_worker and sync_model_from_actor itself: the
    actor's CPU-mode wrappers do not reach them, the inference hook does."""
    code = (
        "import json\n"
        "import rlinf_pangu\nrlinf_pangu.register()\n"
        "from rlinf_pangu.patches import cpu\n"
        "import rlinf.workers.inference.megatron_inference_worker as mi\n"
        "before = {n: getattr(mi.MegatronActorInference.__dict__[n], '__rlinf_pangu_cpu__', False) for n in ('init_worker', 'sync_model_from_actor')}\n"
        "cpu._megatron_inference(mi)\n"
        "after = {n: getattr(mi.MegatronActorInference.__dict__[n], '__rlinf_pangu_cpu__', False) for n in ('init_worker', 'sync_model_from_actor')}\n"
        "print(json.dumps([before, after]))\n"
    )
    before, after = json.loads(_fresh(code))
    assert before == {"init_worker": False, "sync_model_from_actor": False}
    assert after == {"init_worker": True, "sync_model_from_actor": True}


def test_cpu_mode_counts_cpu_slots_in_every_placement_parse():
    """RLinf parses the placement in the driver and again inside workers (its reward worker builds
    a HybridComponentPlacement against Cluster() in its own process); in a CPU-mode process every
    parse counts CPU slots, never the one-node cluster (where rank 1 does not exist)."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples/math/pangu-tiny-grpo-megatron-disagg-cpu.yaml"
    code = (
        "import json, os\n"
        "os.environ['RLINF_PANGU_DEVICE'] = 'cpu'\n"
        "import rlinf_pangu\nrlinf_pangu.register()\n"
        "from rlinf_pangu import config as pc\n"
        f"cfg = pc.compose({str(example)!r}, ['rollout.model.model_path=/nowhere'])\n"
        "from rlinf.utils.placement import HybridComponentPlacement, ModelParallelComponentPlacement\n"
        "class OneCpuNode:\n"
        "    num_accelerators = 0\n"
        "    def get_node_group(self, label=None):\n"
        "        raise AssertionError('parsed against the one-node cluster')\n"
        "h = HybridComponentPlacement(cfg, OneCpuNode())\n"
        "m = ModelParallelComponentPlacement(cfg, OneCpuNode())\n"
        "print(json.dumps([h.get_hardware_ranks('inference'), m.placement_mode.name]))\n"
    )
    assert json.loads(_fresh(code)) == [[2], "DISAGGREGATED"]

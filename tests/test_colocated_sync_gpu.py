"""One GPU: the colocated hand-over exactly as the GPU examples run it.

``examples/math/pangu-tiny-grpo-megatron.yaml`` puts the Megatron actor, the SGLang rollout and the
weight sync on one GPU. There SGLang runs with CUDA graphs and therefore (RLinf ties the two) its
memory saver on: after start-up and before every training phase the rollout releases its memory,
and the sync resumes it, then loads every tensor of RLinf's buckets, sent as CUDA IPC handles of the
actor's packed buffers, then flushes the radix cache. The CPU end-to-end test runs the sync with the
memory saver off; this is the test of the path users run (sync_testlib.colocated_rank has the steps):

* engine arguments derived from the example's composed config the way RLinf's SGLang worker derives
  them (checked on the CPU by test_colocated_engine_settings_follow_the_example, which runs anywhere);
* the actor at the example's precision (bf16) and bucket capacity, packing decided by the project's
  own rollout-sync setup;
* ``initial``: the first sync replaces SGLang's random start weights;
* ``after`` one optimizer step and the second sync, judged against ``floor`` (the same post-step
  weights loaded into SGLang independently of the sync) on the mean and on the worst token, and
  SGLang against itself across the two loads (``sync_vs_floor``);
* negative control ``stale``: SGLang still serving the weights from before the step.

Margins: sync_testlib.POST_SYNC_* (measured spreads written next to them). The figures go to
``$RLINF_PANGU_GPU_OUT/colocated_sync.json`` when that variable is set (``make test-gpu`` sets it).
"""

from __future__ import annotations

import pytest
import torch

import sync_testlib as L

SEQS, LEN = 4, 48  # 188 log-probs; the example's sequences are 25 tokens
LR = 2e-2  # the multi-GPU test's step size on the same tiny shapes: stale mean exp|d| ~3.2 there

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def example_ckpt(tmp_path_factory):
    """The example's model: the tiny preset in bf16 (its answer prior only changes digit rows of lm_head)."""
    from rlinf_pangu.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("colocated") / "pangu-tiny", preset_name="tiny", dtype="bf16", seed=0)


def test_colocated_engine_settings_follow_the_example(tmp_path):
    """What the GPU test below starts, checked on any host: the example's settings, the memory
    saver on, CUDA graphs on, random start weights, and buckets the actor packs."""
    (tmp_path / "config.json").write_text('{"architectures": ["PanguEmbeddedForCausalLM"]}')
    cfg = L.example_config(tmp_path)
    kw = L.rollout_engine_kwargs(cfg)
    assert kw["enable_memory_saver"] is True and kw["disable_cuda_graph"] is False
    assert kw["load_format"] == "dummy" and kw["dtype"] == "bfloat16" and kw["tp_size"] == 1
    assert kw["mem_fraction_static"] == cfg.rollout.gpu_memory_utilization
    from rlinf_pangu.packed_bucket import rollout_reads_packed

    assert rollout_reads_packed(cfg.rollout.rollout_backend, tmp_path)[0]
    assert cfg.cluster.device == "gpu" and cfg.actor.model.precision == "bf16"


def _inputs():
    from rlinf_pangu.presets import preset

    vocab = preset("tiny")["vocab_size"]
    C = L._bench_common()
    return C.random_tokens(SEQS, LEN, vocab, seed=21), C.random_tokens(SEQS, LEN, vocab, seed=22)


@pytest.mark.slow
def test_colocated_handover_dry_run_on_cpu(tmp_path):
    """Everything of the GPU test but CUDA, on this host: the example's config, the actor's reshard
    and packing decision, both syncs through SGLang's update path and the project's loader, the
    independent floor load, the judge and the stale control (SGLang on the CPU in fp32, the memory
    saver off: sync_testlib.CPU_DRY_RUN_ENGINE). So the GPU run can only fail on what needs a GPU."""
    from harness import run_ranks

    from rlinf_pangu.make_checkpoint import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "pangu-tiny", preset_name="tiny", dtype="fp32", seed=0, num_hidden_layers=2)
    seqs, step = _inputs()
    res = run_ranks(L.colocated_rank, 1, str(ckpt), seqs[:2], step[:2], LR, "cpu", timeout=900, grace=30, daemon=False)[0]
    for k in ("initial", "stale", "after", "floor", "sync_vs_floor"):
        print(f"[colocated dry run] {res[k]}")
    assert res["device"] == "cpu" and res["sync_1"]["packed"] and res["sync_2"]["packed"]
    assert res["bucket_capacity"] == 2 * 2**30  # the example's actor.sync_bucket_capacity
    assert not _problems(res), _problems(res)
    assert res["sync_vs_floor"].max_abs == 0.0  # the same fp32 weights by both loads: identical


@pytest.fixture(scope="module")
def colocated(example_ckpt) -> dict:
    from harness import run_ranks

    seqs, step = _inputs()
    res = run_ranks(L.colocated_rank, 1, str(example_ckpt), seqs, step, LR, timeout=900, grace=30, gpus=True)[0]
    summary = {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in res.items()}
    problems = _problems(res)
    L.record_gpu_result("colocated_sync", {
        "what": "colocated hand-over on one GPU as examples/math/pangu-tiny-grpo-megatron.yaml runs it: SGLang memory "
                "saver and CUDA graphs on, packed buckets over CUDA IPC; SGLang's log-probs vs the actor's recompute",
        **summary, "margins": {"mean_exp": L.POST_SYNC_MEAN_EXP_MARGIN, "worst": L.POST_SYNC_WORST_MARGIN},
        "floor_ceiling": _ceiling(res), "problems": problems, "pass": not problems,
    })
    for k in ("initial", "stale", "after", "floor", "sync_vs_floor"):
        print(f"[colocated] {res[k]}")
    return res


#: Both sides compute bf16 logits here, as the example does (the actor's output layer is bf16, SGLang
#: runs without its fp32 LM head), so the floor is judged by the bf16-logits ceiling; in the fp32 CPU
#: dry run the stricter one applies.
def _ceiling(res: dict) -> tuple[float, float]:
    return L.FLOOR_CEILING_BF16_LOGITS if res["device"] == "cuda" else L.FLOOR_CEILING


def _problems(res: dict) -> list[str]:
    return (L.judge_post_sync(res["after"], res["floor"], _ceiling(res)) + L.judge_same_weights(res["sync_vs_floor"])
            + L.judge_control(res["stale"], res["floor"], "stale weights"))


@pytest.mark.gpu
@gpu
def test_colocated_sync_sends_packed_buckets_with_the_memory_saver_on(colocated):
    assert colocated["engine"]["enable_memory_saver"] and not colocated["engine"]["disable_cuda_graph"]
    assert colocated["sync_1"]["packed"] and colocated["sync_2"]["packed"]


@pytest.mark.gpu
@gpu
def test_first_sync_replaces_sglangs_random_start_weights(colocated):
    """Before the first sync SGLang serves random ("dummy") weights; after it, bf16 noise only."""
    d, (mean_exp, worst) = colocated["initial"], _ceiling(colocated)
    assert d.finite and d.mean_exp <= mean_exp and d.max_abs <= worst, d


@pytest.mark.gpu
@gpu
def test_colocated_sync_after_a_step_matches_the_actor_on_mean_and_worst_token(colocated):
    problems = (L.judge_post_sync(colocated["after"], colocated["floor"], _ceiling(colocated))
                + L.judge_same_weights(colocated["sync_vs_floor"]))
    assert not problems, problems


@pytest.mark.gpu
@gpu
def test_negative_control_stale_weights_fail_the_check(colocated):
    assert not L.judge_control(colocated["stale"], colocated["floor"], "stale weights")
    assert L.judge_post_sync(colocated["stale"], colocated["floor"], _ceiling(colocated)), "the check would pass stale weights"

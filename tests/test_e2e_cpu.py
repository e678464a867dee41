"""The whole GRPO loop on this CPU host, in fp32: ``python -m rlinf.train`` on the tiny CPU example.

Real components throughout: RLinf's driver flow and ReasoningRunner, Ray workers, the Megatron
actor (gloo), RLinf's SGLang engine on CPU serving the external Pangu class, the Megatron ->
SGLang weight sync before each step, and the pangu_math reward. Two runs (module fixtures):

* the run under test (``STEPS`` steps), checked for:
  - the post-sync gate: after every sync, the largest |SGLang log-prob - actor recompute| over
    all response tokens of the step is <= 1e-4 (``rollout/logprob_gap_max``, which the project
    adds to RLinf's rollout metrics). Tolerance: both sides are fp32 (the CPU mode) on the same
    synced weights; they differ only in kernels (SGLang's torch_native SDPA and separate q/k/v
    vs Megatron's fused QKV and its own attention, the order of the LM head's 128-term dot
    products and of the 153k-term log-sum-exp). fp32 keeps 24 bits (relative 6e-8), and the
    error is relative to the logits, which the answer prior puts at ~12 nats for the digits:
    measured max gaps of 5e-6..2e-5 in steps 1-2 and up to 7e-5 by step 10 of the demo as
    training grows the logits (docs/runs/cpu-demo-2026-12-07). 1e-4 holds the first steps with
    a 5x margin and is four orders below what an unsynced or mis-laid weight gives (nats);
  - step 1's PPO KL is exactly 0: the training forward of the first (only) minibatch sees the
    weights the log-probs were recomputed with, in the same micro-batches, so every ratio is 1;
  - the actor's weights changed (the Megatron checkpoint after the last step differs from the
    converted start checkpoint), every step is reported, each reward is the verifier's verdict
    on the answer part, and the console stays quiet while train.log holds what upstream printed;
* the negative control (1 step, ``RLINF_PANGU_CPU_SKIP_SYNC=1``: SGLang receives the sync and loads none of it, so
  SGLang serves its random ``load_format=dummy`` weights): the same gate must fail.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from e2e_run import EXAMPLES, ROOT, Run, assert_most_tensors_changed, megatron_state, metrics, run_training
from rlinf_pangu.patches.cpu import ENV_SKIP_SYNC

CONFIG = EXAMPLES / "pangu-tiny-grpo-megatron-cpu.yaml"
STEPS = 2
#: max |SGLang log-prob - actor recompute| after a sync, fp32 both sides (module docstring).
GATE = 1e-4
#: A successful run's console: set-up line, table header + a row per step, the outputs.
CONSOLE_LINES = 10 + STEPS

pytestmark = [pytest.mark.slow, pytest.mark.whole_run]


def _train(out: Path, steps: int, extra_env: dict[str, str] | None = None) -> Run:
    return run_training(CONFIG, out, "pangu-tiny-grpo-cpu", steps, extra_env=extra_env, plot=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("e2e"), STEPS)


@pytest.fixture(scope="module")
def unsynced_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("e2e-nosync"), 1, {ENV_SKIP_SYNC: "1"})


def post_sync_gate(rows: list[dict]) -> list[str]:
    """Why the post-sync gate fails on these steps ([] when it passes); non-finite fails."""
    failures = []
    for r in rows:
        gap = r.get("rollout/logprob_gap_max")
        if gap is None or not math.isfinite(gap) or gap > GATE:
            failures.append(f"step {r['step']}: max |SGLang - recompute| log-prob = {gap} > {GATE}")
    return failures


def test_sglang_logprobs_equal_the_actors_after_every_sync(run):
    rows = metrics(run["dir"])
    assert len(rows) == STEPS
    assert post_sync_gate(rows) == [], rows
    print("[e2e] max log-prob gap per step:", [r["rollout/logprob_gap_max"] for r in rows], file=sys.stderr)


def test_the_gate_fails_when_the_sync_is_skipped(unsynced_run):
    assert f"{ENV_SKIP_SYNC}=1, weight sync skipped" in unsynced_run["log"]
    rows = metrics(unsynced_run["dir"])
    assert rows and post_sync_gate(rows), rows  # SGLang's random start weights: gaps of nats
    assert rows[0]["rollout/logprob_gap_max"] > 1.0, rows


def test_step_1_ppo_kl_is_exactly_zero(run):
    first = metrics(run["dir"])[0]
    assert first["actor/training/actor/approx_kl"] == 0.0, first


def test_the_run_is_fp32_end_to_end(run):
    """Megatron params, SGLang's dtype and hence the synced tensors (the reshard dtype is
    Megatron's params_dtype): the resolved config and what SGLang was started with."""
    import yaml

    cfg = yaml.safe_load((run["dir"] / "config.resolved.yaml").read_text())
    assert cfg["actor"]["model"]["precision"] == "fp32" and cfg["rollout"]["model"]["precision"] == "fp32"
    assert not cfg["actor"]["optim"]["bf16"] and not cfg["actor"]["optim"]["fp16"]
    assert "dtype='float32'" in run["log"] and "dtype='bfloat16'" not in run["log"]  # SGLang's ServerArgs
    assert json.loads((run["ckpt"] / "config.json").read_text())["torch_dtype"] == "float32"  # the factory's


def test_every_step_is_reported(run):
    rows = metrics(run["dir"])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        for key in ("rollout/reward_scores", "rollout/response_length", "time/rollout", "time/actor/training", "time/sync_weights"):
            assert key in r, (key, sorted(r))
    assert (run["dir"] / "metrics.png").stat().st_size > 10_000


def test_the_console_is_quiet_and_the_log_keeps_the_rest(run):
    lines = run["console"].splitlines()
    assert len(lines) <= CONSOLE_LINES, "\n".join(lines)
    assert sum(ln.startswith("[grpo]") for ln in lines) == STEPS + 1  # header + one row per step
    assert any("setup:" in ln and "ready in" in ln for ln in lines)
    assert "train.log" in run["console"]
    assert "ServerArgs" not in run["console"] and "ServerArgs" in run["log"]  # SGLang's dump, in the log
    assert "[grpo]" in run["log"]


def test_sync_bucket_capacity_reaches_the_actor(run):
    """configs/rlinf sets actor.sync_bucket_capacity; RLinf's Megatron actor uses it (its log line)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs/rlinf/grpo_megatron_sglang.yaml").read_text())
    capacity = cfg["actor"]["sync_bucket_capacity"]
    assert capacity != 128 * 2**20, "the config must differ from RLinf's default, or this test proves nothing"
    assert f"weight-sync bucket capacity: {capacity // 2**20} MiB" in run["log"]


def test_the_actor_sends_packed_buckets_to_sglangs_pangu_class(run):
    """The rollout serves rlinf_pangu's SGLang class, so RLinf's actor sends each sync bucket as one
    packed buffer (rlinf_pangu.packed_bucket); the same run's post-sync gate is checked above."""
    assert "weight-sync buckets: one packed buffer each" in run["log"]


def test_actor_weights_changed(run):
    start = megatron_state(run["dir"] / "converted_ckpts" / "actor")
    after = megatron_state(run["dir"] / "checkpoints" / f"global_step_{STEPS}" / "actor")
    assert_most_tensors_changed(start, after, at_least=10)


def test_reward_is_graded_on_the_answer_part(run):
    import rlinf_pangu

    rlinf_pangu.register()  # RLinf's verifier imports latex2sympy2 (patched by register)
    from rlinf_pangu.reward import PanguMathReward, answer_for_grading

    samples = [json.loads(x) for x in (run["dir"] / "reward_samples.jsonl").read_text().splitlines() if x.strip()]
    assert len(samples) >= STEPS * 16
    reward = PanguMathReward({"reward_min_val": 0.0, "reward_max_val": 1.0})
    verdicts = reward.grade([s["completion"] for s in samples], [s["reference"] for s in samples])
    for s, ok in zip(samples, verdicts):
        assert s["reward"] == (1.0 if ok else 0.0)
        if answer_for_grading(s["completion"]) is None:  # thinking never closed: no answer, no reward
            assert s["reward"] == 0.0

"""The whole GRPO loop on this CPU host: ``python -m rlinf.train`` on the tiny CPU example, 2 steps.

Real components throughout: RLinf's driver flow and ReasoningRunner, Ray workers, the Megatron
actor (gloo), RLinf's SGLang engine on CPU serving the external Pangu class, the Megatron ->
SGLang weight sync before each step, and the pangu_math reward. One run (module fixture), three
checks:

* the actor's weights changed: the Megatron checkpoint RLinf saves after step 2 differs from the
  converted start checkpoint;
* after each sync, SGLang's sampled-token log-probs match the actor's recomputed ones (the
  ``rollout/logprob_gap_*`` metric the project adds to RLinf's rollout metrics). Tolerance: both
  sides run bf16 (RLinf's Megatron path accepts only fp16/bf16; the fp32 parity check is the sync
  test's), bf16 keeps 8 significant bits (relative 2^-8 = 0.4%), and the two engines round at
  different places (fused QKV vs separate, torch_native SDPA vs Megatron's attention, logits
  and softmax order). Through 6 layers that moves the ~N(0,1) logits by a few 1e-2, so the
  mean gap must stay below 0.05 nats and the worst token below 0.5 nats. Not synced (SGLang's
  own random "dummy" start weights) or a wrong layout gives gaps of several nats: the negative
  control is that SGLang starts from load_format=dummy, so step 1 passes only if the sync worked;
* each reward equals the math verifier's verdict on the answer part (after [unused17]) of that
  completion, recomputed here from the samples the reward workers logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "math" / "pangu-tiny-grpo-megatron-cpu.yaml"
STEPS = 2

pytestmark = pytest.mark.slow


def _failure_summary(log: str) -> str:
    """The lines that say why a run failed (progress bars bury them in the log's tail)."""
    import re

    lines = [ln for ln in log.replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln]
    causes = [ln for ln in lines if re.search(r"Error|Exception|Traceback|OOM|killed|Failed", ln) and "Ignore import error" not in ln]
    return "\n".join(["causes:", *causes[-40:], "", "tail:", *lines[-40:]])[-8000:]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    ckpt = out / "ckpt"
    cmd = [
        sys.executable, "-m", "rlinf.train", "--config", str(CONFIG),
        f"runner.max_steps={STEPS}", f"runner.save_interval={STEPS}", f"runner.output_dir={out}",
        f"rollout.model.model_path={ckpt}", "pangu.make_checkpoint.enabled=true", "pangu.report.plot=true",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RLINF_"))}
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=ROOT, env=env)
    elapsed = time.monotonic() - t0
    log = p.stdout + p.stderr
    (out / "driver.log").write_text(log)
    assert p.returncode == 0, _failure_summary(log)
    run_dir = out / "pangu-tiny-grpo-cpu"
    print(f"\n[e2e] {STEPS} GRPO steps incl. start-up: {elapsed:.0f} s", file=sys.stderr)
    return {"dir": run_dir, "ckpt": ckpt, "log": log}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _megatron_state(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.rglob("model_optim_rng.pt"))
    assert files, f"no Megatron checkpoint under {path}"
    sd = torch.load(files[0], map_location="cpu", weights_only=False)["model"]
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}


def test_every_step_is_reported(run):
    rows = _metrics(run["dir"])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        for key in ("rollout/reward_scores", "rollout/response_length", "time/rollout", "time/actor/training", "time/sync_weights"):
            assert key in r, (key, sorted(r))
    assert (run["dir"] / "metrics.png").stat().st_size > 10_000
    assert "[grpo]  step" in run["log"] or "[grpo] step" in run["log"]


def test_sync_bucket_capacity_reaches_the_actor(run):
    """configs/rlinf sets actor.sync_bucket_capacity; RLinf's Megatron actor uses it (its log line)."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/rlinf/grpo_megatron_sglang.yaml").read_text())
    capacity = cfg["actor"]["sync_bucket_capacity"]
    assert capacity != 128 * 2**20, "the config must differ from RLinf's default, or this test proves nothing"
    assert f"weight-sync bucket capacity: {capacity // 2**20} MiB" in run["log"]


def test_the_actor_sends_packed_buckets_to_sglangs_pangu_class(run):
    """The rollout serves rlinf_pangu's SGLang class, so RLinf's actor sends each sync bucket as one
    packed buffer (rlinf_pangu.packed_bucket); the same run's post-sync logprob gap is checked below."""
    assert "weight-sync buckets: one packed buffer each" in run["log"]


def test_actor_weights_changed(run):
    start = _megatron_state(run["dir"] / "converted_ckpts" / "actor")
    after = _megatron_state(run["dir"] / "checkpoints" / f"global_step_{STEPS}" / "actor")
    common = sorted(set(start) & set(after))
    assert len(common) >= 10, (sorted(start)[:5], sorted(after)[:5])
    changed = [k for k in common if not torch.equal(start[k].float(), after[k].float())]
    assert len(changed) > len(common) // 2, f"only {len(changed)}/{len(common)} tensors changed"


def test_sglang_logprobs_match_actor_after_sync(run):
    for r in _metrics(run["dir"]):
        assert r["rollout/logprob_gap_mean"] < 0.05, r
        assert r["rollout/logprob_gap_max"] < 0.5, r


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

"""A run's whole life on this CPU host: ``python -m rlinf.train`` on the tiny CPU example saving every
step, SIGKILLed while it writes step 3's checkpoint, resumed with ``runner.resume_dir=auto``, run to
step 4, and its last checkpoint exported to HF.

Real components throughout (the driver, Ray, RLinf's runner and Megatron actor, SGLang on CPU, the
weight sync); the kill is a real SIGKILL of the driver and every process it started. Two runs, one
module fixture, the checks:

* the kill during the save left the previous complete checkpoint and a ``.partial-`` directory no
  resume looks at; ``auto`` picks step 2, before Ray starts;
* the resumed actor holds exactly the state saved at step 2 (each rank's digest of weights,
  optimizer state and LR schedule, taken when it saved and again after it loaded);
* the step counter and the data position continue: the resumed run saves steps 3 and 4 (data
  loader at 3 and 4 batches) and step 3 trains on the prompts the killed run drew for its step 3;
* metrics.jsonl continues the curve: steps 1-2 as the killed run wrote them, then 3 and 4;
* SGLang serves the resumed weights before the first rollout: the rollout-vs-actor log-prob gap
  at step 3 is at the level of steps 1-2 (not the several nats of unsynced weights);
* the exported step-4 checkpoint equals the actor's live weights bit for bit (the digest the actor
  recorded when it saved), loads in transformers, and greedy-decodes as the actor does.

The refusals of bad ``resume_dir`` values before Ray starts are in tests/test_run_checkpoint.py,
except the corrupt copy of this run's checkpoint, checked here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from e2e_run import EXAMPLES, ROOT, clean_env, kill_tree, metrics, train_cmd

CONFIG = EXAMPLES / "pangu-tiny-grpo-megatron-cpu.yaml"
EXPERIMENT = "resume-life"
STEPS = 4
KILL_WAIT_S = 1800

pytestmark = [pytest.mark.slow, pytest.mark.whole_run]


def _cmd(out: Path, model: Path, *overrides: str) -> list[str]:
    return train_cmd(CONFIG, out, STEPS, f"runner.experiment_name={EXPERIMENT}", *overrides, model=model,
                     save_interval=1)


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {path} appeared:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def _samples(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "reward_samples.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    from rlinf_pangu import run_checkpoint as rc

    out = tmp_path_factory.mktemp("life")
    model = out / "model"
    run_dir = out / EXPERIMENT
    ckpts = run_dir / "checkpoints"
    info: dict = {"out": out, "model": model, "run_dir": run_dir, "ckpts": ckpts}

    # Run A: SIGKILL while it writes step 3's checkpoint (the staging directory exists).
    log_a = out / "run_a.log"
    t0 = time.monotonic()
    with open(log_a, "w") as log:
        proc = subprocess.Popen(_cmd(out, model), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=clean_env(),
                                start_new_session=True)
    try:
        _wait_for(rc.partial_dir(rc.step_dir(ckpts, 3)), proc, log_a, KILL_WAIT_S)
    finally:
        kill_tree(proc)
    info["a_seconds"] = time.monotonic() - t0
    info["after_kill"] = sorted(p.name for p in ckpts.iterdir())
    info["partial_files"] = sorted(str(p.relative_to(ckpts)) for p in rc.partial_dir(rc.step_dir(ckpts, 3)).rglob("*"))
    info["metrics_a"] = (run_dir / "metrics.jsonl").read_text()
    info["samples_a"] = _samples(run_dir)

    # Run B: the same command, resumed.
    t0 = time.monotonic()
    p = subprocess.run(_cmd(out, model, "runner.resume_dir=auto"), capture_output=True, text=True, timeout=3000,
                       cwd=ROOT, env=clean_env())
    info["b_seconds"] = time.monotonic() - t0
    (out / "run_b.log").write_text(p.stdout + p.stderr)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    info["log_b"] = p.stdout + p.stderr + (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else p.stdout + p.stderr
    info["samples_b"] = _samples(run_dir)[len(info["samples_a"]):]
    print(f"\n[resume] run A (to the kill) {info['a_seconds']:.0f} s, run B (resume, 2 steps) {info['b_seconds']:.0f} s",
          file=sys.stderr)
    return info


# --------------------------------------------------------------------------------------
# The kill and the resume
# --------------------------------------------------------------------------------------


def test_a_kill_during_a_save_leaves_the_previous_checkpoints_complete(life):
    from rlinf_pangu import run_checkpoint as rc

    assert life["after_kill"] == [".partial-global_step_3", "global_step_1", "global_step_2"], life["after_kill"]
    assert rc.MARKER not in life["partial_files"], "the kill came after the save had finished"


def test_auto_resumes_from_the_last_complete_checkpoint(life):
    want = life["ckpts"] / "global_step_2"
    assert f"resuming from {want} (step 2)" in life["log_b"]
    assert "Setting global step to 2" in life["log_b"]


def test_the_resumed_console_counts_only_the_steps_it_trained(life):
    assert "[rlinf-pangu] 2 GRPO steps (3-4, resumed at step 2) in " in life["log_b"]


def test_the_resumed_actor_holds_exactly_the_saved_state(life):
    from rlinf_pangu import run_checkpoint as rc

    saved = rc.read(life["ckpts"] / "global_step_2").digests("actor")
    assert len(saved) == 1
    line = next((ln for ln in life["log_b"].splitlines() if "loaded exactly the weights, optimizer state" in ln), None)
    assert line is not None, "the actor did not verify the state it loaded"
    assert f"weights {saved[0]['weights'][:12]}" in line and f"optimizer {saved[0]['optimizer'][:12]}" in line, line


def test_the_step_counter_and_data_position_continue(life):
    from rlinf_pangu import run_checkpoint as rc

    ckpts = life["ckpts"]
    assert sorted(p.name for p in ckpts.iterdir()) == [f"global_step_{s}" for s in range(1, STEPS + 1)]
    for step in range(1, STEPS + 1):
        assert rc.read(ckpts / f"global_step_{step}").step == step
        assert (ckpts / f"global_step_{step}" / "actor" / "latest_checkpointed_iteration.txt").read_text() == str(step)
    # the killed run trained step 3 before the kill: the resumed step 3 drew the same prompts
    per_step = len(life["samples_b"]) // (STEPS - 2)
    killed_step3 = [s["reference"] for s in life["samples_a"][2 * per_step: 3 * per_step]]
    resumed_step3 = [s["reference"] for s in life["samples_b"][:per_step]]
    assert len(killed_step3) == per_step and sorted(map(str, killed_step3)) == sorted(map(str, resumed_step3))


def test_metrics_continue_the_curve(life):
    rows = metrics(life["run_dir"])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    before = {json.loads(x)["step"]: json.loads(x) for x in life["metrics_a"].splitlines() if x.strip()}
    assert {1, 2} <= set(before)
    assert rows[0] == before[1] and rows[1] == before[2]
    for r in rows[2:]:
        assert "rollout/reward_scores" in r and "time/actor/training" in r


def test_sglang_serves_the_resumed_weights_before_the_first_resumed_rollout(life):
    rows = {r["step"]: r for r in metrics(life["run_dir"])}
    before = max(rows[s]["rollout/logprob_gap_max"] for s in (1, 2))
    # Same bound as before the crash: the engines differ by rounding only (bf16 or fp32, see
    # test_e2e_cpu). SGLang still serving the pre-crash or its random start weights would be off
    # by several nats, the converted start weights by the two steps' updates.
    for s in (3, 4):
        assert rows[s]["rollout/logprob_gap_mean"] < 0.05, rows[s]
        assert rows[s]["rollout/logprob_gap_max"] <= max(10 * before, 1e-3), (rows[s], before)


def test_a_corrupt_copy_of_the_checkpoint_is_refused_before_ray_starts(life, tmp_path):
    bad = tmp_path / "checkpoints" / "global_step_2"
    shutil.copytree(life["ckpts"] / "global_step_2", bad)
    victim = bad / "actor" / "iter_0000002" / "mp_rank_00" / "distrib_optim.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = tmp_path / "out"
    t0 = time.monotonic()
    p = subprocess.run(_cmd(out, life["model"], f"runner.resume_dir={bad}"), capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env=clean_env())
    said = p.stdout + p.stderr
    assert p.returncode == 2, said[-3000:]
    assert f"config error: runner.resume_dir: {victim}:" in said and "truncated" in said, said[-3000:]
    assert not (out / EXPERIMENT / "ray").exists()  # the driver links Ray's temp dir there when it starts it
    print(f"\n[resume] refused in {time.monotonic() - t0:.0f} s", file=sys.stderr)


# --------------------------------------------------------------------------------------
# Export of the run's last checkpoint (TP1)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(life, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    p = subprocess.run([sys.executable, "-m", "ckpt_convertor", "megatron-to-hf", "--megatron",
                        str(life["ckpts"] / f"global_step_{STEPS}"), "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return out


def test_the_export_equals_the_actors_live_weights_bit_for_bit(life, export):
    import json as _json

    from safetensors.torch import load_file

    from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard
    from rlinf_pangu.run_checkpoint import read, weights_digest
    from ckpt_convertor.megatron_io import load_rank_file

    ckpt = read(life["ckpts"] / f"global_step_{STEPS}")
    state = {}
    for f in export.glob("*.safetensors"):
        state.update(load_file(f))
    dims = PanguDims.from_hf_config(_json.loads((export / "config.json").read_text()))
    shard = hf_to_megatron_shard(state, dims, 0, 1, list(range(dims.num_hidden_layers)), first=True, last=True)
    saved = load_rank_file(ckpt.path / "actor" / "iter_0000004" / "mp_rank_00" / "model_optim_rng.pt")["model"]
    order = [n for n in saved if not n.endswith("_extra_state")]
    assert set(order) == set(shard), sorted(set(order) ^ set(shard))[:5]
    assert weights_digest([[(n, shard[n]) for n in order]]) == ckpt.digests("actor")[0]["weights"]
    assert all(torch.equal(shard[n], saved[n]) for n in order)


def test_the_export_loads_in_transformers_and_decodes_greedily_as_the_actor(life, export):
    import harness
    import run_ckpt_ranks

    import rlinf_pangu

    rlinf_pangu.register_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(export))
    assert tok.eos_token_id == 45892  # the project's tokenizer files came along
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True, tokenize=False)
    prompt = tok.encode(text, add_special_tokens=False)
    hf = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor([prompt])
        ref = hf.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)[0, len(prompt):].tolist()
    rank_file = life["ckpts"] / f"global_step_{STEPS}" / "actor" / "iter_0000004" / "mp_rank_00" / "model_optim_rng.pt"
    (actor,) = harness.run_ranks(run_ckpt_ranks.greedy_from_rank_file, 1, str(export), str(rank_file), prompt, 6, timeout=600)
    assert actor == ref

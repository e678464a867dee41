"""The GRPO-step benchmark end to end in the CPU mode (``--preset tiny --device cpu``): the test that
it is wired right, not a measurement.

``benchmarks/grpo_step.py`` runs RLinf's real loop (``python -m rlinf.train``) twice: Pangu on the
CPU example, and the Qwen2 baseline through RLinf's own converter, megatron-core's local GPT spec,
RLinf's TransformFuncs sync and SGLang's own Qwen2 class. One warm-up and one measured step each
(~4 min on a free 2-core host). Checked on the JSON it writes:

* both runs finished every step, with the same workload, dimensions and a fixed response length;
* each step's phases and ``other`` add up to RLinf's step time, and the trace saw the phases
  (rollout, log-prob recompute, training, the weight sync);
* the sync is right for both models: the largest |SGLang log-prob - actor recompute| over all
  response tokens is <= 1e-4 (fp32 on both sides, as tests/test_e2e_cpu.py's gate: kernels differ,
  weights are the same; a norm or bias lost by a converter or the sync moves it by nats, and the
  baseline checkpoint's norms and biases are not 1/0 so such a loss cannot hide);
* the ratios and the baseline's patches are reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: max |SGLang log-prob - recompute| after a sync, fp32 both sides (tests/test_e2e_cpu.py's GATE)
GATE = 1e-4

pytestmark = [pytest.mark.slow, pytest.mark.whole_run]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("grpo_step")
    cmd = [sys.executable, "benchmarks/grpo_step.py", "--preset", "tiny", "--device", "cpu", "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    path = out / "grpo_step_tiny_cpu.json"
    assert path.is_file(), (p.stdout + p.stderr)[-4000:]
    data = json.loads(path.read_text())
    assert p.returncode == 0, json.dumps({a: {k: data.get(a, {}).get(k) for k in ("returncode", "timed_out")}
                                          for a in ("pangu", "baseline")}) + (p.stdout + p.stderr)[-3000:]
    assert (out / data["archive"]).is_file()
    data["_files_written"] = sorted(f.name for f in out.iterdir())
    return data


@pytest.mark.parametrize("arm", ["pangu", "baseline"])
def test_each_run_is_plotted_after_it(report, arm):
    png = f"grpo_step_tiny_cpu_{arm}.png"
    assert report[arm]["plot"] == png and png in report["_files_written"]


@pytest.mark.parametrize("arm", ["pangu", "baseline"])
def test_every_step_ran_with_responses_of_the_fixed_length(report, arm):
    r = report[arm]
    assert r["returncode"] == 0 and not r["timed_out"]
    assert r["steps_logged"] == report["workload"]["warmup_steps"] + report["workload"]["measured_steps"]
    assert r["steps_measured"] == report["workload"]["measured_steps"]
    assert r["response_length_fixed"], [s["tokens"] for s in r["steps"]]


def test_both_models_have_the_same_dimensions(report):
    assert report["workload"]["dims_equal"]


@pytest.mark.parametrize("arm", ["pangu", "baseline"])
def test_phases_and_other_add_up_to_the_step(report, arm):
    for s in report[arm]["steps"]:
        assert sum(s["phases_s"].values()) == pytest.approx(s["step_s"], rel=1e-6)
        # the trace saw the step's work; the step time is RLinf's own
        assert all(s["phases_s"][p] > 0 for p in ("rollout", "logprob", "train", "sync")), s["phases_s"]
        assert s["step_s"] == pytest.approx(s["rlinf_timers_s"]["time/step"])


@pytest.mark.parametrize("arm", ["pangu", "baseline"])
def test_sglang_logprobs_equal_the_actors_after_every_sync(report, arm):
    gaps = [s["logprob_gap"]["max"] for s in report[arm]["steps"]]
    assert gaps and all(g is not None and g <= GATE for g in gaps), gaps


def test_ratios_and_the_baselines_patches_are_reported(report):
    assert report["ratios"]["step_ratio"] > 0
    assert set(report["ratios"]["goals"]) == {"step_ratio", "sync_share", "other_share"}
    names = [p["name"] for p in report["baseline_patches"]]
    assert len(names) == len(set(names)) and "rlinf.validate_model_cfg_by_hf_config:rope_theta" in names
    assert report["transformer_impl"]["requested"] == "local" and report["transformer_impl"]["baseline_spec"] == "local_gpt"
    assert "Pangu Megatron spec: local" in (report["pangu"]["facts"]["spec"] or "")

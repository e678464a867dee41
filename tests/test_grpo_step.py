"""The GRPO-step benchmark's parts (benchmarks/grpo_step.py), without running the loop.

* How a step is cut into phases from the trace: phases never overlap, they and ``other`` add up
  to the step exactly, and time two spans share goes to the higher-priority phase.
* The phase trace itself (``rlinf_pangu.phase_trace``): spans from sync and async functions, the
  coroutine stays a coroutine (RLinf dispatches on that), a failing call is recorded as failed.
* What RLinf's own model path needs on this stack (patches in ``rlinf_pangu/patches/rlinf.py``),
  each against the real upstream code with a negative control: the rope_theta read, the dropped
  ``ignore_eos``, the TE-only norm names of RLinf's converter and TransformFuncs.
* The baseline checkpoint: Pangu's dimensions and tokenizer, norms and biases not 1/0.

The whole loop (both arms, CPU mode) is tests/test_grpo_step_dry_run.py (slow).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import fresh_env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import grpo_step as gs  # noqa: E402
import make_qwen2_checkpoint as mq  # noqa: E402

from rlinf_pangu import phase_trace  # noqa: E402
from rlinf_pangu.patches import rlinf as rp  # noqa: E402


def _fresh(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=fresh_env())
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------
# Cutting a step
# --------------------------------------------------------------------------------------


def _span(name: str, t0: float, t1: float, **kw) -> dict:
    return {"span": name, "pid": 1, "t0": t0, "t1": t1, "ok": True, **kw}


def test_intervals_union_subtract_measure():
    assert gs.union([(3, 4), (0, 1), (0.5, 2)]) == [(0, 2), (3, 4)]
    assert gs.subtract([(0, 10)], [(2, 3), (5, 12)]) == [(0, 2), (3, 5)]
    assert gs.measure(gs.clip([(0, 10), (12, 20)], (5, 15))) == 8


def test_a_step_is_cut_into_phases_that_add_up_to_it():
    # step 0..20: sync 0-4 holding an optimizer offload 1-2, rollout 4-10 holding SGLang's release
    # 9-10, reward 9.5-11 (overlaps the release and 1 s of nothing else), logprob 12-14, train 15-19.
    spans = [
        _span("driver.prepare_data", 0.0, 0.1),
        _span("driver.sync_weights", 0.1, 4.0),
        _span("actor.offload_optimizer", 1.0, 2.0),
        _span("rollout.total", 4.0, 10.0),
        _span("rollout.release", 9.0, 10.0),
        _span("reward.compute", 9.5, 11.0),
        _span("actor.logprob_compute", 12.0, 14.0),
        _span("actor.train_compute", 15.0, 19.0),
        _span("actor.advantages", 14.2, 14.5),
    ]
    cut = gs.cut_step(spans, (0.0, 20.0))
    p = cut["phases_s"]
    assert p["offload_onload"] == pytest.approx(2.0)  # 1-2 and 9-10
    assert p["sync"] == pytest.approx(2.9)  # 0.1-4 less the offload
    assert p["rollout"] == pytest.approx(5.0)  # 4-9
    assert p["reward"] == pytest.approx(1.0)  # 10-11: 9.5-10 went to the release
    assert (p["logprob"], p["train"], p["data"]) == pytest.approx((2.0, 4.0, 0.1))
    assert sum(p.values()) == pytest.approx(20.0)  # other included: an exact partition
    assert p["other"] == pytest.approx(20.0 - 17.0)  # 11-12, 14-15, 19-20
    assert cut["other_detail_s"]["advantages"] == pytest.approx(0.3)
    assert cut["other_detail_s"]["unexplained"] == pytest.approx(2.7)
    assert cut["offload_onload"]["actor.offload_optimizer @ between phases"] == pytest.approx(1.0)


def test_offloads_inside_the_actors_sync_are_said_to_be_there_and_first_pinned_buffers_counted():
    spans = [
        _span("actor.sync_send", 0.0, 5.0),
        _span("actor.offload_optimizer", 1.0, 4.0),
        _span("actor.pinned_buffer", 1.1, 2.1, allocates=True, bytes=2**30),
        _span("actor.pinned_buffer", 2.2, 2.3, allocates=False, bytes=2**30),
    ]
    detail = gs.cut_step(spans, (0.0, 6.0))["offload_onload"]
    assert detail["actor.offload_optimizer @ sync"] == pytest.approx(3.0)
    assert detail["pinned_alloc"] == {"count": 1, "gib": 1.0, "s": pytest.approx(1.0)}


def test_steps_start_at_the_drivers_batch_hand_off_and_last_rlinf_step_time():
    spans = [_span("driver.prepare_data", 10.0, 10.1), _span("driver.prepare_data", 30.0, 30.1),
             _span("driver.prepare_data", 50.0, 50.0, ok=False)]  # the step after the last: RunFinished
    metrics = {1: {"time/step": 15.0}, 2: {"time/step": 12.0}}
    assert gs.step_windows(spans, metrics) == {1: (10.0, 25.0), 2: (30.0, 42.0)}


def test_ratios_against_the_goals():
    report = {"pangu": {"median": {"step_s": 9.0, "sync": 0.1, "other": 1.0}},
              "baseline": {"median": {"step_s": 10.0, "sync": 0.5, "other": 2.0}}}
    r = gs.ratios(report)
    assert (r["step_ratio"], r["sync_share"], r["other_share"]) == (0.9, pytest.approx(0.0111, abs=1e-4), 0.1111)
    assert r["goals"]["step_ratio"]["met"] and r["goals"]["sync_share"]["met"] and not r["goals"]["other_share"]["met"]


def test_the_fsdp_arm_is_set_beside_the_megatron_one():
    """Issue 13's comparison: the FSDP actor's step, rates, memory and gap next to the Megatron actor's."""
    rate = {"generated_over_step": 100.0, "trained_over_train": 400.0}
    report = {"pangu": {"median": {"step_s": 10.0, "sync": 0.1, "other": 1.0}, "tokens_per_s_per_gpu": rate,
                        "memory": {"peak_mib": 30000}, "logprob_gap_max_over_steps": 0.02},
              "fsdp": {"median": {"step_s": 15.0}, "memory": {"peak_mib": 40000}, "logprob_gap_max_over_steps": 0.03,
                       "tokens_per_s_per_gpu": {"generated_over_step": 66.0, "trained_over_train": 200.0}}}
    f = gs.ratios(report)["fsdp_vs_megatron"]
    assert (f["step_ratio"], f["generated_over_step_ratio"], f["trained_over_train_ratio"]) == (1.5, 0.66, 0.5)
    assert f["peak_mib"] == {"fsdp": 40000, "megatron": 30000}
    assert f["logprob_gap_max"] == {"fsdp": 0.03, "megatron": 0.02}
    assert "fsdp_vs_megatron" not in gs.ratios({"pangu": report["pangu"]})


def test_the_fsdp_arm_runs_its_presets_fsdp_example_and_only_when_asked(tmp_path):
    for preset, device in (("1b", "cuda"), ("tiny", "cpu")):
        setup = gs.resolve_setup(gs.parse_args(["--preset", preset, "--device", device, "--out", str(tmp_path)]))
        assert (ROOT / setup.fsdp_example).is_file() and "fsdp" in setup.fsdp_example
    assert gs.parse_args(["--out", str(tmp_path)]).arms == "pangu,baseline"
    with pytest.raises(SystemExit, match="no FSDP example"):
        gs.main(["--preset", "tiny", "--device", "cuda", "--arms", "fsdp", "--out", str(tmp_path)])


# --------------------------------------------------------------------------------------
# The phase trace
# --------------------------------------------------------------------------------------


class _Worker:
    def work(self, x):
        return x + 1

    async def rollout(self, x):
        await asyncio.sleep(0)
        return x * 2

    def broken(self):
        raise RuntimeError("boom")


def test_traced_methods_record_spans_and_stay_coroutines(tmp_path, monkeypatch):
    trace = tmp_path / "t.jsonl"
    monkeypatch.setenv(phase_trace.ENV, str(trace))
    for name in ("work", "rollout", "broken"):
        assert phase_trace.wrap_class_method(_Worker, name, f"w.{name}")
    w = _Worker()
    assert w.work(1) == 2
    assert asyncio.iscoroutinefunction(_Worker.rollout) and asyncio.run(w.rollout(3)) == 6
    with pytest.raises(RuntimeError):
        w.broken()
    spans = {s["span"]: s for s in phase_trace.load(trace)}
    assert set(spans) == {"w.work", "w.rollout", "w.broken"}
    assert spans["w.work"]["ok"] and not spans["w.broken"]["ok"]
    assert all(s["t1"] >= s["t0"] for s in spans.values())
    phase_trace.wrap_class_method(_Worker, "work", "w.work")  # idempotent: one span per call
    w.work(1)
    assert sum(s["span"] == "w.work" for s in phase_trace.load(trace)) == 2


def test_no_trace_file_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(phase_trace.ENV, raising=False)
    phase_trace.record("x", 0.0, 1.0)
    assert not list(tmp_path.iterdir())


def _defines(module: str, qualname: str) -> bool:
    """``module`` (read from disk, not imported) defines ``Class.method``."""
    import ast

    from rlinf_pangu.patches.core import upstream_source

    cls_name, method = qualname.split(".")
    for node in ast.walk(ast.parse(upstream_source(module) or "pass")):
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            return any(isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == method for f in node.body)
    return False


def test_every_traced_function_exists_upstream():
    # flush_cache is SGLang's own Scheduler method, which RLinf's Scheduler inherits
    missing = [f"{t.module}:{t.qualname}" for t in phase_trace.TRACED
               if t.qualname != "Scheduler.flush_cache" and not _defines(t.module, t.qualname)]
    assert missing == []
    assert _defines("sglang.srt.managers.scheduler", "Scheduler.flush_cache")


# --------------------------------------------------------------------------------------
# RLinf's own path on this stack
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2_tiny(tiny_fp32, tmp_path_factory) -> Path:
    return mq.make_qwen2_checkpoint(tiny_fp32, tmp_path_factory.mktemp("qwen") / "qwen2", dtype="fp32")


def test_upstream_still_needs_the_native_model_patches():
    names = list(rp.NATIVE_MODEL_PATCHES) + [rp.PHASE_TRACE]
    code = ("import json; from rlinf_pangu import patches as p\n"
            f"print(json.dumps({{n: p.PATCHES[n].applies() for n in {names!r}}}))")
    assert json.loads(_fresh(code)) == {n: True for n in names}


def test_rlinf_reads_the_rope_base_of_a_transformers_5_qwen2_config_only_with_the_patch(qwen2_tiny):
    code = ("from omegaconf import OmegaConf\nimport rlinf.config as rc\n"
            "cfg = OmegaConf.create({'model': {}})\n"
            "try:\n rc.validate_model_cfg_by_hf_config(cfg, %r); print('read', cfg.model.rotary_base)\n"
            "except AttributeError as e:\n print('failed', e)\n")
    assert _fresh(code % str(qwen2_tiny)).startswith("failed")  # negative control: RLinf alone
    out = _fresh("import rlinf_pangu; rlinf_pangu.register()\n" + code % str(qwen2_tiny))
    assert out == "read 16000000.0"
    from transformers import AutoConfig

    assert not hasattr(AutoConfig.from_pretrained(qwen2_tiny), "rope_theta")  # nothing leaks out of RLinf's call


def test_ignore_eos_reaches_sglangs_sampling_params_only_with_the_patch():
    code = ("from omegaconf import OmegaConf\nimport rlinf_pangu; rlinf_pangu.register()\n"
            "from rlinf.workers.rollout.sglang.sglang_worker import SGLangWorker\n"
            "c = OmegaConf.create(dict(do_sample=True, temperature=1.0, top_k=-1, top_p=1.0, repetition_penalty=1.0,"
            " max_new_tokens=64, min_new_tokens=1, ignore_eos=True))\n"
            "fn = SGLangWorker.get_sampling_param_from_config\n"
            "print(fn(c), fn.__rlinf_pangu_original__(c).get('ignore_eos'))\n")
    out = _fresh(code)
    # patched: ignore_eos on, and nothing SGLang refuses without a tokenizer (min_new_tokens) added;
    # RLinf's own function (negative control) drops ignore_eos
    assert out == ("{'temperature': 1.0, 'top_k': -1, 'top_p': 1.0, 'repetition_penalty': 1.0, "
                   "'max_new_tokens': 64, 'ignore_eos': True} None")


def test_sglang_takes_the_sampling_params_without_a_tokenizer_as_rlinf_runs_it():
    """RLinf starts SGLang with skip_tokenizer_init=True: the params must normalize without one."""
    from sglang.srt.sampling.sampling_params import SamplingParams

    SamplingParams(max_new_tokens=64, ignore_eos=True, temperature=1.0).normalize(None)
    with pytest.raises(ValueError, match="min_new_tokens"):  # why min_new_tokens is not the way
        SamplingParams(max_new_tokens=64, min_new_tokens=64).normalize(None)


def test_the_schema_declares_the_new_keys_with_defaults_that_change_nothing():
    from omegaconf import OmegaConf

    from rlinf_pangu.config import CONFIGS_DIR, SCHEMA_FILE

    schema = OmegaConf.load(CONFIGS_DIR / SCHEMA_FILE)
    assert schema.algorithm.sampling_params.ignore_eos is False  # SGLang's default, what RLinf ran with
    assert schema.actor.megatron.ckpt_convertor.num_hidden_layers is None  # RLinf's converter: its table's


def _convert_with_rlinf(hf: Path, out: Path, spec_name: str | None) -> dict:
    """RLinf's own converter (as its runner calls it: the actor's ``megatron.ckpt_convertor``;
    ``spec_name=None``: a bare call, outside any actor config); returns the rank file's model."""
    from omegaconf import OmegaConf

    import rlinf_pangu

    rlinf_pangu.register()
    from rlinf.utils.ckpt_convertor.megatron_convertor.convert_hf_to_mg import convert_hf_to_mg

    conv = dict(model=gs.RLINF_CONVERTER_MODEL, num_hidden_layers=6, hf_model_path=str(hf), save_path=str(out),
                use_gpu_num=0, use_gpu_index=None, process_num=1, tensor_model_parallel_size=1,
                pipeline_model_parallel_size=1)
    if spec_name is None:
        ckpt_cfg = OmegaConf.create(conv)
    else:
        actor = OmegaConf.create({"spec_name": spec_name, "model": {"tensor_model_parallel_size": 1,
                                  "pipeline_model_parallel_size": 1},
                                  "megatron": {"transformer_impl": "local", "ckpt_convertor": conv}})
        ckpt_cfg = actor.megatron.ckpt_convertor
    convert_hf_to_mg(str(hf), ckpt_cfg)
    return torch.load(next(out.rglob("model_optim_rng.pt")), weights_only=False)["model"]


def test_rlinf_converter_output_gets_the_local_modules_norm_names_for_a_local_actor(qwen2_tiny, tmp_path):
    from safetensors.torch import load_file

    te = _convert_with_rlinf(qwen2_tiny, tmp_path / "bare", None)
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in te  # what RLinf writes, kept
    assert "decoder.layers.0.input_layernorm.weight" not in te
    sd = _convert_with_rlinf(qwen2_tiny, tmp_path / "local", "local_gpt")
    hf = load_file(str(qwen2_tiny / "model.safetensors"))
    for i in range(6):
        torch.testing.assert_close(sd[f"decoder.layers.{i}.input_layernorm.weight"], hf[f"model.layers.{i}.input_layernorm.weight"])
        torch.testing.assert_close(sd[f"decoder.layers.{i}.pre_mlp_layernorm.weight"],
                                   hf[f"model.layers.{i}.post_attention_layernorm.weight"])
    assert not any(k.endswith("_extra_state") or "layer_norm_weight" in k for k in sd)
    assert set(sd) == {rp.te_norm_to_local(k) or k for k in te if not k.endswith("_extra_state")}
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    local = get_gpt_layer_local_spec()  # the names above are the modules megatron-core's local spec declares
    assert local.submodules.input_layernorm is not None and local.submodules.pre_mlp_layernorm is not None


_SYNC_CODE = """
import json, socket, types
import torch, torch.distributed as dist
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
from rlinf.utils.resharding.utils import tp_reshard_fn_qwen2_5
from rlinf.utils.convertor.utils import Qwen25Convertor
from rlinf_pangu.patches import rlinf as rp
mc = types.SimpleNamespace(hidden_size=8, num_attention_heads=2, num_query_groups=1, kv_channels=4,
                           tensor_model_parallel_size=1)
L = "decoder.layers.0."
local = {L + "input_layernorm.weight": torch.full((8,), 1.5), L + "pre_mlp_layernorm.weight": torch.full((8,), 2.5),
         L + "self_attention.linear_qkv.weight": torch.randn(16, 8), L + "self_attention.linear_qkv.bias": torch.randn(16),
         L + "self_attention.linear_proj.weight": torch.randn(8, 8), L + "mlp.linear_fc1.weight": torch.randn(32, 8),
         L + "mlp.linear_fc2.weight": torch.randn(8, 16), "decoder.final_layernorm.weight": torch.ones(8)}
def sync(model_type):
    cfg = types.SimpleNamespace(model_type=model_type, reshard_weights_format="sglang", model_config=mc, reshard_tp_size=1)
    def rlinf_gather(self, bucket, dst):  # what RLinf's gather does with a bucket: its TP reshard, then its convertor
        return Qwen25Convertor(cfg, strict=True).convert(tp_reshard_fn_qwen2_5(dict(bucket), 1, dist.group.WORLD))
    return cfg, rlinf_gather
cfg, rlinf_gather = sync("qwen2.5")
try:
    rlinf_gather(None, local, 0); refused = None
except AssertionError as e:
    refused = str(e)
out = rp.make_native_norm_gather(rlinf_gather)(types.SimpleNamespace(config=cfg), local, 0)
seen = {}
cfg_p, _ = sync("pangu")
rp.make_native_norm_gather(lambda self, b, d: seen.update(b))(types.SimpleNamespace(config=cfg_p), local, 0)
print(json.dumps({"refused": refused, "hf": sorted(out), "norms": [out["model.layers.0.input_layernorm.weight"][0].item(),
      out["model.layers.0.post_attention_layernorm.weight"][0].item()], "pangu_keys": sorted(seen) == sorted(local)}))
"""


def test_rlinf_sync_of_its_own_model_takes_the_local_modules_norms_only_with_the_patch():
    """RLinf's own Qwen TP reshard + TransformFuncs on a bucket of a local-module model (1-rank gloo)."""
    r = json.loads(_fresh(_SYNC_CODE))
    assert r["refused"] == "Unknown parameter: decoder.layers.0.input_layernorm.weight"  # RLinf alone
    assert r["norms"] == [1.5, 2.5]  # each norm reached its own HF name
    assert {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"} <= set(r["hf"])
    assert r["pangu_keys"]  # Pangu's own sync (which knows the local names) gets the bucket as it was


# --------------------------------------------------------------------------------------
# The baseline checkpoint
# --------------------------------------------------------------------------------------


def test_the_qwen2_twin_has_pangus_dims_and_tokenizer_and_nontrivial_norms(tiny_fp32, qwen2_tiny):
    pangu = json.loads((tiny_fp32 / "config.json").read_text())
    qwen = json.loads((qwen2_tiny / "config.json").read_text())
    assert qwen["architectures"] == ["Qwen2ForCausalLM"] and mq.dims_of(qwen) == mq.dims_of(pangu)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        assert (qwen2_tiny / f).read_bytes() == (tiny_fp32 / f).read_bytes()
    from safetensors.torch import load_file

    w = load_file(str(qwen2_tiny / "model.safetensors"))
    norm, bias = w["model.layers.0.input_layernorm.weight"], w["model.layers.0.self_attn.q_proj.bias"]
    assert (norm - 1).abs().max() > 0.05 and bias.abs().max() > 0.05  # a dropped norm/bias would show
    assert "model.layers.0.self_attn.o_proj.bias" not in w  # Qwen2: Pangu less the o_proj bias

"""The entry point's patches of RLinf's loop (rlinf_pangu/patches/: rlinf.py, sglang.py, transformers.py, latex2sympy.py).

Each patch has two tests' worth of evidence: its probe says upstream still has the problem (read
in a fresh interpreter, before anything is patched, so an upstream fix makes this fail and the
patch gets retired), and the patched behaviour works on the real upstream code.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import torch

from harness import fresh_env
from rlinf_pangu import patches
from rlinf_pangu.patches import latex2sympy as l2s
from rlinf_pangu.patches import rlinf as rp
from rlinf_pangu.patches import sglang as sp
from rlinf_pangu.patches import transformers as tp

LOOP_PATCHES = [
    rp.MEGATRON_ARGS,
    rp.SGLANG_GATE,
    sp.SGLANG_DISPATCH_EXTEND,
    rp.SGLANG_COMMUNICATOR,
    rp.SGLANG_SERVER_ARGS,
    rp.SGLANG_PARALLEL_STATE,
    rp.DATASET_ENCODE,
    tp.VISION2SEQ,
    rp.RUNNER_LAST_STEP,
    rp.LOGPROB_GAP,
    l2s.LATEX2SYMPY,
    rp.NO_PACKING_WITHOUT_TE,
    rp.SGLANG_MEMORY_OCCUPATION,
    rp.RAY_STATE_WITHOUT_DASHBOARD,
    rp.ROLLOUT_SYNC_SETUP,
]


def _fresh(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=fresh_env())
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stdout.strip().splitlines()[-1]


def test_upstream_still_needs_every_loop_patch():
    code = (
        "import json; from rlinf_pangu import patches as p\n"
        f"print(json.dumps({{n: p.PATCHES[n].applies() for n in {LOOP_PATCHES!r}}}))"
    )
    assert json.loads(_fresh(code)) == {n: True for n in LOOP_PATCHES}


def test_rlinf_sglang_rollout_imports_only_with_the_gate_patch():
    base = "import rlinf_pangu.patches as p\n"
    fails = _fresh(base + "try:\n import rlinf.workers.rollout.sglang\n print('imported')\nexcept ValueError as e:\n print('refused', e)")
    assert fails.startswith("refused") and "not supported" in fails
    ok = _fresh(base + "p.apply_all()\nimport rlinf.workers.rollout.sglang as m\nprint(m.Engine.__name__, m.sglang_version)")
    assert ok.startswith("Engine 0.5.17")


def test_megatron_args_get_megatron_defaults_and_keep_rlinf_values():
    from omegaconf import OmegaConf

    import rlinf.utils.omega_resolver  # noqa: F401  (${torch.dtype:...})
    from rlinf_pangu.patches.rlinf import complete_megatron_args

    args = OmegaConf.create({"lr": 0.5, "params_dtype": "${torch.dtype:bfloat16}"})
    added = complete_megatron_args(args)
    assert "perform_rl_step" in added and args.perform_rl_step is False and args.lr == 0.5
    import torch

    assert args.main_grads_dtype == torch.float32 and args.params_dtype == torch.bfloat16


def test_megatron_set_args_is_wrapped_after_register():
    import rlinf_pangu

    rlinf_pangu.register()
    import rlinf.utils.initialize as init

    assert hasattr(init.set_args, "__rlinf_pangu_original__")


def test_dispatcher_mapping_takes_rlinf_extend():
    patches.apply_patch(sp.SGLANG_DISPATCH_EXTEND)
    from sglang.utils import TypeBasedDispatcher

    d = TypeBasedDispatcher([(int, lambda x: "int")])
    d._mapping.extend([(str, lambda x: "str")])
    assert (d(1), d("a")) == ("int", "str")


def test_communicator_fans_out_on_0_5_17():
    from rlinf_pangu.patches.rlinf import make_communicator_cls

    sent = []
    comm = make_communicator_cls()(sent.append, fan_out=2)

    async def roundtrip():
        task = asyncio.ensure_future(comm("req"))
        await asyncio.sleep(0)
        comm.handle_recv("a")
        comm.handle_recv("b")
        return await task

    assert asyncio.run(roundtrip()) == ["a", "b"] and sent == ["req"]


def test_server_args_keyword_renamed(tiny_fp32):
    import rlinf_pangu

    rlinf_pangu.register()  # sglang 0.5.17 imports only with the transformers exist_ok patch
    from sglang.srt.server_args import ServerArgs

    from rlinf_pangu.patches.rlinf import make_server_args_factory

    args = make_server_args_factory(ServerArgs)(model_path=str(tiny_fp32), device="cpu", cuda_graph_max_bs=8)
    assert isinstance(args, ServerArgs) and args.cuda_graph_max_bs_decode == 8


def test_scheduler_reads_tp_from_parallel_state():
    from types import SimpleNamespace

    from rlinf_pangu.patches.rlinf import add_parallel_state_properties

    class Sched:
        def __init__(self):
            self.ps = SimpleNamespace(tp_size=4, tp_rank=3)

    assert add_parallel_state_properties(Sched) == ["tp_size", "tp_rank"]
    assert (Sched().tp_size, Sched().tp_rank) == (4, 3)


def test_dataset_keeps_samples_with_the_encode_patch(tiny_fp32):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    import rlinf_pangu
    from rlinf_pangu.data import data_path

    rlinf_pangu.register()
    from rlinf.data.datasets.reasoning import ReasoningDataset

    cfg = OmegaConf.create({"data": {"max_prompt_length": 48, "prompt_key": "prompt", "answer_key": "answer",
                                     "apply_chat_template": True, "filter_prompt_by_length": True}})
    ds = ReasoningDataset(str(data_path("arith_train.jsonl")), cfg, AutoTokenizer.from_pretrained(tiny_fp32))
    assert len(ds) == 152 and ds[0].answer == ["0"]


def test_transformers_has_vision2seq_alias():
    from rlinf_pangu.patches.transformers import alias_vision2seq

    alias_vision2seq()
    from transformers import AutoModelForImageTextToText, AutoModelForVision2Seq

    assert AutoModelForVision2Seq is AutoModelForImageTextToText


def test_runner_logs_the_last_step_then_stops():
    from rlinf_pangu.patches.rlinf import RunFinished, make_check_progress, make_put_batch

    progress = make_check_progress(lambda step, max_steps, *a, **k: (False, step == max_steps, step == max_steps))
    assert progress(1, 2, 1, -1, 1.0) == (False, False, False) and not progress.finished
    assert progress(2, 2, 1, -1, 1.0) == (False, True, False) and progress.finished  # saved, not ended yet
    put = make_put_batch(lambda self, batch: "put", progress)
    with pytest.raises(RunFinished):
        put(None, {})


def test_logprob_gap_is_measured_on_response_tokens():
    import torch

    from rlinf_pangu.patches.rlinf import logprob_gap

    batch = {
        "response_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
        "rollout_logprobs": torch.tensor([[-1.0, -2.0, -9.0], [-1.0, -5.0, -5.0]]),
        "recomputed_logprobs": torch.tensor([[-1.1, -2.0, 0.0], [-0.7, 0.0, 0.0]]),
    }
    gap = logprob_gap(batch, response_len=3)
    assert gap["logprob_gap_max"] == pytest.approx(0.3) and gap["logprob_gap_mean"] == pytest.approx(0.4 / 3)


def test_math_verifier_grades_latex_with_the_lark_parser_in_place_of_latex2sympy2():
    # RLinf's verifier, patched: latex2sympy2 is the project's Lark-backed parser (no ANTLR), so
    # LaTeX-only forms (\\frac{1}{2}) grade as well as numbers; a wrong number still fails.
    out = _fresh(
        "import rlinf_pangu; rlinf_pangu.register()\n"
        "from rlinf.algorithms.rewards.math.math_verifier.verify import math_verify_call\n"
        "print(math_verify_call(['\\\\boxed{5}', '\\\\boxed{4}', '\\\\boxed{0.50}', '\\\\boxed{\\\\frac{1}{2}}'], [['5'], ['5'], ['0.5'], ['0.5']]))"
    )
    assert out == "[True, False, True, True]"


def test_math_verifier_pool_grades_when_its_workers_are_spawned():
    # The default start method set to spawn (as SGLang does process-wide): RLinf's verifier pool starts
    # fresh interpreters that import the verifier before any code of ours runs there; the venv's
    # start-up line arms the stand-in in them. Without it the pool breaks (BrokenProcessPool).
    out = _fresh(
        "import multiprocessing as mp; mp.set_start_method('spawn', force=True)\n"
        "import rlinf_pangu; rlinf_pangu.register()\n"
        "from rlinf.algorithms.rewards.math.math_verifier.verify import math_verify_call\n"
        "print(math_verify_call(['\\\\boxed{\\\\frac{1}{2}}', '\\\\boxed{4}'], [['0.5'], ['5']]))"
    )
    assert out == "[True, False]"


def test_custom_forward_unpacked_without_te():
    from rlinf_pangu.patches.rlinf import make_custom_forward

    seen = {}

    def original(model, **kwargs):
        seen.update(kwargs)
        return model(input_ids=1, attention_mask="2-D padding mask")

    fwd = make_custom_forward(original)
    assert fwd(lambda **k: k, pack_seqs=True) == {"input_ids": 1, "attention_mask": None}
    assert seen["pack_seqs"] is False


def test_rlinf_scheduler_resumes_the_weights_it_released():
    # sglang 0.5.17 builds its dispatcher with release/resume going to its weight updater; RLinf's
    # Scheduler overrides must see them, or its sync never resumes paused weights (on the GPU:
    # "CUDA error: invalid argument" in the first load). The updater stands in for SGLang's
    # SchedulerWeightUpdaterManager (which needs a running model); RLinf's own methods run.
    import rlinf_pangu

    rlinf_pangu.register()
    from rlinf.hybrid_engines.sglang.common.sgl_scheduler import Scheduler
    from sglang.srt.managers.io_struct import ReleaseMemoryOccupationReqInput, ResumeMemoryOccupationReqInput
    from sglang.utils import TypeBasedDispatcher

    from rlinf_pangu.patches.rlinf import reroute_memory_requests

    # register() armed the patch: every RLinf Scheduler re-points the two requests after its __init__
    assert hasattr(Scheduler.__init__, "__rlinf_pangu_original__")
    calls = []

    class Updater:
        def release_memory_occupation(self, req):
            calls.append("release")

        def resume_memory_occupation(self, req):
            calls.append("resume")

    s = object.__new__(Scheduler)
    s.weight_updater, s.is_weight_offloaded, s.weight_reload = Updater(), False, "sync"
    s._request_dispatcher = TypeBasedDispatcher([
        (ReleaseMemoryOccupationReqInput, s.weight_updater.release_memory_occupation),
        (ResumeMemoryOccupationReqInput, s.weight_updater.resume_memory_occupation),
    ])
    reroute_memory_requests(s)
    s._request_dispatcher(ReleaseMemoryOccupationReqInput())
    assert s.is_weight_offloaded and calls == ["release"]  # what RLinf's sync_hf_weight checks
    s._request_dispatcher(ResumeMemoryOccupationReqInput())
    assert not s.is_weight_offloaded and calls == ["release", "resume"]


def test_failure_handler_lists_no_actors_without_the_dashboard():
    from ray.util.state.exception import ServerUnavailable

    from rlinf_pangu.patches.rlinf import make_list_actors

    def no_dashboard(*args, **kwargs):
        raise ServerUnavailable("Failed to connect to API server")

    assert make_list_actors(no_dashboard)(filters=[]) == []
    assert make_list_actors(lambda **kw: ["a"])(filters=[]) == ["a"]


def test_before_and_after_import_hooks_on_one_module_both_run(tmp_path, monkeypatch):
    # the pre-exec hooks (import-time fixes) and the post-import hooks (patches) are two finders
    # that consult each other: one module with both gets both, in order, without recursion
    from rlinf_pangu.patches.core import before_exec

    (tmp_path / "rlp_hooked_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    assert before_exec("rlp_hooked_mod", lambda m: seen.append(("before", hasattr(m, "X"))))
    patches.after_import("rlp_hooked_mod", lambda m: seen.append(("after", m.X)))
    import rlp_hooked_mod  # noqa: F401

    assert seen == [("before", False), ("after", 1)]


def test_a_hook_armed_twice_runs_once(tmp_path, monkeypatch):
    # the start-up line arms the latex2sympy2 stand-in, register() arms it again: one call, not two
    from rlinf_pangu.patches.core import before_exec

    (tmp_path / "rlp_twice_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def hook(m):
        seen.append("before")

    assert before_exec("rlp_twice_mod", hook) and before_exec("rlp_twice_mod", hook)
    patches.after_import("rlp_twice_mod", seen.append)
    patches.after_import("rlp_twice_mod", seen.append)
    import rlp_twice_mod

    assert seen == ["before", rlp_twice_mod]


def _layered_model(layers: int = 4) -> torch.nn.Module:
    model = torch.nn.Module()
    model.decoder = torch.nn.Module()
    model.decoder.layers = torch.nn.ModuleList([torch.nn.Linear(16, 16) for _ in range(layers)])  # 1088 B each
    return model


def _actor_with_capacity(capacity):
    """RLinf's MegatronActor.init_worker_customize (stand-in for the part before the sync is built)
    wrapped by the patch; the sync object is RLinf's real MegatronCoreWeightReshard."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from rlinf.utils.resharding.mcore_weight_reshard import MegatronCoreWeightReshard

    reshard = object.__new__(MegatronCoreWeightReshard)
    reshard.bucket_capacity = 128 * 2**20  # what its __init__ takes from ReshardConfig's default

    def init_worker_customize(self):
        self.rollout_weights_reshard = reshard

    actor = SimpleNamespace(cfg=OmegaConf.create({"actor": {} if capacity is None else {"sync_bucket_capacity": capacity}}))
    rp.make_rollout_sync_setup(init_worker_customize)(actor)
    return reshard


def test_sync_bucket_capacity_sets_the_megatron_sync_bucket_size():
    model = _layered_model()
    assert len(_actor_with_capacity(None).divide_model_to_bucket([model])) == 1  # RLinf's 128 MiB
    assert len(_actor_with_capacity(2048).divide_model_to_bucket([model])) == 3  # a bucket closes at >= 2048 B


@pytest.mark.parametrize("bad", [0, -1, "1GiB", 1.5, True])
def test_sync_bucket_capacity_must_be_positive_bytes(bad):
    with pytest.raises(ValueError, match="actor.sync_bucket_capacity"):
        _actor_with_capacity(bad)

"""The patches RLinf's FSDP actor needs on the pinned stack (rlinf_pangu/patches/rlinf.py, FSDP
section) and the CPU mode's FSDP redirects (patches/cpu.py): each probe still holds on the
installed RLinf (an upstream change fails here), each body does what its reason says. The
patched behaviour end to end (2 gloo ranks, grad norm, sync, SGLang) is tests/test_fsdp_parity.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

import rlinf_pangu
from rlinf_pangu.patches import PATCHES
from rlinf_pangu.patches import rlinf as rp

FSDP_PATCHES = (rp.FSDP_ATTN, rp.FSDP2_GRAD_NORM, rp.FSDP_LOGPROB_GAP, rp.FSDP_FP32_LOGPROBS)


@pytest.mark.parametrize("name", FSDP_PATCHES)
def test_probe_holds_on_the_pinned_rlinf(name):
    assert PATCHES[name].applies(), f"{name}: upstream changed under the patch ({PATCHES[name].why})"


def test_register_installs_every_fsdp_patch_on_rlinfs_classes():
    rlinf_pangu.register()
    from rlinf.hybrid_engines.fsdp.fsdp_model_manager import FSDPModelManager
    from rlinf.hybrid_engines.fsdp.strategy.fsdp2 import FSDP2Strategy
    from rlinf.workers.actor import fsdp_actor_worker

    from rlinf_pangu.patches.core import patched

    assert patched(FSDPModelManager.model_provider_func)
    assert patched(FSDP2Strategy.clip_grad_norm_)
    assert patched(fsdp_actor_worker.compute_math_rollout_metrics)
    assert patched(fsdp_actor_worker.FSDPActor.compute_logprobs)


def _actor_cfg(**model):
    return OmegaConf.create({"model": model})


def test_attention_is_the_yamls_choice_and_sdpa_without_flash_attn():
    import importlib.util

    assert rp.fsdp_attn_implementation(_actor_cfg(attn_implementation="eager")) == "eager"
    default = rp.fsdp_attn_implementation(_actor_cfg())
    assert default == ("flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa")


def test_rlinfs_config_call_gets_the_chosen_attention(tiny_fp32):
    """RLinf calls AutoConfig.from_pretrained(path, trust_remote_code=True, attn_implementation=
    "flash_attention_2"); the stand-in passes everything but the attention through."""
    rlinf_pangu.register_transformers()
    from transformers import AutoConfig

    shim = rp._AutoConfigWithAttention(AutoConfig, "sdpa")
    cfg = shim.from_pretrained(str(tiny_fp32), trust_remote_code=True, attn_implementation="flash_attention_2")
    assert type(cfg).__name__ == "PanguEmbeddedConfig" and cfg._attn_implementation == "sdpa"
    assert shim.register is AutoConfig.register  # anything else is AutoConfig's own


def test_the_attention_choice_survives_rays_by_value_copy_of_the_patched_method(tiny_fp32):
    """Ray ships the actor's patched methods to its worker by value (cloudpickle: the patched
    attribute no longer matches the module's name), and the copy reads a globals dict of its own:
    the stand-in must reach that copy (a module-level swap left RLinf's flash_attention_2 there,
    which transformers refuses without flash-attn)."""
    import pickle

    import ray.cloudpickle

    rlinf_pangu.register()
    from rlinf.hybrid_engines.fsdp.fsdp_model_manager import FSDPModelManager

    shipped = pickle.loads(ray.cloudpickle.dumps(FSDPModelManager.model_provider_func))
    assert shipped is not FSDPModelManager.model_provider_func

    class Manager:
        torch_dtype = torch.float32
        _cfg = OmegaConf.create({"model": {"model_path": str(tiny_fp32), "attn_implementation": "sdpa"},
                                 "fsdp_config": {"use_liger_kernel": False}})

    from rlinf.scheduler import Worker

    platform, device_type = Worker.torch_platform, Worker.torch_device_type
    if platform is None:  # no accelerator here: RLinf asserts one and names its device type
        from rlinf_pangu.patches.cpu import CpuPlatform

        Worker.torch_platform, Worker.torch_device_type = CpuPlatform, "cpu"
    try:
        model = shipped(Manager())
    finally:
        Worker.torch_platform, Worker.torch_device_type = platform, device_type
    assert model.config._attn_implementation == "sdpa"


def test_grad_norm_group_is_none_for_an_unsharded_model():
    assert rp.shard_group(torch.nn.Linear(2, 2)) is None


def _gap_batch(rollout: torch.Tensor, recomputed: torch.Tensor, mask: torch.Tensor, prompt: int = 3) -> dict:
    pad = torch.zeros(rollout.shape[0], prompt)
    return {
        "rollout_logprobs": torch.cat([pad, rollout], 1),
        "recomputed_logprobs": torch.cat([pad + 5.0, recomputed], 1),  # prompt positions must not count
        "response_mask": torch.cat([pad.bool(), mask.bool()], 1),
    }


def test_logprob_gap_is_over_response_tokens_only():
    rollout = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    recomputed = torch.tensor([[-1.1, -2.0, -9.0], [-0.5, -0.7, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # the -9 is padding
    got = rp.logprob_gap_all_ranks(_gap_batch(rollout, recomputed, mask), response_len=3)
    assert math.isclose(got["logprob_gap_max"], 0.2, rel_tol=1e-5)
    assert math.isclose(got["logprob_gap_mean"], (0.1 + 0.0 + 0.0 + 0.2 + 0.0) / 5, rel_tol=1e-5)


def test_logprob_gap_reports_a_non_finite_worst_token():
    rollout = torch.tensor([[-1.0, float("nan")]])
    got = rp.logprob_gap_all_ranks(_gap_batch(rollout, torch.tensor([[-1.0, -1.0]]), torch.ones(1, 2)), response_len=2)
    assert math.isnan(got["logprob_gap_max"])


def test_logprob_gap_needs_both_logprobs():
    assert rp.logprob_gap_all_ranks({"response_mask": torch.ones(1, 2)}, response_len=2) == {}


def test_rollout_metrics_wrapper_adds_the_gap_to_rlinfs_metrics():
    calls = []

    def rlinf_metrics(batch, max_prompt_len, response_len, group=None):
        calls.append((max_prompt_len, response_len, group))
        return {"reward_scores": 0.5}, None, None

    wrapped = rp.make_fsdp_rollout_metrics(rlinf_metrics)
    batch = _gap_batch(torch.tensor([[-1.0]]), torch.tensor([[-1.25]]), torch.ones(1, 1))
    metrics, _, _ = wrapped(batch, 3, 1)
    assert calls == [(3, 1, None)]
    assert metrics["reward_scores"] == 0.5 and math.isclose(metrics["logprob_gap_max"], 0.25)


def _bf16_logits_and_fp32_reference():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 8, 153376, generator=g) * 3).bfloat16()
    target = torch.randint(0, 153376, (2, 8), generator=g)
    want = torch.log_softmax(logits.float(), -1).gather(-1, target[..., None])[..., 0]
    return logits, target, want


class _Op:
    entropy_op_type = "torch"


def test_bf16_logits_give_fp32_logprobs():
    """The patched FSDPActor.compute_logprobs equals fp32 math on the same bf16 logits; RLinf's own
    method (the negative control) is off by more than the Megatron sync gap."""
    rlinf_pangu.register()
    from rlinf.workers.actor.fsdp_actor_worker import FSDPActor

    logits, target, want = _bf16_logits_and_fp32_reference()
    got = FSDPActor.compute_logprobs(_Op(), logits, target)
    assert (got - want).abs().max().item() < 1e-4
    unpatched = FSDPActor.compute_logprobs.__rlinf_pangu_original__(_Op(), logits, target)
    assert (unpatched - want).abs().mean().item() > 5e-3


class _Actor:
    """Stands in for RLinf's FSDPActor where only its is_pipeline flag matters."""

    def __init__(self):
        self.is_pipeline = False
        self.seen = None

    def sync(self, fail: bool = False):
        self.seen = self.is_pipeline
        if fail:
            raise RuntimeError("send failed")


def test_cpu_mode_sync_takes_rlinfs_direct_tensor_branch_and_only_for_the_sync():
    from rlinf_pangu.patches.cpu import fsdp_sync_sends_tensors

    sync = fsdp_sync_sends_tensors(_Actor.sync)
    actor = _Actor()
    sync(actor)
    assert actor.seen is True and actor.is_pipeline is False
    with pytest.raises(RuntimeError):
        sync(actor, fail=True)
    assert actor.is_pipeline is False


def test_fsdp_piece_declares_only_keys_rlinf_reads_or_the_project_checks():
    """Every key of configs/rlinf/fsdp.yaml is one RLinf's FSDP code reads (by its name in RLinf's
    source) or this project's patch/check reads: no dead knobs in the schema."""
    import pathlib

    import rlinf

    from rlinf_pangu import config as pc

    src = "\n".join(p.read_text() for p in pathlib.Path(rlinf.__file__).parent.rglob("*.py"))
    ours = "\n".join(p.read_text() for p in pathlib.Path(rlinf_pangu.__file__).parent.rglob("*.py"))
    piece = OmegaConf.to_container(OmegaConf.load(pc.CONFIGS_DIR / pc.BACKEND_SCHEMA_FILES["fsdp"]), resolve=False)

    def leaves(node, prefix=""):
        for k, v in node.items():
            yield from (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])

    unread = [k for k in leaves(piece) if f'"{k.rsplit(".", 1)[-1]}"' not in src + ours
              and f"'{k.rsplit('.', 1)[-1]}'" not in src + ours and f".{k.rsplit('.', 1)[-1]}" not in src + ours]
    assert not unread, unread
    assert json.dumps(piece).count("flash") == 0  # the defaults run without flash-attn

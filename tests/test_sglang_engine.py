"""A real ``sgl.Engine`` on the CPU serving the tiny Pangu (fp32): parity with HF, and the weight
sync after an optimizer step (convertor + RLinf-style presharded loading) matching Megatron.

One engine serves the whole module (starting one takes ~15-40 s on this host). The Megatron
side (gloo ranks: load the same checkpoint at TP2, one Adam step, recompute logprobs, sync
through RLinf's MegatronCoreWeightReshard to rollout TP1) is shared with test_sync_reshard.py.

Tolerances (fp32): SGLang's torch_native attention and Megatron/HF differ only in the order of
fp32 operations; on this tiny model the measured logprob differences are ~1e-6, so 1e-5 (the
acceptance bound) has margin, while a wrong layout moves logprobs by >= 1e-2.
"""

from __future__ import annotations

import pytest
import torch

import sync_testlib as L
from compare import Diff, check, diff, logprob_gap

pytestmark = pytest.mark.slow

#: On the CPU SGLang sizes its static memory from host RAM: it fails when free RAM drops by more
#: than (1 - fraction) while it loads (other test processes on a loaded host). A large fraction
#: allocates nothing more: max_total_tokens caps the KV pool.

NEW_TOKENS = 8
TOP_K = 5
#: max |logprob difference| accepted between fp32 implementations (see module docstring).
FP32_LOGPROB_TOL = 1e-5


@pytest.fixture(scope="module")
def engine(tiny_fp32):
    import rlinf_pangu

    rlinf_pangu.register()
    import sglang as sgl

    from rlinf_pangu.sglang_ext.weight_sync import LOADER

    eng = sgl.Engine(
        model_path=str(tiny_fp32), device="cpu", dtype="float32", attention_backend="torch_native",
        sampling_backend="pytorch", skip_tokenizer_init=True, disable_cuda_graph=True,
        mem_fraction_static=0.5, max_total_tokens=2048, log_level="error", random_seed=0,
        custom_weight_loader=[LOADER],
    )
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def hf_model(tiny_fp32):
    import rlinf_pangu

    rlinf_pangu.register_transformers()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_fp32), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def after_step(tiny_fp32, tmp_path_factory):
    return L.two_rank_megatron_run(tiny_fp32, tmp_path_factory)["after_step"]


def _load(engine, buckets, flush_cache=True) -> None:
    """Push sync buckets the way RLinf's rollout takes them: presharded load_weights per bucket,
    the radix cache flushed after the last one."""
    from rlinf_pangu.sglang_ext.weight_sync import LOADER

    for i, bucket in enumerate(buckets):
        ok, msg = engine.update_weights_from_tensor(
            list(bucket.items()), load_format=LOADER, flush_cache=flush_cache and i == len(buckets) - 1
        )[:2]
        assert ok, msg


def _restore_initial(engine, tiny_fp32) -> None:
    _load(engine, [L.load_hf_state(tiny_fp32)])


def _input_logprobs(engine, tokens: list[int], start: int = 0) -> torch.Tensor:
    out = engine.generate(
        input_ids=[tokens], sampling_params={"max_new_tokens": 1, "temperature": 0},
        return_logprob=True, logprob_start_len=start,
    )[0]
    vals = [v for v, _, _ in out["meta_info"]["input_token_logprobs"]]
    return torch.tensor([float("nan") if v is None else v for v in vals], dtype=torch.float64)


def post_sync_gap(engine, seq: list[int], megatron_lp: torch.Tensor) -> Diff:
    """The post-sync check: SGLang's log-probs of ``seq[1:]`` against Megatron's recomputed ones,
    per token (a missing or non-finite log-prob makes it non-finite)."""
    return logprob_gap("SGLang vs Megatron logprobs after sync", _input_logprobs(engine, seq)[1:], megatron_lp.double())


def test_engine_greedy_tokens_and_top_logprobs_equal_hf(engine, hf_model):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 150000, (n,), generator=g).tolist() for n in (5, 19)]
    outs = engine.generate(
        input_ids=prompts, sampling_params={"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True},
        return_logprob=True, top_logprobs_num=TOP_K,
    )
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            ref = hf_model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
            ref_new = ref[0, len(prompt):].tolist()
            logits = hf_model(ref).logits[0, len(prompt) - 1 : -1].float()
        assert out["output_ids"] == ref_new
        ref_top = torch.log_softmax(logits, -1).topk(TOP_K, -1)
        for step, top in enumerate(out["meta_info"]["output_top_logprobs"]):
            assert [t for _, t, _ in top] == ref_top.indices[step].tolist(), f"top-{TOP_K} ids differ at step {step}"
            check(diff(f"top-{TOP_K} logprobs at step {step}", torch.tensor([v for v, _, _ in top]), ref_top.values[step]), FP32_LOGPROB_TOL)


def test_sync_after_optimizer_step_matches_megatron_and_serves_new_weights(engine, after_step, tiny_fp32):
    seq, megatron_lp = after_step["seq"], after_step["logprobs"]
    _restore_initial(engine, tiny_fp32)
    # A prompt served before the sync fills the radix cache (its prefix KV) with old-weight values.
    before = _input_logprobs(engine, seq, start=len(seq) - 2)[-1].item()
    _load(engine, after_step["buckets"])
    after = _input_logprobs(engine, seq, start=len(seq) - 2)[-1].item()
    check(diff("last logprob of the cached prompt (old weights if the cache was not flushed)",
               torch.tensor([after]), megatron_lp[-1:].double()), FP32_LOGPROB_TOL)
    assert abs(after - before) > 1e-3, "the optimizer step did not change this logprob: the check would be blind"
    check(post_sync_gap(engine, seq, megatron_lp), FP32_LOGPROB_TOL)


def test_negative_sync_without_cache_flush_serves_the_stale_prefix(engine, after_step, tiny_fp32):
    """Sensitivity of the check above: without the flush RLinf does, the cached prompt's prefix
    KV (old weights) is reused and the logprob misses Megatron's (RLinf #96)."""
    seq, megatron_lp = after_step["seq"], after_step["logprobs"]
    _restore_initial(engine, tiny_fp32)
    _input_logprobs(engine, seq, start=len(seq) - 2)
    _load(engine, after_step["buckets"], flush_cache=False)
    stale = _input_logprobs(engine, seq, start=len(seq) - 2)[-1].item()
    assert abs(stale - megatron_lp[-1].item()) > 1e-3
    engine.flush_cache()


def test_negative_dropped_o_proj_bias_fails_post_sync_check(engine, after_step, tiny_fp32):
    from resharding.convertor import PanguConvertor

    class NoOprojBias(PanguConvertor):
        def build_rules(self):
            return [r for r in super().build_rules() if "linear_proj\\.bias" not in r.pattern.pattern]

    _restore_initial(engine, tiny_fp32)
    bad = NoOprojBias(L.reshard_config_rollout_tp1(tiny_fp32), strict=False, packed=True).convert(after_step["megatron_layers"])
    assert L.is_one_packed_buffer(bad) and not any(k.endswith("o_proj.bias") for k in L.unpacked(bad))
    _load(engine, after_step["buckets_without_layers"] + [bad])
    d = post_sync_gap(engine, after_step["seq"], after_step["logprobs"])
    assert d.finite and d.max_abs > 100 * FP32_LOGPROB_TOL, f"a sync without the o_proj bias passed the check: {d}"


def test_negative_wrong_qkv_split_fails_post_sync_check(engine, after_step, tiny_fp32):
    from resharding.convertor import PanguConvertor

    class PlainQKV(PanguConvertor):
        """Splits linear_qkv as [q | k | v] instead of per query group (RLinf #116's bug)."""

        def convert(self, state_dict):
            out = super().convert(state_dict)
            for name, fused in state_dict.items():
                if ".linear_qkv." in name:
                    prefix = name.replace("decoder.layers.", "model.layers.").split(".self_attention.")[0]
                    suffix = name.rsplit(".", 1)[-1]
                    parts = [out[f"{prefix}.self_attn.{p}_proj.{suffix}"] for p in "qkv"]
                    for p, t in zip("qkv", fused.split([x.shape[0] for x in parts], 0)):
                        out[f"{prefix}.self_attn.{p}_proj.{suffix}"] = t.clone()
            return out

    _restore_initial(engine, tiny_fp32)
    bad = PlainQKV(L.reshard_config_rollout_tp1(tiny_fp32), strict=True, packed=False).convert(after_step["megatron_layers"])
    _load(engine, after_step["buckets_without_layers"] + [bad])
    d = post_sync_gap(engine, after_step["seq"], after_step["logprobs"])
    assert d.finite and d.max_abs > 100 * FP32_LOGPROB_TOL, f"a sync with an ungrouped QKV split passed the check: {d}"

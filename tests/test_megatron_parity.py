"""Pangu built through RLinf's Megatron path matches the HF model, at TP1/TP2/PP2/TP2xPP2/PP4xVPP2.

One launch of 4 gloo ranks (``megatron_ranks.all_checks``) builds every layout through RLinf's
own config validation and ``MegatronModelManager.model_provider_func`` (see that module), loads
an HF Pangu checkpoint with fresh random weights and non-trivial biases / norm weights via the
layout table, runs Megatron's pipeline schedules, and compares with transformers' model in the
same rank; the tests below each read one behaviour from those numbers (start-up and imports
dominate on CPU, so one launch serves all of them).

Tolerance: 1e-5 absolute in fp32. TP changes the summation order (the row-parallel all-reduce
after o_proj and fc2, the vocab-parallel softmax), so bitwise equality is not expected; with
logits of magnitude ~5 the observed gap is ~5e-6 at TP2 (0 at TP1). A layout error is not a
rounding matter: the un-grouped QKV layout is off by ~7 (the negative control).
"""

from __future__ import annotations

import time

import pytest

from compare import CheckFailed, Diff, check, worst_value
from harness import run_ranks

import megatron_ranks as R

pytestmark = pytest.mark.slow

TOL = 1e-5
WORLD = 4
#: 8 layers so that PP4 x VPP2 has one layer per virtual stage; hidden 128, vocab 153376.
LAYERS = 8


@pytest.fixture(scope="module")
def pangu_dir(tmp_path_factory) -> str:
    import rlinf_pangu
    from rlinf_pangu.make_checkpoint import make_checkpoint

    rlinf_pangu.register(sglang=False)
    out = tmp_path_factory.mktemp("megatron-parity") / "pangu-tiny"
    make_checkpoint(out, preset_name="tiny", dtype="fp32", num_hidden_layers=LAYERS)
    return str(out)


@pytest.fixture(scope="module")
def ranks(pangu_dir) -> list[dict]:
    t0 = time.monotonic()
    results = run_ranks(R.all_checks, WORLD, pangu_dir, timeout=900)
    print(f"\n[megatron parity] 4-rank launch: {time.monotonic() - t0:.1f} s; per check (rank 0): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in results[0]["seconds"].items()))
    return results


def _worst(ranks: list[dict], check_name: str, key: str) -> Diff:
    return R.worst_reported(ranks, check_name, key)


def _worst_grad(ranks: list[dict], check_name: str, group: str) -> Diff:
    return R.worst_grad(ranks, check_name, group)


@pytest.mark.parametrize("layout", list(R.LAYOUTS))
def test_every_layer_is_built_and_checked(ranks, layout):
    tp, pp, vpp = R.LAYOUTS[layout]
    held = sorted({layer for r in ranks for chunk in r[layout]["layers"] for layer in chunk})
    assert held == list(range(LAYERS))
    assert {r[layout]["chunks"] for r in ranks} == {vpp or 1}


@pytest.mark.parametrize("layout", list(R.LAYOUTS))
def test_logits_match_hf(ranks, layout):
    check(_worst(ranks, layout, "logits_diff"), TOL)


@pytest.mark.parametrize("layout", list(R.LAYOUTS))
def test_cross_entropy_loss_matches_hf(ranks, layout):
    check(_worst(ranks, layout, "loss_diff"), TOL)


@pytest.mark.parametrize("layout", list(R.LAYOUTS))
@pytest.mark.parametrize("group", ["o_proj_bias", "qkv_bias", "lm_head", "all"])
def test_gradients_match_hf(ranks, layout, group):
    """o_proj bias (replicated over TP), qkv bias (grouped per KV head), lm_head, and every other
    parameter ('all'), each compared shard by shard."""
    check(_worst_grad(ranks, layout, group), TOL)


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("transformer_engine") is not None, reason="Transformer Engine installed"
)
def test_upstream_get_specs_fails_without_transformer_engine(ranks):
    """Why RLinf's get_specs is replaced: even for 'local_gpt' it builds the TE spec too."""
    assert {r["tp1"]["upstream_get_specs"] for r in ranks} == {"TypeError: 'NoneType' object is not callable"}


def test_ungrouped_qkv_layout_fails_the_parity_check(ranks):
    """Negative control: a plain cat([q, k, v]) instead of Pangu's per-group layout is caught."""
    d = _worst(ranks, "tp2", "ungrouped_logits_diff")
    assert d.finite and d.max_abs > 1e3 * TOL, d
    with pytest.raises(CheckFailed):
        test_logits_match_hf([{"tp2": {"logits_diff": d}}], "tp2")


def test_grpo_policy_loss_step_at_tp2pp2_matches_hf(ranks):
    """RLinf's GRPO advantages + policy loss (actor, clipped, dual-clip) on vocab-parallel
    logprobs, forward and backward through Megatron's pipeline schedule at TP2 x PP2."""
    check(_worst(ranks, "grpo", "loss_diff"), TOL)
    hf_loss = worst_value(abs(r["grpo"]["hf_loss"]) for r in ranks if "hf_loss" in r["grpo"])
    assert hf_loss > 1e-3, hf_loss  # a loss that is not trivially zero
    for group in ("o_proj_bias", "qkv_bias", "lm_head", "all"):
        check(_worst_grad(ranks, "grpo", group), TOL)


def test_critic_builds_rlinf_value_head_with_one_value_per_token(ranks):
    heads = {r["critic"]["value_head"] for r in ranks if "value_head" in r["critic"]}
    assert heads == {"rlinf.hybrid_engines.megatron.megatron_model_manager.LinearForLastLayer"}
    shapes = {r["critic"]["values_shape"] for r in ranks if "values_shape" in r["critic"]}
    assert shapes == {(R.BATCH, R.SEQ, 1)}
    check(_worst(ranks, "critic", "values_diff"), TOL)  # = HF final hidden state @ value head


def test_critic_value_loss_step_at_tp2pp2_matches_hf(ranks):
    check(_worst(ranks, "critic", "loss_diff"), TOL)
    check(_worst(ranks, "critic", "value_head_grad_diff"), TOL)
    for group in ("o_proj_bias", "qkv_bias", "all"):
        check(_worst_grad(ranks, "critic", group), TOL)

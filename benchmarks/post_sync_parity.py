"""Post-sync check on the GPU in bf16: after one optimizer step, SGLang serves what Megatron trains.

    python benchmarks/post_sync_parity.py --out $OUT                      # one GPU, 1B-shaped Pangu
    python benchmarks/post_sync_parity.py --device cpu --preset tiny --layers 2 --seqs 2 --len 16  # dry run

In one process, colocated on one GPU: SGLang (triton attention) serves a factory Pangu checkpoint
(bf16, random non-trivial weights and biases); Megatron (TP1, the Pangu spec) holds the same
weights, takes one Adam step on random token sequences and recomputes the logprobs of fixed
sequences; RLinf's ``MegatronCoreWeightReshard`` + Pangu's convertor sync the new weights and
SGLang loads them the way RLinf's rollout does. Judged per token (tests/compare.py) against the
**floor on the same weights**: after the sync, the post-step weights are loaded into SGLang once
more by a path that shares nothing with the sync (``_sync_common.push_reference``), and SGLang's
logprobs then are the floor (bf16 kernels alone). Pass (``sync_testlib.judge_post_sync``): mean
exp(|dlogp|) within the floor's + 2e-3, the worst token within the floor's + 0.02 nats, SGLang
equal to itself across the two loads within 0.02 on every token, the floor itself bf16-sized, and
the stale control (the step without the sync) 10x the margins away. Exit status 1 when it fails.
Also reported: the old pre-step figure (same weights before the step) and the goal mean exp|dlogp|
<= 1.001, which the bf16 floor itself does not meet.

Logits are computed in fp32 from the bf16 hidden states on both sides by default (SGLang's
``enable_fp32_lm_head``; Megatron's output layer applied in fp32 to its final hidden states): bf16
logits alone are quantised to ~2**-8 of their magnitude, which puts a floor of ~1.005 under
mean exp(|dlogp|) whatever the sync does. ``--bf16-lm-head`` measures that floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import _sync_common as C
import torch

import sync_testlib as J  # the post-sync judge the GPU tests use (tests/ is on sys.path via _sync_common)

GOAL = 1.001


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="1b", choices=["tiny", "1b", "7b"])
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--seqs", type=int, default=8, help="sequences checked")
    ap.add_argument("--len", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--lr", type=float, default=1e-3, help="the optimizer step's Adam learning rate")
    ap.add_argument("--bf16-lm-head", action="store_true",
                    help="logits in bf16 on both sides (default: fp32 lm_head, SGLang's enable_fp32_lm_head)")
    ap.add_argument("--model-path", default=None, help="an existing Pangu HF dir (default: a factory checkpoint)")
    ap.add_argument("--work", default=None, help="where the factory checkpoint goes (default: a temp dir)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_results"))
    a = ap.parse_args()
    t_start = time.perf_counter()

    C.register()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    ckpt = a.model_path
    if ckpt is None:
        from rlinf_pangu.make_checkpoint import make_checkpoint

        work = Path(a.work or tempfile.mkdtemp(prefix="post_sync_"))
        overrides = {"num_hidden_layers": a.layers} if a.layers else {}
        ckpt = make_checkpoint(work / f"pangu_{a.preset}", preset_name=a.preset, dtype=a.dtype, seed=0, overwrite=True, **overrides)
        C.log(f"factory checkpoint {ckpt}")
    cfg = C.hf_config(ckpt)

    fp32_head = not a.bf16_lm_head
    eng = C.engine(ckpt, a.device, {"bf16": "bfloat16", "fp32": "float32"}[a.dtype], enable_fp32_lm_head=fp32_head)
    try:
        C.init_megatron(a.device)
        model, tc = C.build_megatron(cfg, dtype, a.device, C.load_hf_state(ckpt))
        seqs = C.random_tokens(a.seqs, a.len, cfg.vocab_size, seed=1)
        train = C.random_tokens(a.seqs, a.len, cfg.vocab_size, seed=2)

        before = C.logprob_gap("pre_step", C.sglang_logprobs(eng, seqs), C.megatron_logprobs(model, seqs, a.device, fp32_head))
        C.log(f"same weights before the step: {before}")
        loss = C.adam_step(model, train, a.lr, a.device)
        megatron_lp = C.megatron_logprobs(model, seqs, a.device, fp32_head)
        stale = C.logprob_gap("no_sync", C.sglang_logprobs(eng, seqs), megatron_lp)
        C.log(f"after the step, no sync: {stale}")

        C.sync(a.device)
        t0 = time.perf_counter()
        n_buckets = C.push_buckets(eng, C.rlinf_sync_buckets(model, tc))
        C.sync(a.device)
        sync_s = time.perf_counter() - t0
        after_lp = C.sglang_logprobs(eng, seqs)
        after = C.logprob_gap("after", after_lp, megatron_lp)
        C.log(f"after the sync: {after}")
        C.push_reference(eng, model, cfg, a.device)
        floor_lp = C.sglang_logprobs(eng, seqs)
        floor = C.logprob_gap("floor", floor_lp, megatron_lp)
        same = C.logprob_gap("sync_vs_floor", after_lp, floor_lp)
        C.log(f"the same post-step weights loaded independently (floor): {floor}")
        C.log(f"SGLang after the sync vs after the independent load: {same}")
    finally:
        eng.shutdown()

    ceiling = J.FLOOR_CEILING if fp32_head else J.FLOOR_CEILING_BF16_LOGITS
    problems = (J.judge_post_sync(after, floor, ceiling) + J.judge_same_weights(same)
                + J.judge_control(stale, floor, "no sync"))
    result = {
        "what": "post-sync check: SGLang vs Megatron logprobs after one optimizer step and RLinf's weight sync, "
                "judged against the floor on the same (post-step) weights",
        "preset": a.preset, "layers": cfg.num_hidden_layers, "dtype": a.dtype, "seqs": a.seqs, "len": a.len,
        "lr": a.lr, "fp32_lm_head": fp32_head, "loss": loss, "buckets": n_buckets, "sync_s": round(sync_s, 3),
        "mean_exp_abs_dlogp": after.mean_exp, "max_abs_dlogp": after.max_abs,
        "floor_mean_exp_abs_dlogp": floor.mean_exp, "floor_max_abs_dlogp": floor.max_abs,
        "sync_vs_floor_max_abs_dlogp": same.max_abs,
        "pre_step_mean_exp_abs_dlogp": before.mean_exp, "pre_step_max_abs_dlogp": before.max_abs,
        "no_sync_mean_exp_abs_dlogp": stale.mean_exp, "no_sync_max_abs_dlogp": stale.max_abs,
        "checks": {d.name: d.as_dict() for d in (after, floor, same, before, stale)},
        "margins": {"mean_exp": J.POST_SYNC_MEAN_EXP_MARGIN, "worst": J.POST_SYNC_WORST_MARGIN, "floor_ceiling": ceiling},
        "problems": problems, "pass": not problems,
        "goal": GOAL, "goal_met": bool(after.finite and after.mean_exp <= GOAL),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    C.write_result(a.out, f"post_sync_parity_{a.device}", result)
    print(("PASS" if result["pass"] else "FAIL: " + "; ".join(problems)) + f" -- after the sync {after}; floor {floor}", flush=True)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()

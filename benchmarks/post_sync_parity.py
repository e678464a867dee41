"""Post-sync check on the GPU in bf16: after one optimizer step, SGLang serves what Megatron trains.

    python benchmarks/post_sync_parity.py --out $OUT                      # one GPU, 1B-shaped Pangu
    python benchmarks/post_sync_parity.py --device cpu --preset tiny --layers 2 --seqs 2 --len 16  # dry run

In one process, colocated on one GPU: SGLang (triton attention) serves a factory Pangu checkpoint
(bf16, random non-trivial weights and biases); Megatron (TP1, the Pangu spec) holds the same
weights, takes one Adam step on random token sequences and recomputes the logprobs of fixed
sequences; RLinf's ``MegatronCoreWeightReshard`` + Pangu's convertor sync the new weights and
SGLang loads them the way RLinf's rollout does. Reported as mean exp(|dlogp|) over all tokens
(goal <= 1.001), with two references from the same run: before the step (same weights on both
sides: the inherent bf16 kernel mismatch) and after the step without the sync (what a broken
sync looks like: it must be far above the goal, or the check is blind).

Logits are computed in fp32 from the bf16 hidden states on both sides by default (SGLang's
``enable_fp32_lm_head``; Megatron's output layer applied in fp32 to its final hidden states): bf16
logits alone are quantised to ~2**-8 of their magnitude, which puts a floor of ~1.005 under
mean exp(|dlogp|) whatever the sync does. ``--bf16-lm-head`` measures that floor.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _sync_common as C
import torch

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

        before = C.mean_exp_abs(C.sglang_logprobs(eng, seqs), C.megatron_logprobs(model, seqs, a.device, fp32_head))
        C.log(f"same weights (before the step): mean exp|dlogp| = {before[0]:.6f}, max |dlogp| = {before[1]:.4f}")
        loss = C.adam_step(model, train, a.lr, a.device)
        megatron_lp = C.megatron_logprobs(model, seqs, a.device, fp32_head)
        stale = C.mean_exp_abs(C.sglang_logprobs(eng, seqs), megatron_lp)
        C.log(f"after the step, no sync: mean exp|dlogp| = {stale[0]:.6f}, max |dlogp| = {stale[1]:.4f}")

        C.sync(a.device)
        t0 = time.perf_counter()
        n_buckets = C.push_buckets(eng, C.rlinf_sync_buckets(model, tc))
        C.sync(a.device)
        sync_s = time.perf_counter() - t0
        after = C.mean_exp_abs(C.sglang_logprobs(eng, seqs), megatron_lp)
        C.log(f"after the sync: mean exp|dlogp| = {after[0]:.6f} (goal <= {GOAL}), max |dlogp| = {after[1]:.4f}")
    finally:
        eng.shutdown()

    result = {
        "what": "post-sync check: SGLang vs Megatron logprobs after one optimizer step and RLinf's weight sync",
        "preset": a.preset, "layers": cfg.num_hidden_layers, "dtype": a.dtype, "seqs": a.seqs, "len": a.len,
        "lr": a.lr, "fp32_lm_head": fp32_head, "loss": loss, "buckets": n_buckets, "sync_s": round(sync_s, 3),
        "mean_exp_abs_dlogp": after[0], "max_abs_dlogp": after[1],
        "same_weights_mean_exp_abs_dlogp": before[0], "same_weights_max_abs_dlogp": before[1],
        "no_sync_mean_exp_abs_dlogp": stale[0], "no_sync_max_abs_dlogp": stale[1],
        "goal": GOAL, "pass": after[0] <= GOAL and stale[0] > GOAL,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    C.write_result(a.out, f"post_sync_parity_{a.device}", result)
    print(("PASS" if result["pass"] else "FAIL") + f": mean exp|dlogp| = {after[0]:.6f} (goal <= {GOAL})", flush=True)


if __name__ == "__main__":
    main()

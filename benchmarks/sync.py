"""Benchmark: Megatron -> SGLang weight sync of a 7B-shaped Pangu colocated on one GPU, against a
plain device copy of the same bytes in the same run.

    python benchmarks/sync.py --out $OUT                                   # one H100/H200
    python benchmarks/sync.py --device cpu --preset tiny --layers 2 --repeats 1   # dry run

In one process: SGLang serves the 7B shapes (bf16, ``load_format=dummy``, triton attention);
Megatron (TP1, the Pangu spec, bf16) holds its own weights on the same GPU. Each repeat updates
every Megatron weight in place (a stand-in for an optimizer step), then times, from the updated
weights to SGLang serving them:

* ``reshard``: RLinf's ``divide_model_to_bucket`` + ``gather_and_reshard_model`` per bucket
  (128 MiB buckets, Pangu's TP reshard and convertor: q/k/v and gate/up split, renamed);
* ``load``: each bucket into SGLang the way RLinf's rollout loads it (CUDA IPC handles to the
  scheduler, presharded ``load_weights``), the radix cache flushed after the last;
* ``serve``: the first request after the sync (prefill + one token) returning.

The baseline is one device-to-device copy of every Megatron parameter into a preallocated buffer
of the same size (the bytes any sync must move at least once). Goal: sync <= 10x the copy. After
the last repeat a logprob check confirms SGLang serves Megatron's weights (bf16 kernel noise only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import _sync_common as C
import torch

GOAL_RATIO = 10.0


def _config_dir(preset: str, layers: int | None, dtype: str, work: Path) -> Path:
    """A config-only Pangu dir (SGLang loads dummy weights): no 15 GB of random safetensors."""
    from rlinf_pangu.make_checkpoint import DTYPES, hf_config_dict
    from rlinf_pangu.presets import preset as get_preset

    cfg = get_preset(preset, **({"num_hidden_layers": layers} if layers else {}))
    d = work / f"pangu_{preset}_config"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf_config_dict(cfg, DTYPES[dtype]), indent=2))
    return d


def _copy_baseline(params: list[torch.Tensor], device: str) -> float:
    total = sum(p.numel() * p.element_size() for p in params)
    dst = torch.empty(total, dtype=torch.uint8, device=device)
    views, off = [], 0
    for p in params:
        n = p.numel() * p.element_size()
        views.append(dst[off : off + n])
        off += n
    C.sync(device)
    t0 = time.perf_counter()
    for v, p in zip(views, params):
        v.copy_(p.detach().reshape(-1).view(torch.uint8))
    C.sync(device)
    dt = time.perf_counter() - t0
    del dst, views
    if device == "cuda":
        torch.cuda.empty_cache()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="7b", choices=["tiny", "1b", "7b"])
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=128, help="RLinf's bucket capacity (its default: 128)")
    ap.add_argument("--mem-fraction", type=float, default=0.35, help="SGLang's mem_fraction_static (GPU)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_results"))
    a = ap.parse_args()

    C.register()
    work = Path(a.work or tempfile.mkdtemp(prefix="sync_bench_"))
    cfg_dir = _config_dir(a.preset, a.layers, "bf16", work)
    cfg = C.hf_config(cfg_dir)
    extra = {"load_format": "dummy"}
    if a.device == "cuda":
        extra["mem_fraction_static"] = a.mem_fraction
    eng = C.engine(cfg_dir, a.device, "bfloat16", **extra)  # first: it sizes itself from free memory
    rounds = []
    try:
        C.init_megatron(a.device)
        model, tc = C.build_megatron(cfg, torch.bfloat16, a.device)
        params = [p for p in model.parameters()]
        nbytes = sum(p.numel() * p.element_size() for p in params)
        C.log(f"Megatron {a.preset}: {sum(p.numel() for p in params) / 1e9:.2f} B params, {nbytes / 2**30:.2f} GiB")
        probe = C.random_tokens(1, 16, cfg.vocab_size, seed=3)
        for r in range(a.repeats + 1):  # round 0 warms up (allocator, IPC, kernels)
            with torch.no_grad():
                for p in params:
                    p.add_(torch.randn_like(p), alpha=1e-3)
            copy_s = _copy_baseline(params, a.device)
            C.sync(a.device)
            t0 = time.perf_counter()
            reshard_s = load_s = 0.0
            buckets = C.rlinf_sync_buckets(model, tc, bucket_capacity=a.bucket_mb * 2**20)
            n = 0
            while True:
                tb = time.perf_counter()
                bucket = next(buckets, None)
                C.sync(a.device)
                reshard_s += time.perf_counter() - tb
                if bucket is None:
                    break
                tl = time.perf_counter()
                C._update(eng, bucket, C.LOADER, flush=False)
                load_s += time.perf_counter() - tl
                n += 1
                del bucket
            tf = time.perf_counter()
            eng.flush_cache()
            eng.generate(input_ids=probe, sampling_params={"max_new_tokens": 1, "temperature": 0})
            serve_s = time.perf_counter() - tf
            total = time.perf_counter() - t0
            row = {"round": r, "buckets": n, "sync_s": total, "reshard_s": reshard_s, "load_s": load_s,
                   "flush_and_first_request_s": serve_s, "copy_s": copy_s, "ratio": total / copy_s}
            C.log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
            if r:
                rounds.append(row)
        seqs = C.random_tokens(2, 64, cfg.vocab_size, seed=4)
        check = C.mean_exp_abs(C.sglang_logprobs(eng, seqs), C.megatron_logprobs(model, seqs, a.device))
        C.log(f"after the last sync: mean exp|dlogp| = {check[0]:.5f}, max |dlogp| = {check[1]:.4f}")
    finally:
        eng.shutdown()

    med = {k: statistics.median(r[k] for r in rounds) for k in ("sync_s", "reshard_s", "load_s", "flush_and_first_request_s", "copy_s")}
    ratio = med["sync_s"] / med["copy_s"]
    result = {
        "what": "Megatron -> SGLang weight sync (RLinf reshard + Pangu convertor + RLinf-style presharded load) vs one device copy of the same bytes",
        "preset": a.preset, "layers": cfg.num_hidden_layers, "dtype": "bf16", "bytes": nbytes,
        "bucket_mb": a.bucket_mb, "rounds": rounds, "median": med, "ratio": ratio, "goal_ratio": GOAL_RATIO,
        "pass": ratio <= GOAL_RATIO, "post_sync_mean_exp_abs_dlogp": check[0], "post_sync_max_abs_dlogp": check[1],
        "sync_GB_per_s": nbytes / med["sync_s"] / 1e9, "copy_GB_per_s": nbytes / med["copy_s"] / 1e9,
    }
    C.write_result(a.out, f"sync_{a.preset}_{a.device}", result)
    print(("PASS" if result["pass"] else "FAIL") + f": sync {med['sync_s']:.3f} s vs copy {med['copy_s']:.4f} s = {ratio:.1f}x (goal <= {GOAL_RATIO}x)", flush=True)


if __name__ == "__main__":
    main()

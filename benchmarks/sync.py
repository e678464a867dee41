"""Benchmark: Megatron -> SGLang weight sync of a 7B-shaped Pangu colocated on one GPU, against a
plain device copy of the same bytes in the same run.

    python benchmarks/sync.py --out $OUT                                   # one H100/H200
    python benchmarks/sync.py --device cpu --preset tiny --layers 2 --repeats 1   # dry run

In one process: SGLang serves the 7B shapes (bf16, ``load_format=dummy``, triton attention);
Megatron (TP1, the Pangu spec, bf16) holds its own weights on the same GPU. Each repeat updates
every Megatron weight in place (a stand-in for an optimizer step), then times, from the updated
weights to SGLang serving them:

* ``reshard``: RLinf's ``divide_model_to_bucket`` + ``gather_and_reshard_model`` per bucket
  (``--bucket-mb`` buckets, Pangu's TP reshard and convertor: q/k/v and gate/up split, renamed);
* ``load``: each bucket into SGLang the way RLinf's rollout loads it (CUDA IPC handles to the
  scheduler, presharded ``load_weights``), the radix cache flushed with the last (as RLinf's
  scheduler does, inside its sync call);
* ``serve``: the first request after the sync (prefill + one token) returning. The same request
  with no sync before it (cache flushed, so it prefills too) is timed in each round as
  ``request_alone_s``: SGLang's own latency, part of every variant's total.

``load`` is split further: SGLang's ``load_weights`` as timed inside the scheduler
(``_timed_loader``), and the transport around it (CUDA IPC handles serialised, sent, opened).

Variants, interleaved round by round in the same process against the same engine:
``--transforms pangu`` (what Pangu ships: the convertor's splits as views, each tensor copied
once, into one packed buffer per bucket, so one CUDA IPC handle per bucket), ``pangu-tensors``
(the same copy into a tensor per HF name, a handle each) and ``rlinf`` (the same rules run by
RLinf's own ``TransformFunc``s behind the copying reshard: two or three copies, a handle per
tensor); ``--bucket-mb`` takes several capacities to compare.
``--modes``: ``overlap`` follows RLinf's order, where the actor reshards bucket i+1 while SGLang
loads bucket i (``MegatronActor.sync_model_to_rollout`` sends asynchronously and waits for a send
only before the next one; here the next bucket waits for the previous *load*, which is stricter),
so only the total is meaningful; ``serial`` times reshard and load one after the other, which
splits the time into its parts. The first of each list is the configuration the goal is judged on:
by default Pangu's shipped convertor, 2 GiB buckets (Pangu's configs), RLinf's order.

The baseline is one device-to-device copy of every Megatron parameter into a preallocated buffer
of the same size (the bytes any sync must move at least once). Goal: sync <= 10x the copy. After
the last repeat a logprob check confirms SGLang serves Megatron's weights (bf16 kernel noise only).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
import os
import statistics
import tempfile
import time
from pathlib import Path

import _sync_common as C
import _timed_loader
import torch

TIMED_LOADER = _timed_loader.LOADER

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


def _with_last(buckets):
    """``(bucket, is_last)``: the last bucket's load flushes the radix cache, as RLinf's scheduler
    flushes inside the same ``sync_hf_weight`` call, not in a request of its own."""
    pending = next(buckets, None)
    while pending is not None:
        nxt = next(buckets, None)
        yield pending, nxt is None
        pending = nxt


def _push_serial(eng, buckets, device: str) -> tuple[int, float, float]:
    """Reshard a bucket, load it, then the next: ``(buckets, reshard s, load s)``, each synchronised.
    (The look-ahead that spots the last bucket reshards the next one before the current loads; it
    is timed as reshard all the same.)"""
    n, reshard_s, load_s = 0, 0.0, 0.0
    it = _with_last(buckets)
    while True:
        tb = time.perf_counter()
        item = next(it, None)
        C.sync(device)
        reshard_s += time.perf_counter() - tb
        if item is None:
            return n, reshard_s, load_s
        tl = time.perf_counter()
        C._update(eng, item[0], TIMED_LOADER, flush=item[1])
        load_s += time.perf_counter() - tl
        n += 1
        del item


def _push_overlapped(eng, buckets) -> tuple[int, float, float]:
    """RLinf's order: the actor reshards bucket i+1 while SGLang loads bucket i (its sends are
    asynchronous, one bucket in flight). ``(buckets, s producing buckets, s waiting on loads)``:
    the two overlap, so they do not add up to the sync."""
    n, produce_s, wait_s = 0, 0.0, 0.0
    it = _with_last(buckets)
    with ThreadPoolExecutor(1, thread_name_prefix="sglang-load") as pool:
        pending = None
        while True:
            tb = time.perf_counter()
            item = next(it, None)
            tw = time.perf_counter()
            produce_s += tw - tb
            if pending is not None:
                pending.result()
            wait_s += time.perf_counter() - tw
            if item is None:
                return n, produce_s, wait_s
            pending = pool.submit(C._update, eng, item[0], TIMED_LOADER, item[1])
            n += 1
            del item


def _sync_round(eng, model, tc, params, probe, device: str, transforms: str, bucket_mb: int, mode: str,
                times_file: Path) -> dict:
    """Update every weight, then time one sync of it into SGLang (see the module docstring)."""
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p), alpha=1e-3)
    copy_s = _copy_baseline(params, device)
    eng.flush_cache()  # the same request with no sync before it: SGLang's own latency for it
    tr = time.perf_counter()
    eng.generate(input_ids=probe, sampling_params={"max_new_tokens": 1, "temperature": 0})
    request_alone_s = time.perf_counter() - tr
    times_file.write_text("")
    C.sync(device)
    t0 = time.perf_counter()
    buckets = C.rlinf_sync_buckets(model, tc, transforms=transforms, bucket_capacity=bucket_mb * 2**20)
    n, reshard_s, load_s = _push_overlapped(eng, buckets) if mode == "overlap" else _push_serial(eng, buckets, device)
    tf = time.perf_counter()
    eng.generate(input_ids=probe, sampling_params={"max_new_tokens": 1, "temperature": 0})
    serve_s = time.perf_counter() - tf
    total = time.perf_counter() - t0
    inside = [float(line.split()[0]) for line in times_file.read_text().split("\n") if line.strip()]
    return {"transforms": transforms, "bucket_mb": bucket_mb, "mode": mode, "buckets": n, "sync_s": total,
            "reshard_s": reshard_s, "load_s": load_s, "sglang_load_weights_s": sum(inside),
            "load_transport_s": load_s - sum(inside), "first_request_s": serve_s, "request_alone_s": request_alone_s, "copy_s": copy_s,
            "ratio": total / copy_s}


def _name(transforms: str, bucket_mb: int, mode: str) -> str:
    return f"{transforms}@{bucket_mb}MiB/{mode}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="7b", choices=["tiny", "1b", "7b"])
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", default="2048,1024,128",
                    help="sync bucket capacity, comma-separated to compare; the first is judged (Pangu's configs: "
                         "actor.sync_bucket_capacity = 2048 MiB; RLinf's default: 128)")
    ap.add_argument("--transforms", default=",".join(C.TRANSFORMS),
                    help="comma-separated: pangu (what Pangu ships: one copy into one packed buffer per bucket), "
                         "pangu-tensors (the same copy, a tensor per HF name), rlinf (RLinf's own TransformFuncs)")
    ap.add_argument("--modes", default="overlap,serial",
                    help="comma-separated: overlap (RLinf's order: the next bucket resharded while the previous loads) "
                         "and/or serial (reshard, load, reshard, ...: the time split into its parts)")
    ap.add_argument("--mem-fraction", type=float, default=0.35, help="SGLang's mem_fraction_static (GPU)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_results"))
    a = ap.parse_args()
    modes = a.modes.split(",")
    variants = [(t, int(b), m) for t in a.transforms.split(",") for b in a.bucket_mb.split(",") for m in modes]
    shipped = ("pangu", int(a.bucket_mb.split(",")[0]), modes[0])

    C.register()
    work = Path(a.work or tempfile.mkdtemp(prefix="sync_bench_"))
    times_file = work / "loader_times.txt"
    os.environ[_timed_loader.ENV] = str(times_file)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    cfg_dir = _config_dir(a.preset, a.layers, "bf16", work)
    cfg = C.hf_config(cfg_dir)
    extra = {"load_format": "dummy", "custom_weight_loader": [C.LOADER, TIMED_LOADER]}
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
        for r in range(a.repeats + 1):  # round 0 warms each variant up (allocator, IPC, kernels)
            for transforms, bucket_mb, mode in variants:  # interleaved: drift hits every variant alike
                row = {"round": r, **_sync_round(eng, model, tc, params, probe, a.device, transforms, bucket_mb, mode, times_file)}
                C.log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
                if r:
                    rounds.append(row)
        # the last sync of every round set was the last variant; end on the shipped one for the check
        _sync_round(eng, model, tc, params, probe, a.device, *shipped, times_file)
        seqs = C.random_tokens(2, 64, cfg.vocab_size, seed=4)
        check = C.mean_exp_abs(C.sglang_logprobs(eng, seqs), C.megatron_logprobs(model, seqs, a.device))
        C.log(f"after the last sync: mean exp|dlogp| = {check[0]:.5f}, max |dlogp| = {check[1]:.4f}")
    finally:
        eng.shutdown()

    keys = ("sync_s", "reshard_s", "load_s", "sglang_load_weights_s", "load_transport_s", "first_request_s", "request_alone_s", "copy_s", "ratio")
    by_variant = {}
    for transforms, bucket_mb, mode in variants:
        rows = [r for r in rounds if (r["transforms"], r["bucket_mb"], r["mode"]) == (transforms, bucket_mb, mode)]
        med = {k: statistics.median(r[k] for r in rows) for k in keys}
        med["buckets"] = rows[0]["buckets"]
        by_variant[_name(transforms, bucket_mb, mode)] = med
    main_med = by_variant[_name(*shipped)]
    ratio = main_med["sync_s"] / main_med["copy_s"]
    result = {
        "what": "Megatron -> SGLang weight sync (RLinf reshard + Pangu convertor + RLinf-style presharded load) vs one device copy of the same bytes",
        "preset": a.preset, "layers": cfg.num_hidden_layers, "dtype": "bf16", "bytes": nbytes,
        "shipped": _name(*shipped), "rounds": rounds, "median": by_variant, "ratio": ratio, "goal_ratio": GOAL_RATIO,
        "pass": ratio <= GOAL_RATIO, "post_sync_mean_exp_abs_dlogp": check[0], "post_sync_max_abs_dlogp": check[1],
        "sync_GB_per_s": nbytes / main_med["sync_s"] / 1e9, "copy_GB_per_s": nbytes / main_med["copy_s"] / 1e9,
    }
    C.write_result(a.out, f"sync_{a.preset}_{a.device}", result)
    for name, med in by_variant.items():
        print(f"{name:>26}: sync {med['sync_s']:.3f} s (reshard {med['reshard_s']:.3f}, load {med['load_s']:.3f} = "
              f"load_weights {med['sglang_load_weights_s']:.3f} + transport {med['load_transport_s']:.3f}, "
              f"first request {med['first_request_s']:.3f} (alone {med['request_alone_s']:.3f}); {med['buckets']} buckets) = {med['ratio']:.1f}x copy", flush=True)
    print(("PASS" if result["pass"] else "FAIL") + f": {result['shipped']} sync {main_med['sync_s']:.3f} s vs copy {main_med['copy_s']:.4f} s = {ratio:.1f}x (goal <= {GOAL_RATIO}x)", flush=True)


if __name__ == "__main__":
    main()

"""Training-step throughput of Pangu on megatron-core: the o_proj bias's cost, and TE vs local.

1. Does the o_proj bias (a row-parallel linear with its bias forced on, added by the layer's
   bias-dropout-add) cost training throughput? Pangu and the same GPTModel without that bias are
   built from the same ``TransformerConfig`` (``rlinf_pangu.megatron.config``) and the same spec
   except ``linear_proj`` (``rlinf_pangu.megatron.spec``), megatron-core's local modules or
   Transformer Engine's (``--transformer-impl``, RLinf's knob), trained with the same AdamW on the
   same random batches; rounds alternate between the two so clock/thermal drift hits both, and the
   ratio is of medians from one run. Goal: ratio >= 0.97, judged on the per-round paired ratios
   (``judge_ratio``: meets/misses only when their interquartile range is wholly on one side, else
   unresolved). ``--profile-steps N`` then profiles N steps of each model and records the operators
   whose per-step count or self time differs: where a bias cost goes.
2. ``--compare-impl 4096,16384``: Pangu's tokens/s with TE vs the local spec at those token counts,
   in the same run (one model on the GPU at a time: four 1B models and 16k-token activations do not
   fit together; each variant: warm-up, then medians of rounds). Variants (``--variants``):
   ``te`` and ``local`` (one sequence of N tokens: the kernels compared like for like), ``te-thd``
   (GRPO-like mixed lengths totalling N, packed by RLinf's own ``preprocess_packed_seqs`` into THD:
   what RLinf runs with TE) and ``local-padded`` (the same sequences right-padded to the longest:
   what RLinf's unpacked path computes without TE). An out-of-memory variant is recorded as such.

Every JSON names ``transformer_impl`` and the packing of each measurement, the device, the commit
(``$RLINF_PANGU_COMMIT`` where there is no git checkout) and the TE version.

GPU, the bias cost with megatron-core's modules (masked-softmax/RoPE fusions off: no TE/apex
kernels), as in docs/runs/gpu-h100-2026-11-27::

    python benchmarks/megatron_step.py --preset 1b --device cuda --dtype bf16 --transformer-impl local \\
        --seq 2048 --micro-batch 2 --warmup 3 --rounds 5 --steps 5 --out runs/megatron_step_1b.json

GPU with Transformer Engine, both questions in one run (issue 22; scripts/gpu_te_session.sh)::

    python benchmarks/megatron_step.py --preset 1b --device cuda --dtype bf16 --transformer-impl transformer_engine \\
        --seq 2048 --micro-batch 2 --warmup 3 --rounds 7 --steps 5 --profile-steps 2 --compare-impl 4096,16384 \\
        --out $OUT/te_step.json

CPU smoke run (checks the script, not a measurement; TE variants are skipped without TE)::

    python benchmarks/megatron_step.py --preset tiny --device cpu --dtype fp32 --layers 2 --transformer-impl local \\
        --seq 32 --micro-batch 1 --warmup 1 --rounds 2 --steps 1 --compare-impl 64,96 --variants local,local-padded
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger("megatron_step")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GOAL = 0.97
REPO = Path(__file__).resolve().parents[1]
#: --compare-impl variants: name -> (transformer_impl, packing)
VARIANTS: dict[str, tuple[str, str]] = {
    "te": ("transformer_engine", "none: one sequence of N tokens (bshd)"),
    "te-thd": ("transformer_engine", "THD: mixed lengths totalling N, packed by RLinf's preprocess_packed_seqs"),
    "local": ("local", "none: one sequence of N tokens (bshd)"),
    "local-padded": ("local", "padded: the te-thd sequences right-padded to the longest (RLinf's unpacked path)"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="1b", help="rlinf_pangu.presets name (1b, 7b, tiny)")
    p.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (shrink)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model before the rounds")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (pangu, baseline)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--tc", action="append", default=[], metavar="FIELD=VALUE",
                   help="TransformerConfig override for both models, e.g. --tc bias_dropout_fusion=true")
    p.add_argument("--transformer-impl", choices=["auto", "transformer_engine", "local"], default="auto",
                   help="modules of the bias-cost comparison (RLinf's actor.megatron.transformer_impl); "
                        "auto: transformer_engine where TE is installed")
    p.add_argument("--compare-impl", default="", metavar="N,N",
                   help="also measure Pangu's tokens/s per variant at these token counts (e.g. 4096,16384)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"variants of --compare-impl ({', '.join(VARIANTS)})")
    p.add_argument("--skip-bias-cost", action="store_true", help="only the --compare-impl part")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="after the rounds, profile this many steps of each model (torch.profiler) and record the "
                        "operators whose per-step count or self time differs between the two: where a bias cost goes")
    return p.parse_args(argv)


def _tc_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        low = raw.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        else:
            try:
                out[key] = int(raw)
            except ValueError:
                try:
                    out[key] = float(raw)
                except ValueError:
                    out[key] = raw
    return out


# --------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_rank(device: str) -> None:
    """A world of one (megatron-core's layers need its parallel state even at TP1/PP1)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if device == "cpu":
        # CPU is a smoke run only: borrow the test harness's cuda->cpu redirects (megatron-core
        # allocates rotary caches and attention buffers on torch.cuda.current_device()).
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from harness import cpu_redirects

        cpu_redirects.apply()
    else:
        torch.cuda.set_device(0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    ps.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)


def te_installed() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_impl(impl: str) -> str:
    """``auto`` -> what RLinf's default gives on this host (TE where installed)."""
    if impl == "auto":
        return "transformer_engine" if te_installed() else "local"
    if impl == "transformer_engine" and not te_installed():
        raise SystemExit("--transformer-impl transformer_engine: transformer_engine is not installed here")
    return impl


def layer_spec(kind: str, impl: str):
    """``kind`` pangu (o_proj bias) or baseline (no o_proj bias), with ``impl``'s modules."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    from rlinf_pangu.megatron.spec import pangu_layer_spec

    te = impl == "transformer_engine"
    if kind == "pangu":
        return pangu_layer_spec(use_te=te)
    return get_gpt_layer_with_transformer_engine_spec() if te else get_gpt_layer_local_spec(normalization="RMSNorm")


def build_model(hf_cfg: dict[str, Any], dtype: torch.dtype, device: str, spec, tc_overrides: dict[str, Any] | None = None):
    from megatron.core.models.gpt import GPTModel

    from rlinf_pangu.megatron.config import gpt_model_kwargs, pangu_transformer_config

    tc = pangu_transformer_config(hf_cfg, dtype=dtype, use_cpu_initialization=(device == "cpu"), **(tc_overrides or {}))
    torch.manual_seed(0)
    m = GPTModel(config=tc, transformer_layer_spec=spec, pre_process=True, post_process=True,
                 parallel_output=True, **gpt_model_kwargs(hf_cfg))
    return m.to(device).train()  # params are already params_dtype (no cast: it would hit RoPE buffers)


def build_models(hf_cfg: dict[str, Any], dtype: torch.dtype, device: str, tc_overrides: dict[str, Any] | None = None,
                 impl: str = "local"):
    """(pangu, baseline): the same GPTModel config and modules; only the o_proj bias differs."""
    models = {
        name: build_model(hf_cfg, dtype, device, layer_spec(kind, impl), tc_overrides)
        for name, kind in (("pangu (o_proj bias)", "pangu"), ("baseline (no o_proj bias)", "baseline"))
    }
    n_p, n_b = (sum(p.numel() for p in m.parameters()) for m in models.values())
    expected = hf_cfg["num_hidden_layers"] * hf_cfg["hidden_size"]
    if n_p - n_b != expected:
        raise RuntimeError(f"models differ by {n_p - n_b} parameters, expected {expected} (the o_proj biases)")
    return models


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One model, its optimizer and a fixed pool of random batches (bshd: ``micro_batch`` x ``seq``)."""

    def __init__(self, model, device: str, vocab: int, micro_batch: int, seq: int) -> None:
        self.model, self.device = model, device
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=(device == "cuda"))
        g = torch.Generator(device="cpu").manual_seed(7)
        self.batches = [
            (torch.randint(0, vocab, (micro_batch, seq), generator=g).to(device),
             torch.randint(0, vocab, (micro_batch, seq), generator=g).to(device))
            for _ in range(4)
        ]
        self.pos = torch.arange(seq, device=device).unsqueeze(0).expand(micro_batch, seq)
        self.i = 0
        self.last_loss = float("nan")

    def loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, position_ids=self.pos, attention_mask=None, labels=labels).float().mean()

    def step(self) -> None:
        ids, labels = self.batches[self.i % len(self.batches)]
        self.i += 1
        loss = self.loss(ids, labels)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = loss.detach()

    def timed(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return (time.perf_counter() - t0) / steps


def mixed_lengths(tokens: int, seed: int = 11) -> list[int]:
    """GRPO-like unequal sequence lengths (each N/16..N/4) that total exactly ``tokens``."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = max(1, tokens // 16), max(2, tokens // 4)
    out: list[int] = []
    while sum(out) < tokens:
        out.append(int(torch.randint(lo, hi + 1, (1,), generator=g)))
    out[-1] -= sum(out) - tokens
    return [n for n in out if n > 0]


class PackedTrainer(Trainer):
    """The same model trained on mixed-length sequences packed into THD form by RLinf's own
    ``preprocess_packed_seqs`` (its padding mask -> cu_seqlens), as RLinf's forward does with TE."""

    def __init__(self, model, device: str, vocab: int, lengths: list[int]) -> None:
        from rlinf.hybrid_engines.megatron.utils import preprocess_packed_seqs

        super().__init__(model, device, vocab, 1, 1)
        g = torch.Generator(device="cpu").manual_seed(7)
        width = max(lengths)
        mask = torch.zeros(len(lengths), width, dtype=torch.bool)
        for i, n in enumerate(lengths):
            mask[i, :n] = True
        self.batches = []
        for _ in range(4):
            ids = torch.randint(0, vocab, (len(lengths), width), generator=g).to(device)
            labels = torch.randint(0, vocab, (len(lengths), width), generator=g).to(device)
            packed_ids, params = preprocess_packed_seqs(ids, mask.to(device), pre_process=True)
            packed_labels, _ = preprocess_packed_seqs(labels, mask.to(device), pre_process=True)
            self.batches.append((packed_ids, (packed_labels, params)))
        total = self.batches[0][0].shape[1]
        self.pos = torch.arange(total, device=device).unsqueeze(0)

    def loss(self, ids: torch.Tensor, labels_and_params) -> torch.Tensor:
        labels, params = labels_and_params
        out = self.model(input_ids=ids, position_ids=self.pos, attention_mask=None, labels=labels, packed_seq_params=params)
        return out.float().mean()


class PaddedTrainer(Trainer):
    """The same mixed-length sequences right-padded to the longest, loss over real tokens only:
    what RLinf's unpacked forward computes (causal attention; the padding is never attended to)."""

    def __init__(self, model, device: str, vocab: int, lengths: list[int]) -> None:
        width = max(lengths)
        super().__init__(model, device, vocab, len(lengths), width)
        self.mask = torch.zeros(len(lengths), width, device=device)
        for i, n in enumerate(lengths):
            self.mask[i, :n] = 1.0

    def loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_token = self.model(input_ids=ids, position_ids=self.pos, attention_mask=None, labels=labels).float()
        return (per_token * self.mask).sum() / self.mask.sum()


# --------------------------------------------------------------------------------------
# Provenance (also read by tests/test_te_gpu.py)
# --------------------------------------------------------------------------------------


def commit() -> str:
    """The commit measured: ``$RLINF_PANGU_COMMIT`` (a copy without .git, e.g. the GPU machine), else git."""
    if os.environ.get("RLINF_PANGU_COMMIT"):
        return os.environ["RLINF_PANGU_COMMIT"]
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown (set RLINF_PANGU_COMMIT)"


def provenance() -> dict[str, Any]:
    """Device, commit and the versions that decide the numbers (TE's three distributions included)."""
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "commit": commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "megatron_core": version("megatron-core"),
        "transformer_engine": {d: version(d) for d in ("transformer-engine", "transformer-engine-cu13", "transformer-engine-torch")},
    }
    if torch.cuda.is_available():
        info["cudnn_torch"] = torch.backends.cudnn.version()
    if "transformer_engine.pytorch" in sys.modules:
        try:
            from transformer_engine.pytorch.utils import get_cudnn_version

            info["cudnn_te"] = ".".join(map(str, get_cudnn_version()))
        except Exception as e:  # noqa: BLE001 - provenance only
            info["cudnn_te"] = f"unknown ({type(e).__name__})"
    return info


# --------------------------------------------------------------------------------------
# The two measurements
# --------------------------------------------------------------------------------------


def _setup(args: argparse.Namespace) -> tuple[dict[str, Any], torch.dtype]:
    import rlinf_pangu
    from rlinf_pangu.presets import preset

    rlinf_pangu.register(rlinf=False, sglang=False)
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    hf_cfg = preset(args.preset, **overrides)
    init_single_rank(args.device)
    return hf_cfg, DTYPES[args.dtype]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The o_proj bias's cost: Pangu vs the same GPTModel without it, alternating rounds."""
    hf_cfg, dtype = _setup(args)
    impl = resolve_impl(args.transformer_impl)
    tc_overrides = _tc_overrides(args.tc)
    models = build_models(hf_cfg, dtype, args.device, tc_overrides, impl)
    tokens = args.micro_batch * args.seq
    trainers = {n: Trainer(m, args.device, hf_cfg["vocab_size"], args.micro_batch, args.seq) for n, m in models.items()}

    peak: dict[str, float] = {}
    for name, tr in trainers.items():  # warm-up: allocator, optimizer state, kernels
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            tr.step()
        _sync(args.device)
        if args.device == "cuda":
            peak[name] = torch.cuda.max_memory_allocated() / 2**30

    per_step: dict[str, list[float]] = {n: [] for n in trainers}
    for r in range(args.rounds):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))  # alternate who goes first
        for name in order:
            per_step[name].append(trainers[name].timed(args.steps))
        log.info("round %d/%d: %s", r + 1, args.rounds,
                 ", ".join(f"{n} {per_step[n][-1] * 1e3:.1f} ms" for n in trainers))

    med = {n: statistics.median(v) for n, v in per_step.items()}
    pangu, base = list(trainers)
    judged = judge_ratio(per_step[pangu], per_step[base], GOAL)
    profiled = {}
    if args.profile_steps:
        rows = {n: profile_steps(tr, args.profile_steps) for n, tr in trainers.items()}
        profiled = {"profile": {"steps": args.profile_steps, **profile_diff(rows[pangu], rows[base])}}
    result = {
        "preset": args.preset,
        "layers": hf_cfg["num_hidden_layers"],
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "dtype": args.dtype,
        "transformer_impl": impl,
        "packing": "none: micro-batch x seq random tokens (bshd)",
        "seq": args.seq,
        "micro_batch": args.micro_batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "tc_overrides": tc_overrides,
        "torch": torch.__version__,
        "megatron_core": __import__("megatron.core", fromlist=["__version__"]).__version__,
        "models": {
            n: {
                "params": sum(p.numel() for p in models[n].parameters()),
                "median_step_ms": med[n] * 1e3,
                "tokens_per_s": tokens / med[n],
                "step_ms_all": [s * 1e3 for s in per_step[n]],
                "peak_mem_gib": peak.get(n),
                "last_loss": float(trainers[n].last_loss),
            }
            for n in trainers
        },
        "ratio": med[base] / med[pangu],  # Pangu tokens/s over baseline tokens/s
        "goal": GOAL,
        **judged,
        **profiled,
    }
    del trainers, models
    _free(args.device)
    return result


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def measure_variant(make: Callable[[], Trainer], args: argparse.Namespace, tokens: int) -> dict[str, Any]:
    """Warm-up, then ``rounds`` x ``steps`` timed steps of one variant alone on the device; an
    out-of-memory anywhere is the result (the variant's memory is freed before the next one)."""
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tr = None
    try:
        tr = make()
        for _ in range(args.warmup):
            tr.step()
        times = [tr.timed(args.steps) for _ in range(args.rounds)]
        med = statistics.median(times)
        out = {"median_step_ms": med * 1e3, "tokens_per_s": tokens / med, "step_ms_all": [t * 1e3 for t in times],
               "last_loss": float(tr.last_loss), "oom": False}
    except Exception as e:  # noqa: BLE001 - an OOM is a result; anything else is re-raised
        if not _is_oom(e):
            raise
        out = {"oom": True, "error": f"{type(e).__name__}: {str(e)[:400]}"}
    if args.device == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if tr is not None:
        tr.opt.zero_grad(set_to_none=True)
    del tr
    _free(args.device)
    return out


def compare_impl(args: argparse.Namespace, hf_cfg: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Pangu's training tokens/s per variant (TE / local, packed / not) at each token count."""
    tc_overrides = _tc_overrides(args.tc)
    vocab = hf_cfg["vocab_size"]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    results: dict[str, Any] = {}
    for tokens in [int(t) for t in args.compare_impl.split(",") if t.strip()]:
        lengths = mixed_lengths(tokens)
        row: dict[str, Any] = {"mixed_lengths": lengths}
        for name in variants:
            impl, packing = VARIANTS[name]
            entry: dict[str, Any] = {"transformer_impl": impl, "packing": packing}
            if impl == "transformer_engine" and not te_installed():
                row[name] = {**entry, "skipped": "transformer_engine is not installed"}
                continue
            model = build_model(hf_cfg, dtype, args.device, layer_spec("pangu", impl), tc_overrides)
            make = {
                "te": lambda: Trainer(model, args.device, vocab, 1, tokens),
                "local": lambda: Trainer(model, args.device, vocab, 1, tokens),
                "te-thd": lambda: PackedTrainer(model, args.device, vocab, lengths),
                "local-padded": lambda: PaddedTrainer(model, args.device, vocab, lengths),
            }[name]
            entry.update(measure_variant(make, args, tokens))
            del model, make
            _free(args.device)
            row[name] = entry
            log.info("%d tokens, %s: %s", tokens, name,
                     "OOM" if entry.get("oom") else f"{entry['median_step_ms']:.1f} ms, {entry['tokens_per_s']:,.0f} tokens/s")
        ratios = {}
        for te_name, local_name in (("te", "local"), ("te-thd", "local-padded"), ("te-thd", "local")):
            a, b = row.get(te_name, {}), row.get(local_name, {})
            if "tokens_per_s" in a and "tokens_per_s" in b:
                ratios[f"{te_name} / {local_name}"] = a["tokens_per_s"] / b["tokens_per_s"]
            elif "tokens_per_s" in a and b.get("oom"):
                ratios[f"{te_name} / {local_name}"] = f"{local_name} out of memory"
        row["tokens_per_s_ratios"] = ratios
        results[str(tokens)] = row
    return {"preset": args.preset, "layers": hf_cfg["num_hidden_layers"], "dtype": args.dtype, "warmup": args.warmup,
            "rounds": args.rounds, "steps_per_round": args.steps, "tc_overrides": tc_overrides,
            "order": "one variant at a time on the device, in the order listed", "tokens": results}


def profile_steps(trainer: Trainer, steps: int) -> list[dict[str, Any]]:
    """Per-step count and self time (ms) of every operator over ``steps`` profiled steps; device time on a
    GPU (``self_device_ms``), CPU time everywhere (``self_cpu_ms``)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device == "cuda"
    _sync(trainer.device)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        for _ in range(steps):
            trainer.step()
        _sync(trainer.device)
    return [{"name": e.key, "count": e.count / steps, "self_cpu_ms": e.self_cpu_time_total / 1e3 / steps,
             "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3 / steps}
            for e in prof.key_averages()]


def profile_diff(pangu: list[dict[str, Any]], base: list[dict[str, Any]], top: int = 25) -> dict[str, Any]:
    """The operators that differ between the two models' steps, the largest self-time difference first:
    an operator only one model runs, one run a different number of times, or one whose time moved.
    Judged on device time where there is any (a GPU), else CPU time."""
    key = "self_device_ms" if any(r["self_device_ms"] for r in (*pangu, *base)) else "self_cpu_ms"
    a, b = {r["name"]: r for r in pangu}, {r["name"]: r for r in base}
    zero = {"count": 0.0, key: 0.0}
    rows = []
    for name in sorted(a.keys() | b.keys()):
        ra, rb = a.get(name, zero), b.get(name, zero)
        rows.append({"name": name, "count_pangu": ra["count"], "count_baseline": rb["count"],
                     "ms_pangu": ra[key], "ms_baseline": rb[key], "diff_ms": ra[key] - rb[key]})
    differs = [r for r in rows if r["count_pangu"] != r["count_baseline"] or r["diff_ms"]]
    differs.sort(key=lambda r: (r["count_pangu"] == r["count_baseline"], -abs(r["diff_ms"])))
    return {"time": key, "total_ms": {"pangu": sum(r["ms_pangu"] for r in rows),
                                      "baseline": sum(r["ms_baseline"] for r in rows)},
            "differs": differs[:top]}


def judge_ratio(pangu_s: list[float], base_s: list[float], goal: float) -> dict[str, Any]:
    """The goal judged against the benchmark's own resolution. Each round times both models back to back,
    so its ratio (baseline time / Pangu time = Pangu's tokens/s over the baseline's) pairs two timings
    under the same clock and load; the spread of those ratios over the rounds is what one run can
    resolve. Two H100 runs of the same command gave 0.996 and 0.960 with the rounds of each model
    spread by +-15% (docs/runs/gpu-h100-2026-12-07-te2): a ratio of medians alone reads noise as a
    verdict. ``meets``/``misses`` only when the interquartile range of the per-round ratios lies
    wholly on one side of the goal; else ``unresolved``."""
    ratios = [b / p for p, b in zip(pangu_s, base_s)]
    if len(ratios) < 2:
        q1 = q3 = ratios[0]
    else:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    verdict = "meets" if q1 >= goal else "misses" if q3 < goal else "unresolved"
    return {"ratio_per_round": ratios, "ratio_paired_median": statistics.median(ratios),
            "ratio_iqr": [q1, q3], "verdict": verdict}


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"Pangu training step vs the same GPTModel without o_proj bias — preset `{res['preset']}` "
        f"({res['layers']} layers), {res['device']}, {res['dtype']}, transformer_impl {res.get('transformer_impl', 'local')}, "
        f"micro-batch {res['micro_batch']} x seq {res['seq']}, median of {res['rounds']} rounds x {res['steps_per_round']} steps "
        f"(torch {res['torch']}, megatron-core {res['megatron_core']})"
        + (f", TransformerConfig overrides {res['tc_overrides']}" if res["tc_overrides"] else ""),
        "",
        "| model | params | median step (ms) | tokens/s | peak mem (GiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in res["models"].items():
        mem = f"{m['peak_mem_gib']:.1f}" if m["peak_mem_gib"] is not None else "-"
        lines.append(f"| {name} | {m['params']:,} | {m['median_step_ms']:.1f} | {m['tokens_per_s']:,.0f} | {mem} |")
    lo, hi = res["ratio_iqr"]
    lines += ["", f"throughput ratio Pangu / baseline: **{res['ratio']:.3f}** (medians); per round: median "
              f"{res['ratio_paired_median']:.3f}, interquartile {lo:.3f}-{hi:.3f}: **{res['verdict']}** for the goal "
              f">= {res['goal']}" + (" (the goal lies inside the per-round spread: more rounds or steps to settle it)"
                                     if res["verdict"] == "unresolved" else "")]
    if "profile" in res:
        prof = res["profile"]
        lines += ["", f"Operators that differ, {prof['steps']} profiled step(s) each, {prof['time']} per step "
                  f"(totals: pangu {prof['total_ms']['pangu']:.1f}, baseline {prof['total_ms']['baseline']:.1f}); "
                  "a different count first:", "",
                  "| operator | calls pangu | calls baseline | ms pangu | ms baseline | diff ms |", "|---|---:|---:|---:|---:|---:|"]
        for r in prof["differs"][:12]:
            lines.append(f"| `{r['name'][:60]}` | {r['count_pangu']:g} | {r['count_baseline']:g} | {r['ms_pangu']:.3f} | "
                         f"{r['ms_baseline']:.3f} | {r['diff_ms']:+.3f} |")
    return "\n".join(lines)


def markdown_impl(res: dict[str, Any]) -> str:
    lines = [f"Pangu tokens/s by transformer_impl and packing — preset `{res['preset']}` ({res['layers']} layers), "
             f"{res['dtype']}, median of {res['rounds']} rounds x {res['steps_per_round']} steps, {res['order']}", "",
             "| tokens | variant | transformer_impl | packing | median step (ms) | tokens/s | peak mem (GiB) |",
             "|---:|---|---|---|---:|---:|---:|"]
    for tokens, row in res["tokens"].items():
        for name, e in row.items():
            if name in ("mixed_lengths", "tokens_per_s_ratios"):
                continue
            if e.get("skipped"):
                cells = ("skipped", e["skipped"], "-")
            elif e.get("oom"):
                cells = ("OOM", "-", f"{e.get('peak_mem_gib', 0):.1f}")
            else:
                cells = (f"{e['median_step_ms']:.1f}", f"{e['tokens_per_s']:,.0f}",
                         f"{e['peak_mem_gib']:.1f}" if e.get("peak_mem_gib") is not None else "-")
            lines.append(f"| {tokens} | {name} | {e['transformer_impl']} | {e['packing'].split(':')[0]} | " + " | ".join(cells) + " |")
        for k, v in row["tokens_per_s_ratios"].items():
            lines.append(f"|  | {k} | | | | {v if isinstance(v, str) else f'**{v:.2f}x**'} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from rlinf_pangu.patches.transformer_engine import use_torchs_cudnn

    use_torchs_cudnn()  # before Megatron imports TE: TE and torch on one cuDNN (the patch says why)
    res: dict[str, Any] = {}
    if not args.skip_bias_cost:
        res = run(args)
        print(markdown(res))
    if args.compare_impl:
        if args.skip_bias_cost:
            hf_cfg, dtype = _setup(args)
        else:
            from rlinf_pangu.presets import preset

            hf_cfg = preset(args.preset, **({"num_hidden_layers": args.layers} if args.layers else {}))
            dtype = DTYPES[args.dtype]
        res["impl_compare"] = compare_impl(args, hf_cfg, dtype)
        print(markdown_impl(res["impl_compare"]))
    res["provenance"] = provenance()
    res["command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training-step throughput of Pangu on megatron-core vs the same GPTModel without the o_proj bias.

What it answers: does the o_proj bias (a row-parallel linear with its bias forced on, added by
the layer's bias-dropout-add) cost training throughput? Both models are megatron-core GPTModels
built from the same ``TransformerConfig`` (``rlinf_pangu.megatron.config``), the same local
spec except ``linear_proj`` (``rlinf_pangu.megatron.spec``), trained with the same AdamW on the
same random batches; rounds alternate between the two so clock/thermal drift hits both, and the
ratio is of medians from one run. Goal: ratio >= 0.97.

GPU (one H100, torch 2.11, megatron-core 0.19.2, no Transformer Engine, so megatron-core's own
modules; masked-softmax and RoPE fusions are off because they need TE/apex kernels)::

    python benchmarks/megatron_step.py --preset 1b --device cuda --dtype bf16 \\
        --seq 2048 --micro-batch 2 --warmup 3 --rounds 5 --steps 5 --out runs/megatron_step_1b.json

CPU smoke run (checks the script, not a measurement)::

    python benchmarks/megatron_step.py --preset tiny --device cpu --dtype fp32 --layers 2 \\
        --seq 32 --micro-batch 1 --warmup 1 --rounds 2 --steps 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("megatron_step")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GOAL = 0.97


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


def build_models(hf_cfg: dict[str, Any], dtype: torch.dtype, device: str, tc_overrides: dict[str, Any] | None = None):
    """(pangu, baseline): the same GPTModel config; only the o_proj bias differs."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from rlinf_pangu.megatron.config import gpt_model_kwargs, pangu_transformer_config
    from rlinf_pangu.megatron.spec import pangu_layer_spec

    tc = pangu_transformer_config(hf_cfg, dtype=dtype, use_cpu_initialization=(device == "cpu"), **(tc_overrides or {}))
    specs = {
        "pangu (o_proj bias)": pangu_layer_spec(use_te=False),
        "baseline (no o_proj bias)": get_gpt_layer_local_spec(normalization="RMSNorm"),
    }
    models = {}
    for name, spec in specs.items():
        torch.manual_seed(0)
        m = GPTModel(config=tc, transformer_layer_spec=spec, pre_process=True, post_process=True,
                     parallel_output=True, **gpt_model_kwargs(hf_cfg))
        models[name] = m.to(device).train()  # params are already params_dtype (no cast: it would hit RoPE buffers)
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
    """One model, its optimizer and a fixed pool of random batches."""

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

    def step(self) -> None:
        ids, labels = self.batches[self.i % len(self.batches)]
        self.i += 1
        loss = self.model(input_ids=ids, position_ids=self.pos, attention_mask=None, labels=labels).float().mean()
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import rlinf_pangu
    from rlinf_pangu.presets import preset

    rlinf_pangu.register(rlinf=False, sglang=False)
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    hf_cfg = preset(args.preset, **overrides)
    dtype = DTYPES[args.dtype]
    init_single_rank(args.device)
    tc_overrides = _tc_overrides(args.tc)
    models = build_models(hf_cfg, dtype, args.device, tc_overrides)
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
    result = {
        "preset": args.preset,
        "layers": hf_cfg["num_hidden_layers"],
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "dtype": args.dtype,
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
    }
    return result


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"Pangu training step vs the same GPTModel without o_proj bias — preset `{res['preset']}` "
        f"({res['layers']} layers), {res['device']}, {res['dtype']}, micro-batch {res['micro_batch']} x "
        f"seq {res['seq']}, median of {res['rounds']} rounds x {res['steps_per_round']} steps "
        f"(torch {res['torch']}, megatron-core {res['megatron_core']})"
        + (f", TransformerConfig overrides {res['tc_overrides']}" if res["tc_overrides"] else ""),
        "",
        "| model | params | median step (ms) | tokens/s | peak mem (GiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in res["models"].items():
        mem = f"{m['peak_mem_gib']:.1f}" if m["peak_mem_gib"] is not None else "-"
        lines.append(f"| {name} | {m['params']:,} | {m['median_step_ms']:.1f} | {m['tokens_per_s']:,.0f} | {mem} |")
    verdict = "meets" if res["ratio"] >= res["goal"] else "MISSES"
    lines += ["", f"throughput ratio Pangu / baseline: **{res['ratio']:.3f}** ({verdict} the goal >= {res['goal']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    res = run(args)
    print(markdown(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

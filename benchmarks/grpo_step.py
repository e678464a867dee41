"""A whole GRPO step of openPangu-Embedded against RLinf's own path for a model it supports natively.

What runs: RLinf's real loop, ``python -m rlinf.train`` as a subprocess (the entry point users run),
twice back to back with the same data, lengths, batch, group size, sampling and YAML knobs:

* **pangu**: the shipped example of the preset (``examples/math/pangu-1b-grpo-megatron.yaml`` for
  ``--preset 1b``) on a random checkpoint with the official shapes
  (``python -m rlinf_pangu.make_checkpoint``): the project's converter, spec, packed-bucket sync
  and SGLang class.
* **baseline**: the same YAML and overrides with ``rollout.model.model_type: qwen2.5`` on a Qwen2
  checkpoint of the same dimensions (``benchmarks/make_qwen2_checkpoint.py``: transformers'
  ``Qwen2ForCausalLM`` random init): RLinf's own converter (``rlinf.utils.ckpt_convertor``, its
  ``Qwen2.5-7B`` table entry, which takes tying from the HF config, with the layer count set),
  megatron-core's GPT spec (``te_gpt``, or ``local_gpt`` where Pangu also builds local modules),
  RLinf's TransformFuncs sync at RLinf's default bucket size (``actor.sync_bucket_capacity: null``
  = 128 MiB) and SGLang's own ``Qwen2ForCausalLM``. The driver's Pangu checks do not apply to a
  non-Pangu checkpoint (``rlinf_pangu.config.check_pangu`` returns after the model type check);
  what RLinf's own path needed on this stack is in ``rlinf_pangu/patches/rlinf.py`` (section
  "RLinf's own models on this stack") and is named in the JSON (``baseline.patches``).
* **fsdp** (only with ``--arms``, issue 13): the Pangu checkpoint and workload of ``pangu`` through the
  preset's FSDP example (``examples/math/pangu-1b-grpo-fsdp.yaml``): RLinf's ``FSDPActor`` on the HF
  model, the sync under HF names. The JSON's ``ratios.fsdp_vs_megatron`` sets it beside ``pangu``.

The workload is fixed so both do the same work: ``--prompts`` prompts x ``--samples`` samples per
step, prompts of a length drawn uniformly from ``--prompt-tokens LO,HI`` (chat template included,
same token ids for both: the baseline checkpoint carries Pangu's tokenizer), responses forced to
exactly ``--response-tokens`` (``max_new_tokens`` with ``ignore_eos``: SGLang does not stop at eos;
random weights would otherwise stop wherever they sample it; patch
``rlinf.SGLangWorker:sampling-params-complete`` hands RLinf's ``algorithm.sampling_params.ignore_eos``
to SGLang. SGLang refuses ``min_new_tokens`` without a tokenizer, and RLinf runs it without one),
``--warmup`` steps and then ``--steps`` measured ones.

Where the time goes: with ``RLINF_PANGU_PHASE_TRACE`` set, every process of the run appends
wall-clock spans of RLinf's phases and of its offload/onload calls (``rlinf_pangu.phase_trace``).
Each step (from RLinf's ``time/step`` and the driver's batch hand-off) is cut into phases that do
not overlap, in this priority: offload/onload (actor weights/grads/optimizer, SGLang release and
resume), sync (the rest of ``driver.sync_weights``: reshard, transport, SGLang's load, cache
flush), data (``_put_batch``), rollout (generation), logprob recompute, train, reward; ``other`` is
the part of the step no phase covers. RLinf's own timers are kept beside them (they overlap:
``time/reward`` holds the whole rollout).

Output: ``OUT/grpo_step_<preset>_<device>.json`` (device, commit, command, workload,
transformer_impl, per arm: per-step phases, medians, tokens/s per GPU, peak GPU memory, the
SGLang-vs-recompute log-prob gap; ``step_ratio``, ``sync_share``, ``other_share`` against the
issue's goals; with the fsdp arm ``ratios.fsdp_vs_megatron``), ``OUT/grpo_step_<preset>_<device>_<arm>.png``
(each run's curves, drawn after it) and ``OUT/grpo_step_<preset>_<device>_runs.tgz`` (each run's metrics.jsonl,
trace, resolved config, train.log, console).

GPU, one H100/H200, the wheelhouse installed as README's GPU section says (on the lent machine:
``scripts/gpu_te_session.sh run grpo-1b``)::

    python3 benchmarks/grpo_step.py --preset 1b --device cuda --out $OUT --deadline-s 545

CPU dry run (the CPU mode, tiny shapes, checks the wiring, not a measurement; ~10-20 min here)::

    .venv/bin/python benchmarks/grpo_step.py --preset tiny --device cpu --out runs/grpo_step_dry
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("grpo_step")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARMS = ("pangu", "baseline", "fsdp")
#: What runs without --arms: issue 18's comparison. ``fsdp`` (issue 13: the same Pangu checkpoint and workload
#: through the preset's FSDP example, RLinf's FSDPActor on the HF model) is asked for by name, alone in a later
#: call on the same warm machine if one call cannot hold three runs (``earlier_arms`` then joins them).
DEFAULT_ARMS = ("pangu", "baseline")
#: Kept before --deadline-s for stopping a run (SIGINT, 20 s, SIGKILL) and writing the outputs.
STOP_AND_WRITE_S = 60.0
#: The issue's goals (issue 18): medians of the same session.
GOALS = {"step_ratio": 0.95, "sync_share": 0.02, "other_share": 0.10}


@dataclass(frozen=True)
class Setup:
    """Everything a (preset, device) pair decides: the shipped example and a workload that fits."""

    example: str
    dtype: str
    prompts: int
    samples: int
    prompt_tokens: tuple[int, int]
    response_tokens: int
    warmup: int
    steps: int
    #: YAML overrides the workload needs beyond its size (micro-batches that must divide the batch)
    workload_overrides: tuple[str, ...] = ()
    #: the ``fsdp`` arm's example (the same model and workload through RLinf's FSDP actor), if the preset has one
    fsdp_example: str | None = None


SETUPS: dict[tuple[str, str], Setup] = {
    # The shape on one GPU, sized so both runs (start-up included) fit one 10-minute call:
    # 32 prompts x 8 samples, prompts 256-512 tokens, responses of exactly 256 tokens.
    ("1b", "cuda"): Setup("examples/math/pangu-1b-grpo-megatron.yaml", "bf16", 32, 8, (256, 512), 256, 2, 10,
                          fsdp_example="examples/math/pangu-1b-grpo-fsdp.yaml"),
    ("tiny", "cuda"): Setup("examples/math/pangu-tiny-grpo-megatron.yaml", "bf16", 32, 8, (32, 64), 32, 2, 10),
    # The CPU dry run: the wiring, not speed (2 cores here). 4 x 4 sequences, one micro-batch each.
    ("tiny", "cpu"): Setup("examples/math/pangu-tiny-grpo-megatron-cpu.yaml", "fp32", 4, 4, (24, 32), 8, 1, 1,
                           ("algorithm.training_batch_size_per_gpu=16", "algorithm.logprob_forward_micro_batch_size=16",
                            "rollout.max_running_requests=16"),
                           fsdp_example="examples/math/pangu-tiny-grpo-fsdp-cpu.yaml"),
}
#: The baseline's converter entry in RLinf's table (its default_args.yaml): a qwen_2 model whose
#: entry does not fix tie_word_embeddings (so the HF config's is used); heads and head size come
#: from the HF config, the layer count from ``num_hidden_layers`` (set below).
RLINF_CONVERTER_MODEL = "Qwen2.5-7B"
#: Spans the step is cut into, highest priority first (time two spans share goes to the first).
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("offload_onload", ("actor.onload_weights", "actor.offload_weights", "actor.onload_optimizer",
                        "actor.offload_optimizer", "rollout.release", "sglang.release", "sglang.resume")),
    ("sync", ("driver.sync_weights",)),
    ("data", ("driver.prepare_data",)),
    ("rollout", ("rollout.total",)),
    ("logprob", ("actor.logprob_compute",)),
    ("train", ("actor.train_compute",)),
    ("reward", ("reward.compute",)),
)
#: What is left inside "other", named where a span says so (same priority rule, after PHASES).
OTHER_DETAIL: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("actor_state_load_wait", ("actor.load_state",)),  # device lock wait + gc/empty_cache around onloads
    ("advantages", ("actor.advantages",)),
    ("rollout_metrics", ("actor.rollout_metrics",)),
    ("actor_batch_io", ("actor.run_inference", "actor.run_training")),  # receiving batches, set-up
)
#: RLinf's own per-step timers, as logged (they overlap; kept for comparison).
RLINF_TIMERS = ("time/step", "time/prepare_data", "time/sync_weights", "time/rollout", "time/reward",
                "time/actor/inference", "time/actor/training")


# --------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------

Interval = tuple[float, float]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """``a`` minus ``b`` (both unions)."""
    out = []
    for s, e in a:
        cur = s
        for bs, be in b:
            if be <= cur or bs >= e:
                continue
            if bs > cur:
                out.append((cur, bs))
            cur = max(cur, be)
            if cur >= e:
                break
        if cur < e:
            out.append((cur, e))
    return out


def measure(intervals: Iterable[Interval]) -> float:
    return sum(e - s for s, e in intervals)


def clip(intervals: Iterable[Interval], window: Interval) -> list[Interval]:
    lo, hi = window
    return [(max(s, lo), min(e, hi)) for s, e in intervals if e > lo and s < hi]


# --------------------------------------------------------------------------------------
# Inputs: checkpoints and the prompt set
# --------------------------------------------------------------------------------------


def run_checked(cmd: list[str], what: str, **kwargs: Any) -> None:
    log.info("%s: %s", what, shlex.join(cmd))
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kwargs)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")


def ensure_checkpoints(work: Path, preset: str, dtype: str, seed: int) -> tuple[Path, Path]:
    pangu = work / f"pangu-{preset}-{dtype}-seed{seed}"
    qwen = work / f"qwen2-{preset}-{dtype}-seed{seed}"
    if not (pangu / "config.json").is_file():
        run_checked([sys.executable, "-m", "rlinf_pangu.make_checkpoint", "--preset", preset, "--dtype", dtype,
                     "--seed", str(seed), "--out", str(pangu), "--overwrite"], "Pangu checkpoint")
    if not (qwen / "config.json").is_file():
        run_checked([sys.executable, str(REPO / "benchmarks" / "make_qwen2_checkpoint.py"), "--like", str(pangu),
                     "--out", str(qwen), "--dtype", dtype, "--seed", str(seed), "--overwrite"], "Qwen2 checkpoint")
    return pangu, qwen


#: Words the prompt filler draws from: digits and short English words (a few tokens each).
_WORDS = ("the", "sum", "of", "and", "number", "value", "add", "then", "next", "term", "list", "count",
          *(str(i) for i in range(100)))


def make_prompts(path: Path, tokenizer_dir: Path, n: int, lo: int, hi: int, seed: int) -> dict[str, Any]:
    """``n`` chat prompts whose templated length is uniform in [lo, hi] tokens (measured with the
    checkpoint's tokenizer and chat template, as RLinf's dataset measures them); answers are digits."""
    import rlinf_pangu

    rlinf_pangu.register_transformers()  # the Pangu tokenizer for AutoTokenizer (both checkpoints carry it)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rng = random.Random(seed)

    def length(words: list[str]) -> int:  # as RLinf's ReasoningDataset counts: template as text, then encode
        msg = [{"role": "user", "content": " ".join(words)}]
        return len(tok(tok.apply_chat_template(msg, add_generation_prompt=True, tokenize=False))["input_ids"])

    rows, lengths = [], []
    for i in range(n):
        target = rng.randint(lo, hi)
        words = [f"Question {i}:"] + [rng.choice(_WORDS) for _ in range(hi)]
        a, b = 1, len(words)  # the longest prefix whose length is <= target
        while a < b:
            mid = (a + b + 1) // 2
            if length(words[:mid]) <= target:
                a = mid
            else:
                b = mid - 1
        words = words[:a]
        lengths.append(length(words))
        rows.append({"prompt": [{"role": "user", "content": " ".join(words)}], "answer": str(rng.randint(0, 9))})
    if max(lengths) > hi or min(lengths) < lo:
        raise RuntimeError(f"prompt lengths {min(lengths)}..{max(lengths)} outside {lo}..{hi} (the chat template "
                           "alone may be longer than the low end)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return {"n": n, "min": min(lengths), "max": max(lengths), "mean": statistics.fmean(lengths)}


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


class MemorySampler:
    """Peak memory while a run lasts: the GPU's used memory (nvidia-smi, all processes on it; the
    benchmark itself never touches CUDA) or, on the CPU, the resident memory of the run's processes."""

    def __init__(self, device: str, interval_s: float = 0.25):
        self.device, self.interval = device, interval_s
        self.peak_mib: float = 0.0
        self.start_mib: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def start(self, pid: int) -> None:
        self._pid = pid
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _read(self) -> float | None:
        if self.device == "cuda":
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout.split()
                return float(out[0]) if out else None
            except (OSError, subprocess.TimeoutExpired, ValueError):
                return None
        import psutil

        try:
            root = psutil.Process(self._pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def _loop(self) -> None:
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.start_mib = v if self.start_mib is None else self.start_mib
                self.peak_mib = max(self.peak_mib, v)
                self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        what = ("gpu_used_mib (device, all processes)" if self.device == "cuda"
                else "host_rss_mib (sum over the run's processes; shared pages counted in each)")
        return {"measure": what, "peak_mib": round(self.peak_mib, 1),
                "at_start_mib": None if self.start_mib is None else round(self.start_mib, 1), "samples": self.samples}


def _stop_run(proc: subprocess.Popen, ray_tmp: Path | None) -> None:
    """SIGINT first (the driver's finally blocks stop its Ray), then the process group, then any
    process of this run's Ray left behind (found by its temp dir, stopped by pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    if ray_tmp is not None:
        import psutil

        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(ray_tmp) in part for part in p.info["cmdline"] or ()):
                    p.kill()


@dataclass
class RunResult:
    arm: str
    command: list[str]
    run_dir: Path
    trace: Path
    console: Path
    returncode: int | None
    wall_s: float
    timed_out: bool
    memory: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def run_arm(arm: str, config: str, overrides: list[str], work: Path, device: str, timeout_s: float) -> RunResult:
    runs = work / "runs"
    run_dir = runs / f"grpo_step_{arm}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    trace = runs / f"{arm}.trace.jsonl"
    console = runs / f"{arm}.console.log"
    runs.mkdir(parents=True, exist_ok=True)
    trace.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "rlinf.train", "--config", config,
           f"runner.output_dir={runs}", f"runner.experiment_name=grpo_step_{arm}", *overrides]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RLINF_"))}
    env["RLINF_PANGU_PHASE_TRACE"] = str(trace)
    for keep in ("RLINF_PANGU_COMMIT", "RLINF_PANGU_CACHE"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    log.info("[%s] %s", arm, shlex.join(cmd))
    sampler = MemorySampler(device)
    t0 = time.monotonic()
    timed_out = False
    with open(console, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        sampler.start(proc.pid)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            link = run_dir / "ray"
            _stop_run(proc, link.resolve() if link.is_symlink() else None)
            rc = proc.returncode
        except BaseException:
            _stop_run(proc, None)
            raise
    wall = time.monotonic() - t0
    memory = sampler.stop()
    log.info("[%s] exit %s after %.0f s%s", arm, rc, wall, " (timed out)" if timed_out else "")
    return RunResult(arm, cmd, run_dir, trace, console, rc, wall, timed_out, memory)


# --------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------


def load_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[int(row.pop("step"))] = row
    return out


def load_trace(path: Path) -> list[dict[str, Any]]:
    from rlinf_pangu import phase_trace

    return phase_trace.load(path) if path.is_file() else []


def step_windows(spans: list[dict[str, Any]], metrics: dict[int, dict[str, float]]) -> dict[int, Interval]:
    """Step k starts when the driver hands its batch to the rollout (``driver.prepare_data``, the
    first thing inside RLinf's step timer) and lasts RLinf's ``time/step``."""
    starts = [s["t0"] for s in spans if s["span"] == "driver.prepare_data" and s.get("ok", True)]
    out = {}
    for k, t0 in enumerate(starts, start=1):
        if k in metrics and "time/step" in metrics[k]:
            out[k] = (t0, t0 + float(metrics[k]["time/step"]))
    return out


def cut_step(spans: list[dict[str, Any]], window: Interval) -> dict[str, Any]:
    """One step cut into the phases of :data:`PHASES` (no overlap; ``other`` = what none covers),
    plus the detail inside ``other`` and the raw offload/onload figures."""
    by_name: dict[str, list[Interval]] = {}
    for s in spans:
        by_name.setdefault(s["span"], []).append((s["t0"], s["t1"]))
    step = window[1] - window[0]
    covered: list[Interval] = []
    phases: dict[str, float] = {}
    for phase, names in PHASES:
        mine = union(clip([i for n in names for i in by_name.get(n, [])], window))
        own = subtract(mine, covered)
        phases[phase] = measure(own)
        covered = union(covered + own)
    phases["other"] = max(0.0, step - measure(covered))
    detail: dict[str, float] = {}
    for name, names in OTHER_DETAIL:
        mine = union(clip([i for n in names for i in by_name.get(n, [])], window))
        own = subtract(mine, covered)
        detail[name] = measure(own)
        covered = union(covered + own)
    detail["unexplained"] = max(0.0, step - measure(covered))
    return {"step_s": step, "phases_s": phases, "other_detail_s": detail,
            "offload_onload": offload_detail(spans, window, by_name)}


def offload_detail(spans: list[dict[str, Any]], window: Interval, by_name: dict[str, list[Interval]]) -> dict[str, Any]:
    """Raw durations of each offload/onload call in the step, where it happened (inside the actor's
    weight sync, inside the log-prob/training calls, elsewhere), and the page-locked buffers RLinf
    allocated on a tensor's first offload (``_get_pinned_buffer``)."""
    lo, hi = window
    # first match wins: the actor's run_inference starts with the step and waits out the rollout
    inside = {"sync": union(clip(by_name.get("actor.sync_send", []) + by_name.get("rollout.sync_receive", []), window)),
              "rollout": union(clip(by_name.get("rollout.total", []), window)),
              "run_inference": union(clip(by_name.get("actor.run_inference", []), window)),
              "run_training": union(clip(by_name.get("actor.run_training", []), window))}
    out: dict[str, Any] = {}
    for s in spans:
        if not (lo <= s["t0"] < hi):
            continue
        name = s["span"]
        if name in PHASES[0][1]:
            where = next((k for k, iv in inside.items() if any(a <= s["t0"] < b for a, b in iv)), "between phases")
            key = f"{name} @ {where}"
            out[key] = out.get(key, 0.0) + (s["t1"] - s["t0"])
    pinned = [s for s in spans if s["span"] == "actor.pinned_buffer" and lo <= s["t0"] < hi and s.get("allocates")]
    out["pinned_alloc"] = {"count": len(pinned), "gib": round(sum(s.get("bytes", 0) for s in pinned) / 2**30, 3),
                           "s": round(sum(s["t1"] - s["t0"] for s in pinned), 4)}
    return out


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def analyse(result: RunResult, setup: Setup, warmup: int, n_gpus: int) -> dict[str, Any]:
    metrics = load_metrics(result.run_dir)
    spans = load_trace(result.trace)
    windows = step_windows(spans, metrics)
    steps = []
    for k in sorted(metrics):
        row = metrics[k]
        entry: dict[str, Any] = {"step": k, "warmup": k <= warmup,
                                 "rlinf_timers_s": {t: row.get(t) for t in RLINF_TIMERS}}
        if k in windows:
            entry |= cut_step(spans, windows[k])
        n_seq = row.get("rollout/total_num_sequence")
        resp = row.get("rollout/response_length")
        total = row.get("rollout/total_length")
        entry["tokens"] = {
            "sequences": n_seq,
            "generated": None if n_seq is None or resp is None else n_seq * resp,
            "trained": None if n_seq is None or total is None else n_seq * total,
            "response_min": row.get("rollout/min_of_response_length"),
            "response_max": row.get("rollout/max_of_response_length"),
        }
        entry["logprob_gap"] = {"mean": row.get("rollout/logprob_gap_mean"), "max": row.get("rollout/logprob_gap_max")}
        steps.append(entry)
    measured = [s for s in steps if not s["warmup"] and "phases_s" in s]
    med: dict[str, Any] = {"step_s": median([s["step_s"] for s in measured])}
    for phase in [p for p, _ in PHASES] + ["other"]:
        med[phase] = median([s["phases_s"][phase] for s in measured])
    med["other_detail_s"] = {k: median([s["other_detail_s"][k] for s in measured])
                             for k in [n for n, _ in OTHER_DETAIL] + ["unexplained"]}
    med["rlinf_timers_s"] = {t: median([s["rlinf_timers_s"][t] for s in measured if s["rlinf_timers_s"][t] is not None])
                             for t in RLINF_TIMERS}
    gen = median([s["tokens"]["generated"] for s in measured if s["tokens"]["generated"] is not None])
    trained = median([s["tokens"]["trained"] for s in measured if s["tokens"]["trained"] is not None])

    def rate(tokens: float | None, seconds: float | None) -> float | None:
        return None if not tokens or not seconds else round(tokens / seconds / n_gpus, 1)

    lengths = [(s["tokens"]["response_min"], s["tokens"]["response_max"]) for s in steps]
    return {
        "command": shlex.join(result.command),
        "returncode": result.returncode,
        "timed_out": result.timed_out,
        "wall_s": round(result.wall_s, 1),
        "steps_logged": len(steps),
        "steps_measured": len(measured),
        "steps": steps,
        "median": med,
        "tokens_per_step": {"generated": gen, "trained": trained},
        "tokens_per_s_per_gpu": {
            "generated_over_step": rate(gen, med["step_s"]),
            "trained_over_step": rate(trained, med["step_s"]),
            "generated_over_rollout": rate(gen, med["rollout"]),
            "trained_over_train": rate(trained, med["train"]),
        },
        "response_length_fixed": bool(lengths) and all(a == b == setup.response_tokens for a, b in lengths),
        "logprob_gap_max_over_steps": max((s["logprob_gap"]["max"] for s in steps if s["logprob_gap"]["max"] is not None),
                                          default=None),
        "memory": result.memory,
        **result.extra,
    }


#: train.log lines that say what a run actually built and how it synced.
LOG_FACTS = {
    "spec": re.compile(r"(Pangu Megatron spec: .*)"),
    "sync_bucket_capacity": re.compile(r"weight-sync bucket capacity: (\d+) MiB"),
    "sync_buckets": re.compile(r"(weight-sync buckets: .*)"),
    "sync_path": re.compile(r"(weight-sync path: .*)"),
    "converter": re.compile(r"(Checkpoint convert config: .{0,300}|Pangu Megatron checkpoint (?:converted|reused).*)"),
}


def log_facts(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "train.log"
    text = path.read_text(errors="replace") if path.is_file() else ""
    out: dict[str, Any] = {}
    for key, rx in LOG_FACTS.items():
        m = rx.search(text)
        out[key] = m.group(1).strip()[:400] if m else None
    return out


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    p, b = result.get("pangu", {}).get("median", {}), result.get("baseline", {}).get("median", {})

    def div(a: float | None, c: float | None) -> float | None:
        return None if a is None or not c else round(a / c, 4)

    out = {"step_ratio": div(p.get("step_s"), b.get("step_s")),
           "sync_share": div(p.get("sync"), p.get("step_s")),
           "other_share": div(p.get("other"), p.get("step_s")),
           "baseline_sync_share": div(b.get("sync"), b.get("step_s")),
           "baseline_other_share": div(b.get("other"), b.get("step_s"))}
    out["goals"] = {k: {"goal": f"<= {g}", "value": out[k], "met": None if out[k] is None else out[k] <= g}
                    for k, g in GOALS.items()}
    f = result.get("fsdp", {})
    if "median" in f:  # issue 13: the FSDP actor next to the Megatron one, same checkpoint and workload
        mg = result.get("pangu", {})
        fm, prate, frate = f["median"], mg.get("tokens_per_s_per_gpu", {}), f.get("tokens_per_s_per_gpu", {})
        out["fsdp_vs_megatron"] = {
            "step_ratio": div(fm.get("step_s"), p.get("step_s")),
            **{f"{k}_ratio": div(frate.get(k), prate.get(k)) for k in ("generated_over_step", "trained_over_train")},
            "peak_mib": {"fsdp": f.get("memory", {}).get("peak_mib"),
                         "megatron": mg.get("memory", {}).get("peak_mib")},
            "logprob_gap_max": {"fsdp": f.get("logprob_gap_max_over_steps"),
                                "megatron": mg.get("logprob_gap_max_over_steps")},
        }
    return out


# --------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------


def commit() -> str:
    if os.environ.get("RLINF_PANGU_COMMIT"):
        return os.environ["RLINF_PANGU_COMMIT"]
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        return "unknown (set RLINF_PANGU_COMMIT)"
    return r.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def device_name(device: str) -> str:
    if device != "cuda":
        import platform

        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    try:  # not torch.cuda: the benchmark process must hold no GPU memory of its own
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return out[0] if out else "cuda (nvidia-smi printed nothing)"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cuda (nvidia-smi failed: {e})"


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "megatron-core", "sglang", "rlinf", "transformers", "ray", "transformer-engine",
                 "transformer-engine-cu13", "transformer-engine-torch"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def baseline_patches() -> list[dict[str, str]]:
    """The compat patches RLinf's own path needs on this stack (applied in every run, both arms)."""
    from rlinf_pangu.patches import PATCHES
    from rlinf_pangu.patches import rlinf as rp

    return [{"name": n, "why": PATCHES[n].why} for n in rp.NATIVE_MODEL_PATCHES if n in PATCHES]


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="1b", choices=sorted({k[0] for k in SETUPS}))
    p.add_argument("--device", default="cuda", choices=sorted({k[1] for k in SETUPS}))
    p.add_argument("--out", required=True, help="folder for the JSON and the runs' archive")
    p.add_argument("--work", default=None, help="checkpoints, prompts and run folders (default OUT/work)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default: the setup's)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps, not in the medians")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step")
    p.add_argument("--samples", type=int, default=None, help="samples per prompt (GRPO group size)")
    p.add_argument("--prompt-tokens", default=None, help="LO,HI: prompt lengths, chat template included")
    p.add_argument("--response-tokens", type=int, default=None, help="every response's exact length")
    p.add_argument("--transformer-impl", default=None, choices=["transformer_engine", "local"],
                   help="actor.megatron.transformer_impl for both arms (default: the example's)")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                   help=f"comma-separated, run in this order, of {','.join(ARMS)} (default: {','.join(DEFAULT_ARMS)})")
    p.add_argument("--seed", type=int, default=0, help="checkpoint and prompt seed")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="wall-clock budget of the whole benchmark: a run is stopped STOP_AND_WRITE_S (60 s) "
                        "before it, and the JSON says so")
    p.add_argument("--run-timeout-s", type=float, default=3600.0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra YAML override for both arms (e.g. actor.offload_optimizer=false)")
    return p.parse_args(argv)


def resolve_setup(a: argparse.Namespace) -> Setup:
    base = SETUPS[(a.preset, a.device)]
    lo_hi = tuple(int(x) for x in a.prompt_tokens.split(",")) if a.prompt_tokens else base.prompt_tokens
    return Setup(base.example, base.dtype, a.prompts or base.prompts, a.samples or base.samples,
                 (lo_hi[0], lo_hi[1]), a.response_tokens or base.response_tokens,
                 base.warmup if a.warmup is None else a.warmup, a.steps or base.steps, base.workload_overrides,
                 base.fsdp_example)


def te_installed() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def transformer_impl_of(a: argparse.Namespace, setup: Setup) -> str:
    if a.transformer_impl:
        return a.transformer_impl
    from omegaconf import OmegaConf

    from rlinf_pangu.config import compose

    cfg = compose(REPO / setup.example)
    return str(OmegaConf.select(cfg, "actor.megatron.transformer_impl"))


def overrides_for(setup: Setup, prompts_path: Path, ckpt: Path, impl: str, extra: list[str]) -> list[str]:
    lo, hi = setup.prompt_tokens
    return [
        f"rollout.model.model_path={ckpt}",
        "pangu.make_checkpoint.enabled=false",
        "pangu.report.plot=false",
        "runner.save_interval=-1",  # no checkpoint (the examples save one every 10 steps and at the last)
        f"runner.max_steps={setup.warmup + setup.steps}",
        f"runner.seq_length={hi + setup.response_tokens}",
        f"data.max_prompt_length={hi}",
        f"data.train_data_paths=[{prompts_path}]",
        f"data.rollout_batch_size={setup.prompts}",
        f"algorithm.group_size={setup.samples}",
        # max_new_tokens = seq_length - max_prompt_length = response_tokens (the schema's interpolation)
        "algorithm.sampling_params.ignore_eos=true",
        f"actor.megatron.transformer_impl={impl}",
        *setup.workload_overrides,
        *extra,
    ]


def baseline_overrides(impl: str, layers: int) -> list[str]:
    spec = "te_gpt" if impl == "transformer_engine" and te_installed() else "local_gpt"
    return [
        "rollout.model.model_type=qwen2.5",
        f"actor.spec_name={spec}",
        f"actor.megatron.ckpt_convertor.model={RLINF_CONVERTER_MODEL}",
        f"actor.megatron.ckpt_convertor.num_hidden_layers={layers}",
        "actor.sync_bucket_capacity=null",  # RLinf's default (ReshardConfig: 128 MiB)
    ]


def plot_run(run_dir: Path, png: Path) -> str | None:
    """The run's curves (the project's report plot), drawn after the run so no step pays for them (the runs
    are started with ``pangu.report.plot=false``); a plot that fails is logged, never the benchmark's end."""
    from rlinf_pangu.report import load_jsonl, plot

    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        return None
    try:
        return plot(load_jsonl(metrics_file), png).name
    except Exception as e:  # noqa: BLE001  (a figure is not a measurement)
        log.warning("plot of %s failed: %s: %s", run_dir, type(e).__name__, e)
        return None


def archive(out: Path, name: str, results: dict[str, RunResult]) -> Path:
    path = out / f"{name}_runs.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for arm, r in results.items():
            for f in (r.run_dir / "metrics.jsonl", r.run_dir / "config.resolved.yaml", r.run_dir / "train.log",
                      r.trace, r.console):
                if f.is_file():
                    tar.add(f, arcname=f"{arm}/{f.name}")
    return path


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    t_start = time.monotonic()
    setup = resolve_setup(a)
    out = Path(a.out).resolve()
    work = Path(a.work).resolve() if a.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    name = f"grpo_step_{a.preset}_{a.device}"
    arms = [x for x in a.arms.split(",") if x]
    if set(arms) - set(ARMS):
        raise SystemExit(f"--arms: {arms}; known: {ARMS}")
    if "fsdp" in arms and not setup.fsdp_example:
        raise SystemExit(f"--arms fsdp: the preset {a.preset} on {a.device} has no FSDP example")

    pangu_ckpt, qwen_ckpt = ensure_checkpoints(work, a.preset, setup.dtype, a.seed)
    hf = json.loads((pangu_ckpt / "config.json").read_text())
    lo, hi = setup.prompt_tokens
    n_prompts = setup.prompts * (setup.warmup + setup.steps)
    prompts_path = work / f"prompts-{lo}-{hi}-n{n_prompts}-seed{a.seed}.jsonl"
    prompt_stats = make_prompts(prompts_path, pangu_ckpt, n_prompts, lo, hi, a.seed)
    impl = transformer_impl_of(a, setup)
    common = overrides_for(setup, prompts_path, pangu_ckpt, impl, a.set)
    per_arm = {"pangu": common,
               "baseline": [*overrides_for(setup, prompts_path, qwen_ckpt, impl, a.set),
                            *baseline_overrides(impl, int(hf["num_hidden_layers"]))],
               "fsdp": common}  # the FSDP example ignores actor.megatron.*
    examples = {"pangu": setup.example, "baseline": setup.example, "fsdp": setup.fsdp_example}
    from make_qwen2_checkpoint import dims_of  # benchmarks/ is on sys.path when run as a script

    report: dict[str, Any] = {
        "benchmark": "grpo_step",
        "device": device_name(a.device),
        "commit": commit(),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["grpo_step.py", *argv]),
        "versions": versions(),
        "transformer_impl": {"requested": impl, "transformer_engine_installed": te_installed(),
                             "baseline_spec": baseline_overrides(impl, 0)[1].split("=", 1)[1]},
        "workload": {
            "example": setup.example, "fsdp_example": setup.fsdp_example, "dtype": setup.dtype,
            "prompts_per_step": setup.prompts,
            "samples_per_prompt": setup.samples, "sequences_per_step": setup.prompts * setup.samples,
            "prompt_tokens": prompt_stats, "response_tokens": setup.response_tokens,
            "response_length_fixed_by": "max_new_tokens with algorithm.sampling_params.ignore_eos=true (SGLang "
                                        "never stops at eos; patch rlinf.SGLangWorker:sampling-params-complete)",
            "warmup_steps": setup.warmup, "measured_steps": setup.steps,
            "dims": {"pangu": dims_of(hf), "baseline": dims_of(json.loads((qwen_ckpt / "config.json").read_text()))},
            "overrides": per_arm,
        },
        "baseline_patches": baseline_patches(),
        "goals": GOALS,
    }
    report["workload"]["dims_equal"] = report["workload"]["dims"]["pangu"] == report["workload"]["dims"]["baseline"]
    json_path = out / f"{name}.json"
    kept = work / f"{name}.json"  # a copy on the machine: a later call with --arms can complete it
    carried = earlier_arms(kept, report, arms)
    report.update(carried)
    if carried:
        report["ratios"] = ratios(report)
    write_json(json_path, report)

    results: dict[str, RunResult] = {}
    for arm in arms:
        left = a.run_timeout_s
        if a.deadline_s is not None:
            left = min(left, a.deadline_s - (time.monotonic() - t_start) - STOP_AND_WRITE_S)
        if left <= 30:
            log.warning("[%s] not started: %.0f s left before the deadline", arm, left)
            report[arm] = {"skipped": f"deadline ({a.deadline_s} s) reached"}
            continue
        r = run_arm(arm, examples[arm], per_arm[arm], work, a.device, left)
        r.extra["facts"] = log_facts(r.run_dir)
        r.extra["plot"] = plot_run(r.run_dir, out / f"{name}_{arm}.png")
        results[arm] = r
        report[arm] = analyse(r, setup, setup.warmup, n_gpus=1)
        report["ratios"] = ratios(report)
        write_json(json_path, report)  # after each run: a later timeout keeps this one
        write_json(kept, report)
    report["archive"] = archive(out, name, results).name
    report["benchmark_wall_s"] = round(time.monotonic() - t_start, 1)
    write_json(json_path, report)
    summary(report)
    write_json(kept, report)
    ok = all(report.get(arm, {}).get("returncode") == 0 for arm in arms)
    return 0 if ok else 1


def earlier_arms(path: Path, report: dict[str, Any], arms: list[str]) -> dict[str, Any]:
    """The arms this call does not run, from an earlier call's JSON in the same work folder, if it
    measured the same workload on the same device and commit (when one call cannot hold both
    runs: ``--arms pangu`` then ``--arms baseline`` on the same warm machine)."""
    if not path.is_file() or set(arms) >= set(ARMS):
        return {}
    earlier = json.loads(path.read_text())
    same = all(earlier.get(k) == report.get(k) for k in ("device", "commit", "workload", "transformer_impl"))
    if not same:
        log.warning("%s measured another workload, device or commit: not combined", path)
        return {}
    out = {}
    for arm in ARMS:
        if arm not in arms and isinstance(earlier.get(arm), dict) and "median" in earlier[arm]:
            out[arm] = {**earlier[arm], "from_an_earlier_call": True}
            log.info("[%s] taken from the earlier call's %s", arm, path)
    return out


def summary(report: dict[str, Any]) -> None:
    """The headline on stdout (the JSON holds everything)."""
    print(f"[grpo_step] {report['device']} commit {report['commit']} impl {report['transformer_impl']['requested']}")
    for arm in [x for x in ARMS if x in report]:
        r = report[arm]
        if not isinstance(r, dict) or "median" not in r:
            print(f"[grpo_step] {arm}: {r}")
            continue
        m = r["median"]
        phases = " ".join(f"{k} {m[k]:.2f}" for k in [p for p, _ in PHASES] + ["other"] if m.get(k) is not None)
        step = m["step_s"]
        print(f"[grpo_step] {arm}: exit {r['returncode']}, {r['steps_measured']} measured steps, step median "
              f"{step if step is None else round(step, 2)} s ({phases}); tokens/s/GPU {r['tokens_per_s_per_gpu']}; "
              f"peak {r['memory']['peak_mib']} MiB; gap max {r['logprob_gap_max_over_steps']}; "
              f"fixed length {r['response_length_fixed']}")
    print(f"[grpo_step] ratios {json.dumps(report.get('ratios', {}).get('goals'))}")


if __name__ == "__main__":
    sys.exit(main())

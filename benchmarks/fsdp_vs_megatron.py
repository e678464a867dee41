"""Megatron vs FSDP actor on the same GRPO workload: one table and one plot from two runs.

``python benchmarks/fsdp_vs_megatron.py --run megatron=DIR_A --run fsdp=DIR_B --out OUT [--gpus 1] [--skip 1]``

Each DIR holds what ``scripts/gpu_fsdp_vs_megatron.sh`` kept of one ``python -m rlinf.train`` run:
``metrics.jsonl`` (the project's per-step report), ``gpu_mem.csv`` (``nvidia-smi`` samples of the
GPU's used memory, MiB, one per line) and ``gpu_procs.csv`` (``pid, used MiB, command`` samples).

Per run, over the steps after the first ``--skip`` (start-up work such as CUDA graph capture and
the first offload land in step 1):

* tokens/s per GPU: prompt + response tokens of the step (``rollout/total_num_sequence`` x
  ``rollout/total_length``) over ``time/step``, summed over steps, divided by the GPU count; and
  the same for generated tokens only;
* the step-time split as RLinf times it: rollout, reward, actor log-prob recompute, actor
  training, weight sync, and the rest of ``time/step`` (RLinf's stages overlap through its
  channels, e.g. the reward runs while SGLang still generates, so the parts need not add up);
* peak GPU memory: the GPU's total (SGLang's static pool included) and the largest process;
* the SGLang-vs-actor log-prob gap after each sync (mean and worst token over the steps).

Writes ``OUT/fsdp_vs_megatron.md`` (the table, then a per-step table per run), ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

#: The step-time parts as RLinf names them (metrics.jsonl keys).
SPLIT = (
    ("rollout", "time/rollout"),
    ("reward", "time/reward"),
    ("logprob", "time/actor/inference"),
    ("train", "time/actor/training"),
    ("sync", "time/sync_weights"),
)


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{path}: no steps")
    return rows


def _numbers(path: Path, column: int) -> list[float]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            out.append(float(parts[column]))
        except (IndexError, ValueError):
            continue
    return out


def peak_process(run: Path) -> tuple[float, str]:
    best, name = 0.0, ""
    path = run / "gpu_procs.csv"
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",", 2)]
            try:
                mib = float(parts[1])
            except (IndexError, ValueError):
                continue
            if mib > best:
                best, name = mib, parts[2] if len(parts) > 2 else ""
    return best, name


def summarize(name: str, run: Path, gpus: int, skip: int) -> dict:
    rows = read_metrics(run)
    steady = rows[skip:] or rows
    step_s = sum(r["time/step"] for r in steady)
    tokens = sum(r["rollout/total_num_sequence"] * r["rollout/total_length"] for r in steady)
    generated = sum(r["rollout/total_num_sequence"] * r["rollout/response_length"] for r in steady)
    gaps = [r.get("rollout/logprob_gap_max", math.nan) for r in rows]
    means = [r.get("rollout/logprob_gap_mean", math.nan) for r in rows]
    proc_mib, proc = peak_process(run)
    mem = _numbers(run / "gpu_mem.csv", 0)
    return {
        "run": name,
        "steps": len(rows),
        "steps_timed": len(steady),
        "tokens_per_s_per_gpu": tokens / step_s / gpus,
        "generated_tokens_per_s_per_gpu": generated / step_s / gpus,
        "step_s_median": statistics.median(r["time/step"] for r in steady),
        "split_s_median": {part: statistics.median(r.get(key, math.nan) for r in steady) for part, key in SPLIT},
        "peak_gpu_mem_gib": max(mem) / 1024 if mem else math.nan,
        "peak_process_mem_gib": proc_mib / 1024 if proc_mib else math.nan,
        "peak_process": proc,
        "logprob_gap_mean": statistics.fmean(means) if means else math.nan,
        "logprob_gap_max": max(gaps) if gaps else math.nan,
        "reward_first_last": (rows[0].get("rollout/reward_scores"), rows[-1].get("rollout/reward_scores")),
        "per_step": [
            {"step": r["step"], "step_s": r["time/step"], **{f"{p}_s": r.get(k) for p, k in SPLIT},
             "gap_mean": r.get("rollout/logprob_gap_mean"), "gap_max": r.get("rollout/logprob_gap_max"),
             "reward": r.get("rollout/reward_scores"), "resp_len": r.get("rollout/response_length")}
            for r in rows
        ],
    }


def table(summaries: list[dict]) -> str:
    head = ["", *[s["run"] for s in summaries]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, fmt, key):
        lines.append("| " + " | ".join([label, *[fmt(key(s)) for s in summaries]]) + " |")

    row("steps (timed)", str, lambda s: f"{s['steps']} ({s['steps_timed']})")
    row("tokens/s per GPU (prompt+response)", lambda v: f"{v:.0f}", lambda s: s["tokens_per_s_per_gpu"])
    row("generated tokens/s per GPU", lambda v: f"{v:.0f}", lambda s: s["generated_tokens_per_s_per_gpu"])
    row("step s (median)", lambda v: f"{v:.2f}", lambda s: s["step_s_median"])
    for part, _ in SPLIT:
        row(f"  {part} s (median)", lambda v: f"{v:.2f}", lambda s, p=part: s["split_s_median"][p])
    row("peak GPU memory, GiB (whole GPU)", lambda v: f"{v:.1f}", lambda s: s["peak_gpu_mem_gib"])
    row("peak GPU memory, GiB (largest process)", lambda v: f"{v:.1f}", lambda s: s["peak_process_mem_gib"])
    row("log-prob gap, mean over steps", lambda v: f"{v:.4f}", lambda s: s["logprob_gap_mean"])
    row("log-prob gap, worst token", lambda v: f"{v:.4f}", lambda s: s["logprob_gap_max"])
    return "\n".join(lines)


def per_step_table(s: dict) -> str:
    cols = ["step", "step_s", *[f"{p}_s" for p, _ in SPLIT], "gap_mean", "gap_max", "reward", "resp_len"]
    lines = [f"### {s['run']}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in s["per_step"]:
        cells = [f"{r[c]:.4f}" if c.startswith("gap") and r[c] is not None else
                 (f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / len(summaries)
    for i, s in enumerate(summaries):
        steps = [r["step"] for r in s["per_step"]]
        bottom = [0.0] * len(steps)
        for part, _ in SPLIT:
            vals = [r[f"{part}_s"] or 0.0 for r in s["per_step"]]
            axes[0].bar([x + i * width for x in steps], vals, width, bottom=bottom, label=f"{s['run']} {part}")
            bottom = [b + v for b, v in zip(bottom, vals)]
        axes[0].plot([x + i * width for x in steps], [r["step_s"] for r in s["per_step"]], "k.", markersize=4)
        axes[1].plot(steps, [r["gap_max"] for r in s["per_step"]], marker="o", label=f"{s['run']} worst token")
        axes[1].plot(steps, [r["gap_mean"] for r in s["per_step"]], linestyle="--", label=f"{s['run']} mean")
    axes[0].set(title="step-time split (s; dots: time/step)", xlabel="step")
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].set(title="SGLang vs actor log-prob gap after the sync", xlabel="step", yscale="log")
    axes[1].legend(fontsize=7)
    names = [s["run"] for s in summaries]
    axes[2].bar(names, [s["tokens_per_s_per_gpu"] for s in summaries])
    axes[2].set(title="tokens/s per GPU (steady steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, help="NAME=DIR (repeat)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--skip", type=int, default=1, help="leading steps left out of the timings")
    args = p.parse_args()
    summaries = []
    for spec in args.run:
        name, _, d = spec.partition("=")
        summaries.append(summarize(name, Path(d), args.gpus, args.skip))
    args.out.mkdir(parents=True, exist_ok=True)
    md = ["## Megatron vs FSDP actor, same workload", "", table(summaries), ""]
    md += [per_step_table(s) + "\n" for s in summaries]
    (args.out / "fsdp_vs_megatron.md").write_text("\n".join(md))
    (args.out / "fsdp_vs_megatron.json").write_text(json.dumps(summaries, indent=2, default=str))
    plot(summaries, args.out / "fsdp_vs_megatron.png")
    print("\n".join(md))


if __name__ == "__main__":
    main()

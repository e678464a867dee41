"""Per-step report of a training run: a table on stdout while it runs, ``metrics.jsonl`` and a PNG after.

Why: RLinf logs every metric to TensorBoard, but a person watching ``make demo`` (or reading a GPU
run's log) wants one line per GRPO step with the numbers that say whether the loop is healthy —
reward, response length, where the time went (rollout / log-prob recompute / train / weight
sync), and the gap between SGLang's log-probs and the actor's recomputed ones right after the
sync. :class:`StepReport` observes the runner's ``MetricLogger`` (it wraps ``log`` on that one
instance; RLinf's logging is unchanged) and :func:`plot` draws the four curves next to the logs.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    title: str
    keys: tuple[str, ...]  # RLinf metric names, first present wins
    fmt: str = "{:.3f}"


#: The table, as data: what each column shows and which RLinf metric feeds it.
COLUMNS: tuple[Column, ...] = (
    Column("reward", ("rollout/reward_scores",)),
    Column("resp_len", ("rollout/response_length",), "{:.1f}"),
    Column("ended", ("rollout/fraction_of_samples_properly_ended",), "{:.2f}"),
    Column("rollout_s", ("time/rollout",), "{:.1f}"),
    Column("logprob_s", ("time/actor/inference",), "{:.1f}"),
    Column("train_s", ("time/actor/training",), "{:.1f}"),
    Column("sync_s", ("time/sync_weights",), "{:.2f}"),
    Column("step_s", ("time/step",), "{:.1f}"),
    Column("lp_gap_max", ("rollout/logprob_gap_max",), "{:.1e}"),  # fp32 ~1e-5, bf16 ~1e-1
    Column("ppo_kl", ("actor/training/actor/approx_kl", "actor/training/actor/proximal_approx_kl"), "{:.2e}"),
    Column("clip_frac", ("actor/training/actor/clip_fraction",), "{:.3f}"),
)

#: The plot's panels: title -> metric names drawn on it.
PANELS: dict[str, tuple[str, ...]] = {
    "reward (mean per sequence)": ("rollout/reward_scores",),
    # With one minibatch a step KL and clip fraction stay 0; the log-prob gap is the sync's health.
    "PPO KL / clip fraction / log-prob gap": ("actor/training/actor/approx_kl", "actor/training/actor/clip_fraction",
                                               "rollout/logprob_gap_max"),
    "response length (tokens)": ("rollout/response_length",),
    "weight sync (s)": ("time/sync_weights",),
}


def _value(v: Any) -> float | None:
    try:
        f = float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class StepReport:
    """Collects RLinf's metrics per GRPO step; prints a row as soon as a step is complete."""

    def __init__(self, run_dir: Path, n_minibatches: int, printer: Callable[[str], None] = print):
        self.run_dir = Path(run_dir)
        self.n_minibatches = max(1, int(n_minibatches))
        self.steps: dict[int, dict[str, float]] = {}
        self._printed: set[int] = set()
        self._print = printer
        self._header_done = False

    def resume(self, step: int) -> int:
        """Continue a resumed run's ``metrics.jsonl``: keep its rows up to the checkpoint's ``step``
        (later rows belong to steps the crashed run did not save; they are trained again) so the
        file and the plot show one curve. Returns how many rows were kept."""
        path = self.run_dir / "metrics.jsonl"
        kept = {s: row for s, row in (load_jsonl(path) if path.is_file() else {}).items() if s <= step}
        self.steps.update(kept)
        self._printed.update(kept)  # rows of the earlier run are not printed again
        self.write_jsonl()
        log.info("metrics.jsonl continues from step %d (%d earlier rows kept)", step, len(kept))
        return len(kept)

    # RLinf logs time+rollout metrics at (step-1)*n_minibatches and training metrics at that
    # index + i for minibatch i; the step is complete once minibatch n-1 has been logged.
    def observe(self, data: dict[str, Any], index: int) -> None:
        step = index // self.n_minibatches + 1
        row = self.steps.setdefault(step, {})
        for k, v in data.items():
            f = _value(v)
            if f is not None:
                row[k] = f  # the last minibatch's training metrics win, like RLinf's progress bar
        if any(k.startswith("actor/training/") for k in data) and index % self.n_minibatches == self.n_minibatches - 1:
            self._emit(step)

    def attach(self, metric_logger: Any) -> None:
        """Observe ``metric_logger.log`` on this instance (RLinf's own logging still happens)."""
        original = metric_logger.log

        def logged(data, step, *args, **kwargs):
            out = original(data, step, *args, **kwargs)
            try:
                self.observe(data, int(step))
            except Exception as e:  # the report must never stop training
                log.warning("step report: %s", e)
            return out

        metric_logger.log = logged

    def _emit(self, step: int) -> None:
        if step in self._printed:
            return
        self._printed.add(step)
        if not self._header_done:
            self._print(self.header())
            self._header_done = True
        self._print(self.row(step))
        self.write_jsonl()

    def header(self) -> str:
        return " ".join([f"{'step':>5}"] + [f"{c.title:>10}" for c in COLUMNS])

    def row(self, step: int) -> str:
        data = self.steps.get(step, {})
        cells = [f"{step:>5}"]
        for c in COLUMNS:
            v = next((data[k] for k in c.keys if k in data), None)
            cells.append(f"{(c.fmt.format(v) if v is not None else '-'):>10}")
        return " ".join(cells)

    def table(self) -> str:
        return "\n".join([self.header(), *(self.row(s) for s in sorted(self.steps))])

    def write_jsonl(self) -> Path:
        path = self.run_dir / "metrics.jsonl"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for step in sorted(self.steps):
                f.write(json.dumps({"step": step, **self.steps[step]}) + "\n")
        return path

    def finish(self) -> Path | None:
        """Print rows not printed yet, write metrics.jsonl and metrics.png; returns the PNG path."""
        for step in sorted(self.steps):
            self._emit(step)
        if not self.steps:
            return None
        self.write_jsonl()
        return plot(self.steps, self.run_dir / "metrics.png")


def load_jsonl(path: Path) -> dict[int, dict[str, float]]:
    steps = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            steps[int(rec.pop("step"))] = rec
    return steps


def plot(steps: dict[int, dict[str, float]], out: Path, panels: dict[str, Iterable[str]] = PANELS) -> Path:
    """The run's curves (reward, KL/clip fraction, response length, sync time) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(steps)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (title, keys) in zip(axes.flat, panels.items()):
        for key in keys:
            pts = [(s, steps[s][key]) for s in xs if key in steps[s]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key.rsplit("/", 1)[-1])
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out

"""Running ``python -m rlinf.train`` as a user does, for the end-to-end tests.

One place for what every e2e test needs around a real run: the command with the test's overrides,
an environment without the calling process's Ray/RLinf variables (a test run must not join another
run's cluster), the run's outputs read back (console, ``train.log``, ``metrics.jsonl``, the resolved
config), the lines that say why a run failed, and the Megatron weights a run saved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlinf_pangu.console import failure_lines

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "math"


def train_cmd(config: Path, out: Path, steps: int, *overrides: str, model: Path | None = None,
              save_interval: int | None = None, plot: bool = False, launcher: list[str] | None = None) -> list[str]:
    """The driver's command line: ``steps`` GRPO steps into ``out``, a fresh tiny checkpoint made at
    ``model`` (default ``out/ckpt``), a save at ``save_interval`` (default: the last step)."""
    model = model or out / "ckpt"
    return [
        *(launcher or [sys.executable, "-m", "rlinf.train"]), "--config", str(config),
        f"runner.max_steps={steps}", f"runner.save_interval={save_interval or steps}", f"runner.output_dir={out}",
        f"rollout.model.model_path={model}", "pangu.make_checkpoint.enabled=true",
        f"pangu.report.plot={str(plot).lower()}", *overrides,
    ]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RLINF_"))}
    env.update(extra or {})
    return env


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@dataclass
class Run:
    """A finished run: ``log`` is the console followed by the run's ``train.log`` (where the quiet
    console sends what Ray, SGLang and the workers print)."""

    out: Path
    dir: Path
    ckpt: Path
    console: str
    train_log: str
    seconds: float
    log: str = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.console + self.train_log

    def __getitem__(self, key: str):  # the tests read a run like the dict it used to be
        return getattr(self, key)

    def rows(self) -> list[dict]:
        return metrics(self.dir)

    def resolved_config(self) -> dict:
        import yaml

        return yaml.safe_load((self.dir / "config.resolved.yaml").read_text())


def run_training(config: Path, out: Path, run_name: str, steps: int, *overrides: str, label: str = "e2e",
                 extra_env: dict[str, str] | None = None, timeout: float = 1500, **cmd_kw) -> Run:
    """Run the driver to its end; a failed run fails the calling test with the lines that say why."""
    t0 = time.monotonic()
    p = subprocess.run(train_cmd(config, out, steps, *overrides, **cmd_kw), capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=clean_env(extra_env))
    run_dir = out / run_name
    run = Run(out=out, dir=run_dir, ckpt=cmd_kw.get("model") or out / "ckpt", console=p.stdout + p.stderr,
              train_log=read_text(run_dir / "train.log"), seconds=time.monotonic() - t0)
    (out / "driver.log").write_text(run.log)
    assert p.returncode == 0, "\n".join(["console:", run.console[-4000:], "why (console + train.log):",
                                          *failure_lines(run.log, causes=40, tail=40)])
    print(f"\n[{label}] {steps} GRPO step(s) incl. start-up: {run.seconds:.0f} s", file=sys.stderr)
    return run


def megatron_state(path: Path) -> dict[str, torch.Tensor]:
    """The first Megatron rank file's weights under ``path`` (TP1/PP1 runs have one)."""
    files = sorted(path.rglob("model_optim_rng.pt"))
    assert files, f"no Megatron checkpoint under {path}"
    sd = torch.load(files[0], map_location="cpu", weights_only=False)["model"]
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}


def assert_most_tensors_changed(start: dict[str, torch.Tensor], after: dict[str, torch.Tensor], at_least: int) -> None:
    """Training moved more than half of the tensors both states hold (and they share ``at_least``)."""
    common = sorted(set(start) & set(after))
    assert len(common) >= at_least, (sorted(start)[:5], sorted(after)[:5])
    changed = [k for k in common if not torch.equal(start[k].float(), after[k].float())]
    assert len(changed) > len(common) // 2, f"only {len(changed)}/{len(common)} tensors changed"


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL a driver and every process it started (Ray, its workers, SGLang), by pid, as a crash
    would; returns how many were killed."""
    import psutil

    try:
        pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        pids = [proc.pid]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(60)
    return len(pids)

"""``python -m rlinf.train --config PATH.yaml [key=value ...]``: RLinf's GRPO for openPangu-Embedded.

RLinf 0.3.0 ships no driver (upstream launches ``examples/reasoning/main_grpo.py``, which the wheel
lacks), and its ``RLINF_EXT_MODULE`` plugin hook runs in Ray workers, not in the driver. This is the
driver: it follows upstream's flow — ``validate_cfg`` -> ``Cluster`` -> component placement ->
rollout / reward / actor worker groups -> RLinf's own ``ReasoningRunner`` -> ``init_workers`` ->
``run`` — after the checks that must fail before any worker starts (``rlinf_pangu.config``):

1. compose the YAML with hydra (``defaults`` from ``configs/``) plus ``key=value`` overrides;
2. reject unknown keys, make paths absolute, make the tiny checkpoint if the YAML asks for it,
   run the Pangu checks (model_type, TP/PP vs heads/layers, eos, precision);
3. ``rlinf_pangu.register()`` here, and ``RLINF_EXT_MODULE=rlinf_pangu`` for every Ray worker;
4. start Ray self-contained (token auth off, temp dir of its own, never attached to another
   Ray found on the host) and run RLinf's loop;
5. print one table row per GRPO step, and write ``metrics.jsonl`` + ``metrics.png`` next to
   RLinf's TensorBoard logs (``rlinf_pangu.report``).

The console stays quiet (``rlinf_pangu.console``): one line of set-up progress, the table, where
the outputs went, and on failure the lines that say why. Everything upstream prints goes to
``<run dir>/train.log``; ``--verbose`` (or ``pangu.report.verbose: true``) shows it live as well.

``python -m rlinf.train`` resolves here through ``rlinf_pangu.startup.rlinf_train`` (see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from .console import Console

log = logging.getLogger("rlinf_pangu.train")
#: When this driver started (the "loop" of ``make demo`` is timed from here to the last step).
DRIVER_START = time.monotonic()

EXT_MODULE = "rlinf_pangu"
#: Ray waits a fixed 30 s for its raylet to register; on a loaded small host it can miss that.
RAY_START_ATTEMPTS = 5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rlinf.train",
        description="GRPO for openPangu-Embedded with RLinf (Megatron actor, SGLang rollout).",
        epilog="Overrides use hydra's grammar: key=value, +new_key=value, group=option (e.g. model=pangu-1b).",
    )
    p.add_argument("--config", required=True, help="the job's YAML, e.g. examples/math/pangu-tiny-grpo-megatron.yaml")
    p.add_argument("--dry-run", action="store_true", help="check and print the resolved RLinf config; start nothing")
    p.add_argument("--verbose", action="store_true",
                   help="also show what Ray, SGLang, Megatron and RLinf print (always in <run dir>/train.log)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    return p.parse_intermixed_args(argv)  # flags may sit among the key=value overrides


def _log_setup() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")


def _set_ext_module() -> None:
    """Every RLinf worker imports RLINF_EXT_MODULE and calls its register() (rlinf.scheduler)."""
    current = os.environ.get("RLINF_EXT_MODULE")
    if current and current != EXT_MODULE:
        raise SystemExit(
            f"RLINF_EXT_MODULE={current} is set; RLinf loads one extension module and this job needs "
            f"{EXT_MODULE} (import yours from a module whose register() also calls rlinf_pangu.register())"
        )
    os.environ["RLINF_EXT_MODULE"] = EXT_MODULE


@contextlib.contextmanager
def own_ray(run_dir: Path) -> Iterator[Path]:
    """Start RLinf's Ray self-contained, and stop it afterwards.

    * Ray 2.60 turns token authentication on and keeps state under the home directory: off
      (``RAY_AUTH_MODE=disabled``), and a temp dir of this run's own (a short path under /tmp —
      Ray's socket paths must stay under 107 bytes — linked from ``run_dir/ray``).
    * RLinf's ``Cluster`` first calls ``ray.init(address="auto")``, which attaches to *any* Ray
      running on the host (another job's, a test's). Unless ``RAY_ADDRESS`` names a cluster on
      purpose, that call starts a local Ray instead (``address=None``); ``RAY_ADDRESS`` then
      names it, for Ray's state API (RLinf's failure handler lists actors through it).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    tmp = Path(tempfile.mkdtemp(prefix="rlp-ray-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(tmp)
    link = run_dir / "ray"
    with contextlib.suppress(OSError):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(tmp)
    import ray

    original_init = ray.init
    isolated = not os.environ.get("RAY_ADDRESS")

    def init(*args, **kwargs):
        if isolated and kwargs.get("address") == "auto":
            kwargs["address"] = None  # start a local Ray here instead of joining any on the host
            # Two fewer busy processes on small hosts; RLinf's state queries tolerate its absence.
            kwargs.setdefault("include_dashboard", False)
        for attempt in range(RAY_START_ATTEMPTS):
            try:
                out = original_init(*args, **kwargs)
                break
            except Exception as e:  # Ray waits a fixed 30 s for its raylet: a loaded host misses it
                if "timed out during startup" not in str(e) or attempt == RAY_START_ATTEMPTS - 1:
                    raise
                log.warning("Ray did not start in time (attempt %d: %s); retrying", attempt + 1, e)
                ray.shutdown()
        # Ray's state API (RLinf's failure handler lists actors) must find *this* cluster.
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        return out

    ray.init = init
    try:
        yield tmp
    finally:
        ray.init = original_init
        if ray.is_initialized():
            ray.shutdown()
        if isolated:
            os.environ.pop("RAY_ADDRESS", None)
        _stop_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            link.unlink()


def _stop_leftovers(tmp: Path) -> None:
    """Ray processes of this run still alive after shutdown (a start attempt that timed out leaves
    its GCS behind): found by this run's own temp dir in their command line, stopped by pid."""
    import psutil

    mine = str(tmp)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.info["pid"] != os.getpid() and any(mine in part for part in proc.info["cmdline"] or ()):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def run_dir_of(cfg) -> Path:
    return Path(cfg.runner.output_dir) / cfg.runner.experiment_name


def prepare(config: str, overrides: Sequence[str], console: "Console | None" = None):
    """Compose and check the config, export the environment, register Pangu: no worker yet.

    With a ``console``, its log file starts once the YAML's keys are known good (an unknown key
    leaves no run folder behind), before anything upstream prints."""
    from . import config as pc

    cfg = pc.compose(config, overrides)
    pc.check_known_keys(cfg)
    device = pc.device(cfg)
    if console is not None:
        console.verbose = console.verbose or bool(cfg.pangu.report.get("verbose", False))
        console.start(run_dir_of(cfg))
        console.setup("config")
    pc.check_placement(cfg)
    pc.absolutize_paths(cfg)
    if device == "cpu":
        from .patches import cpu as cpu_mode  # the explicit CPU mode only

        cpu_mode.driver_environment(cfg)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _set_ext_module()

    import rlinf_pangu
    from omegaconf import OmegaConf

    rlinf_pangu.register()
    if console is not None:
        console.setup("checkpoint")
    pc.ensure_checkpoint(cfg)
    pc.check_pangu(cfg)
    pc.check_resume(cfg)  # runner.resume_dir: auto -> a path; missing/foreign/corrupt fails here
    OmegaConf.resolve(cfg)  # workers get plain values (no project resolvers needed there)
    return cfg


def build_and_run(cfg, console: "Console | None" = None) -> "object":
    """Upstream's main_grpo flow with RLinf's own classes; returns the runner after ``run()``."""
    from omegaconf import OmegaConf
    from rlinf.config import validate_cfg
    from rlinf.data.datasets import create_rl_dataset
    from rlinf.data.tokenizers import hf_tokenizer
    from rlinf.runners.reasoning_runner import ReasoningRunner
    from rlinf.scheduler import Cluster
    from rlinf.utils.placement import ModelParallelComponentPlacement, PlacementMode
    from rlinf.workers.actor import get_actor_worker
    from rlinf.workers.inference.utils import get_inference_backend_worker
    from rlinf.workers.reward.reward_worker import RewardWorker
    from rlinf.workers.rollout.utils import get_rollout_backend_worker

    from .config import device

    if console is not None:
        console.setup("ray")
    cfg = validate_cfg(cfg)  # starts the Ray cluster
    run_dir = Path(cfg.runner.logger.log_path)
    (run_dir / "config.resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    cluster = Cluster(cluster_cfg=cfg.cluster)
    if console is not None:
        console.setup("workers")
    placement = ModelParallelComponentPlacement(cfg, cluster)
    if device(cfg) == "cpu":
        from .patches import cpu as cpu_mode

        cpu_mode.driver_placement(placement)

    rollout = get_rollout_backend_worker(cfg).create_group(cfg, placement).launch(
        cluster, name=cfg.rollout.group_name, placement_strategy=placement.get_strategy("rollout")
    )
    actor_inference = None
    if placement.placement_mode in (PlacementMode.DISAGGREGATED, PlacementMode.AUTO) and cfg.algorithm.recompute_logprobs:
        if placement.has_dedicated_inference:
            actor_inference = get_inference_backend_worker(cfg, "actor").create_group(cfg, placement).launch(
                cluster, name=cfg.inference.group_name, placement_strategy=placement.get_strategy("inference")
            )
    reward = RewardWorker.create_group(cfg).launch(
        cluster, name=cfg.reward.group_name, placement_strategy=placement.get_strategy("reward")
    )
    actor = get_actor_worker(cfg).create_group(cfg, placement).launch(
        cluster, name=cfg.actor.group_name, placement_strategy=placement.get_strategy("actor")
    )

    tokenizer = hf_tokenizer(cfg.actor.tokenizer.tokenizer_model)
    train_ds, val_ds = create_rl_dataset(cfg, tokenizer)
    runner = ReasoningRunner(
        cfg=cfg,
        placement=placement,
        train_dataset=train_ds,
        val_dataset=val_ds,
        rollout=rollout,
        actor_inference=actor_inference,
        actor=actor,
        reward=reward,
    )
    report = None
    if cfg.pangu.report.table or cfg.pangu.report.plot:
        from .report import StepReport

        report = StepReport(run_dir, cfg.algorithm.n_minibatches, printer=_table_printer(cfg.pangu.report.table, console))
        report.attach(runner.metric_logger)
        if cfg.runner.resume_dir is not None:  # continue metrics.jsonl from the checkpoint's step
            from .run_checkpoint import step_of

            report.resume(step_of(cfg.runner.resume_dir))
    t0 = time.monotonic()
    runner.init_workers()
    log.info("workers initialised in %.1f s", time.monotonic() - t0)
    if console is not None:
        console.setup_done()
    t0 = time.monotonic()
    first_step = runner.global_steps  # the resumed checkpoint's step (init_workers set it), else 0
    runner.run()
    loop_s = time.monotonic() - t0
    done = steps_done(first_step, runner.global_steps)
    log.info("%s in %.1f s", done, loop_s)
    outputs = [run_dir]
    if report is not None:
        png = report.finish() if cfg.pangu.report.plot else report.write_jsonl()
        log.info("per-step metrics: %s; TensorBoard logs: %s", png, run_dir)
        outputs = [p for p in (png, run_dir / "metrics.jsonl") if p is not None] + [run_dir]
    if console is not None:
        console.line(f"[rlinf-pangu] {done} in {loop_s:.0f} s "
                     f"({time.monotonic() - DRIVER_START:.0f} s since the driver started)")
        console.where("outputs", [*outputs, *([console.log_path] if console.log_path else [])])
    runner.report = report
    return runner


def steps_done(first_step: int, last_step: int) -> str:
    """What this process's loop ran: after a resume RLinf's step counter starts at the checkpoint's step,
    so the counter alone would claim the killed run's steps too."""
    n = last_step - first_step
    if first_step == 0:
        return f"{n} GRPO steps"
    return f"{n} GRPO steps ({first_step + 1}-{last_step}, resumed at step {first_step})"


def _table_printer(enabled: bool, console: "Console | None" = None):
    def printer(line: str) -> None:
        if not enabled:
            return
        if console is not None:
            console.line(f"[grpo] {line}")
        else:
            print(f"[grpo] {line}", flush=True)

    return printer


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _log_setup()
    from .config import ConfigError
    from .console import Console

    # --dry-run prints the config on stdout: nothing to keep quiet there.
    console = None if args.dry_run else Console(verbose=args.verbose)
    try:
        cfg = prepare(args.config, args.overrides, console)
    except ConfigError as e:
        (console.error if console is not None else functools.partial(print, file=sys.stderr))(f"config error: {e}")
        if console is not None:
            console.stop(keep_log=True)
        return 2
    except BaseException as e:
        return _failed(console, e)
    if args.dry_run:
        from omegaconf import OmegaConf

        from .config import resolve_rlinf

        print(json.dumps(OmegaConf.to_container(resolve_rlinf(cfg), resolve=True), indent=2, default=str))
        return 0
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    from .reward import SAMPLES_ENV

    os.environ.setdefault(SAMPLES_ENV, str(run_dir / "reward_samples.jsonl"))  # reward workers inherit it
    try:
        with own_ray(run_dir):
            build_and_run(cfg, console)
    except BaseException as e:  # RLinf's worker-failure handler ends the driver with SystemExit(-1)
        return _failed(console, e)
    console.stop(keep_log=True)
    return 0


def _failed(console, exc: BaseException) -> int:
    if console is None:
        raise exc
    console.failure(exc)  # reads the log before the driver's own traceback is added to it
    log.error("the run failed", exc_info=(type(exc), exc, exc.__traceback__))
    console.stop(keep_log=True)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    code = getattr(exc, "code", None) if isinstance(exc, SystemExit) else None
    return code if isinstance(code, int) and code > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

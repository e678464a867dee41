"""Run a function on N torch.distributed (gloo) ranks in fresh processes, from a pytest test.

Usage::

    from harness import run_ranks

    def _check(rank: int, world_size: int, scale: float) -> dict:   # module level: picklable
        import torch, torch.distributed as dist
        t = torch.ones(2) * (rank + 1) * scale
        dist.all_reduce(t)
        assert t[0].item() == 3 * scale, t           # an assert here fails the pytest test
        return {"rank": rank, "sum": t}               # anything torch.save can write

    def test_all_reduce():
        results = run_ranks(_check, 2, 1.5, timeout=120)   # [rank0_result, rank1_result]
        assert results[1]["sum"][0].item() == 4.5

Each rank is a ``spawn``-ed process with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
set (a free loopback port), the default gloo process group initialised (its timeout follows
``timeout``), ``CUDA_VISIBLE_DEVICES`` empty, ``threads`` torch threads and, unless
``cpu_redirects=False``, :func:`harness.cpu_redirects.apply` (megatron-core's cuda->cpu
redirects). ``fn(rank, world_size, *args, **kwargs)`` runs there; its return value travels back
through a ``torch.save`` file (shared-memory tensors would die with the rank).

When any rank raises, the others are given ``grace`` seconds (they are usually blocked in a
collective) and then killed; :class:`RankError` names every failed rank with its traceback, and
is an ``AssertionError`` when all failures were assertions, so pytest reports a failure rather
than an error. A run that exceeds ``timeout`` is killed and raises :class:`RankTimeout` naming
the ranks that had not finished, with each one's Python stack at that moment (faulthandler).
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import multiprocessing as mp
import os
import pickle
import signal
import socket
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

__all__ = ["run_ranks", "free_port", "RankError", "RankAssertionError", "RankTimeout"]


class RankError(RuntimeError):
    """One or more ranks raised; ``failures`` maps rank -> (exception type name, traceback text)."""

    def __init__(self, failures: dict[int, tuple[str, str]]):
        self.failures = failures
        parts = [f"--- rank {r} raised {kind} ---\n{tb}" for r, (kind, tb) in sorted(failures.items())]
        super().__init__(f"{len(failures)} rank(s) failed: {sorted(failures)}\n" + "\n".join(parts))


class RankAssertionError(RankError, AssertionError):
    """Every failed rank failed an ``assert``: a test failure, not an error."""


class RankTimeout(RankError, TimeoutError):
    """The run did not finish within its timeout."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn, rank, world_size, args, kwargs, out_dir, timeout, threads, cpu_redirects, gpus=False):
    """Entry point of one spawned rank: set up, run ``fn``, write the outcome to ``out_dir``."""
    out = Path(out_dir)
    # On a timeout the parent sends SIGUSR1: every thread's stack goes to <rank>.stack
    stack_file = open(out / f"{rank}.stack", "w")  # noqa: SIM115 - lives as long as the rank
    faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads)
        if gpus:
            torch.cuda.set_device(rank)
        elif cpu_redirects:
            from harness import cpu_redirects as redirects

            redirects.apply()
        dist.init_process_group(
            "nccl" if gpus else "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout),
            **({"device_id": torch.device("cuda", rank)} if gpus else {}),
        )
        try:
            result = fn(rank, world_size, *args, **kwargs)
        finally:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        buf = io.BytesIO()
        torch.save(result, buf)
        (out / f"{rank}.tmp").write_bytes(buf.getvalue())
        os.replace(out / f"{rank}.tmp", out / f"{rank}.ok")
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        payload = (type(e).__name__, traceback.format_exc(), isinstance(e, AssertionError))
        (out / f"{rank}.tmp").write_bytes(pickle.dumps(payload))
        os.replace(out / f"{rank}.tmp", out / f"{rank}.err")
        raise SystemExit(1)


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 300.0,
    threads: int = 1,
    cpu_redirects: bool = True,
    grace: float = 10.0,
    env: dict[str, str] | None = None,
    gpus: bool = False,
    daemon: bool | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` gloo ranks; their results in rank order.

    ``fn`` must be importable by the children (a module-level function). ``env`` adds
    environment variables for the ranks. ``gpus=True`` makes them NCCL ranks instead, rank ``r``
    on GPU ``r``, with every GPU visible and no CPU redirects. Ranks are daemon processes (they die
    with the test) unless ``daemon=False`` or ``gpus``: a rank that starts processes of its own (an
    ``sgl.Engine``) cannot be a daemon. See the module docstring for failure handling.
    """
    ctx = mp.get_context("spawn")
    rank_env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world_size),
        **({} if gpus else {"CUDA_VISIBLE_DEVICES": ""}),
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
        "OMP_NUM_THREADS": str(threads),
        **(env or {}),
    }
    with tempfile.TemporaryDirectory(prefix="ranks-") as out_dir:
        procs = []
        try:
            for rank in range(world_size):
                with _env(**rank_env, RANK=str(rank), LOCAL_RANK=str(rank)):
                    p = ctx.Process(
                        target=_rank_main,
                        args=(fn, rank, world_size, args, kwargs, out_dir, timeout, threads, cpu_redirects, gpus),
                        name=f"rank{rank}",
                        daemon=(not gpus) if daemon is None else daemon,  # daemons cannot start an sgl.Engine
                    )
                    p.start()
                procs.append(p)
            return _collect(procs, Path(out_dir), timeout, grace)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join(5)


def _collect(procs, out: Path, timeout: float, grace: float) -> list[Any]:
    import torch

    deadline = time.monotonic() + timeout
    failed_at = None
    while True:
        done = {p for p in range(len(procs)) if (out / f"{p}.ok").exists() or (out / f"{p}.err").exists()}
        dead = {r for r, p in enumerate(procs) if not p.is_alive() and r not in done}
        errs = sorted(out.glob("*.err"))
        if len(done) == len(procs):
            break
        if dead:  # died without writing anything (segfault, os._exit, OOM kill)
            time.sleep(0.5)  # its outcome file may still be landing
            dead = {r for r in dead if not (out / f"{r}.ok").exists() and not (out / f"{r}.err").exists()}
            if dead:
                failures = _failures(out)
                for r in dead:
                    failures[r] = ("died", f"process exited with code {procs[r].exitcode} and no traceback")
                raise RankError(failures)
        if errs and failed_at is None:
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace:
            break
        if time.monotonic() > deadline:
            failures = _failures(out)
            missing = [r for r in range(len(procs)) if r not in done]
            for r in missing:
                if procs[r].is_alive():
                    os.kill(procs[r].pid, signal.SIGUSR1)
            time.sleep(2)
            for r in missing:
                stack = (out / f"{r}.stack").read_text() if (out / f"{r}.stack").exists() else ""
                failures[r] = ("timeout", f"no result after {timeout:.0f} s; where it was:\n{stack}")
            raise RankTimeout(failures)
        time.sleep(0.1)
    failures = _failures(out)
    if failures:
        for r in range(len(procs)):
            if r not in failures and not (out / f"{r}.ok").exists():
                failures[r] = ("killed", f"still running {grace:.0f} s after another rank failed")
        real = [v for v in failures.values() if v[0] not in ("killed",)]
        if all(kind == "AssertionError" for kind, _ in real):
            raise RankAssertionError(failures)
        raise RankError(failures)
    return [torch.load(io.BytesIO((out / f"{r}.ok").read_bytes()), weights_only=False) for r in range(len(procs))]


def _failures(out: Path) -> dict[int, tuple[str, str]]:
    failures = {}
    for f in out.glob("*.err"):
        kind, tb, _ = pickle.loads(f.read_bytes())
        failures[int(f.stem)] = (kind, tb)
    return failures

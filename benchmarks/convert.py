"""Benchmark: HF -> Megatron conversion of a factory checkpoint against ``cp -r`` of the same files.

    .venv/bin/python benchmarks/convert.py --preset 7b --tp 2 --pp 2 --work /root/convert-bench --rounds 5 --keep

Measures, in one run on this host:

* ``cp -r`` of the HF directory (and ``cp -r`` + ``sync``, the same durability as the converter,
  which fsyncs its files before the rename);
* ``python -m ckpt_convertor hf-to-megatron`` as a child process: wall time and its peak RSS
  (``ru_maxrss`` from ``wait4``: the child alone);
* optionally (``--baseline DIR``) the same conversion with another checkout's converter in every
  round, before or after this one's in turn: on a shared host only numbers from the same minutes
  compare;
* the cache-hit restart: the same command again (a fresh process, as a restarted job), and the
  in-process ``ensure_megatron`` call RLinf's start-up makes;
* optionally (``--back``) ``megatron-to-hf`` the same way.

The factory checkpoint is generated into ``--work`` unless it is already there (keep ``--work``
off ``/tmp``, which the host cleans). The outputs (copy, conversion) are always deleted at the
end; the factory checkpoint too unless ``--keep``. The host is shared: every round records the
load average before it; run it more than once and report the spread, not one number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _child(cmd: list[str], cwd: Path = REPO) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit code) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode


def _same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of HF dirs ``a`` and ``b`` has the same name, dtype, shape and bytes (streamed)."""
    import torch
    from safetensors import safe_open

    wa = json.loads((a / "model.safetensors.index.json").read_text())["weight_map"]
    wb = json.loads((b / "model.safetensors.index.json").read_text())["weight_map"]
    if set(wa) != set(wb):
        return False
    for name in sorted(wa):
        with safe_open(str(a / wa[name]), "pt") as fa, safe_open(str(b / wb[name]), "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
            return False
    return True


def _sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="7b", choices=["tiny", "1b", "7b"])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/root/convert-bench"))
    ap.add_argument("--rounds", type=int, default=1, help="repeat cp / convert this many times (alternating)")
    ap.add_argument("--back", action="store_true", help="also time megatron-to-hf and check it is bit-exact")
    ap.add_argument("--keep", action="store_true", help="keep the factory checkpoint in --work for the next run")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (e.g. `git archive` of an older commit with rlinf_pangu linked in): "
                    "each round also converts with its ckpt_convertor, so before/after share the host's state")
    a = ap.parse_args()

    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    hf = work / f"hf-{a.preset}"
    results: dict = {"preset": a.preset, "tp": a.tp, "pp": a.pp, "host": platform.node(),
                     "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    try:
        if not (hf / "config.json").exists():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rlinf_pangu.make_checkpoint", "--preset", a.preset,
                            "--out", str(hf), "--dtype", "bf16", "--overwrite"], cwd=REPO, check=True)
            results["factory_seconds"] = time.perf_counter() - t0
        size = _du(hf)
        results["hf_bytes"] = size
        print(f"HF checkpoint: {size / 1024**3:.2f} GiB in {hf}", flush=True)
        _sync()

        mg = work / "mg"
        cp_dst = work / "hf-copy"
        rounds = []
        for i in range(a.rounds):
            r: dict = {"load_before": os.getloadavg()}
            shutil.rmtree(cp_dst, ignore_errors=True)
            _sync()
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", str(hf), str(cp_dst)], check=True)
            r["cp"] = time.perf_counter() - t0
            r["cp_sync"] = r["cp"] + _sync()
            shutil.rmtree(cp_dst)
            _sync()

            runs = [("convert", REPO)] + ([("baseline", a.baseline)] if a.baseline else [])
            if i % 2:  # alternate which converter runs first, against any order effect
                runs.reverse()
            r["order"] = [label for label, _ in runs]
            for label, repo in runs:
                shutil.rmtree(mg, ignore_errors=True)
                _sync()
                cmd = [sys.executable, "-m", "ckpt_convertor", "hf-to-megatron", "--hf", str(hf), "--out", str(mg),
                       "--tp", str(a.tp), "--pp", str(a.pp), "--no-progress"]
                wall, rss, rc = _child(cmd, cwd=repo)
                if rc != 0:
                    raise SystemExit(f"conversion ({label}, {repo}) failed with exit code {rc}")
                r[label] = wall
                r[f"{label}_peak_rss"] = rss
                r[f"{label}_ratio_vs_cp"] = wall / r["cp"]
                r[f"{label}_ratio_vs_cp_sync"] = wall / r["cp_sync"]
            rounds.append(r)
            print(json.dumps(r), flush=True)
        results["rounds"] = rounds
        results["megatron_bytes"] = _du(mg)

        wall, rss, rc = _child([sys.executable, "-m", "ckpt_convertor", "hf-to-megatron", "--hf", str(hf),
                                "--out", str(mg), "--tp", str(a.tp), "--pp", str(a.pp), "--no-progress"])
        results["restart_cli"] = wall
        results["restart_cli_rc"] = rc
        from ckpt_convertor import ensure_megatron

        t0 = time.perf_counter()
        _, converted = ensure_megatron(hf, mg, a.tp, a.pp)
        results["restart_in_process"] = time.perf_counter() - t0
        results["restart_reconverted"] = converted

        if a.back:
            back = work / "hf-back"
            shutil.rmtree(back, ignore_errors=True)
            wall, rss, rc = _child([sys.executable, "-m", "ckpt_convertor", "megatron-to-hf", "--megatron", str(mg),
                                    "--out", str(back), "--no-progress"])
            results["back"] = {"seconds": wall, "peak_rss": rss, "rc": rc, "bit_exact": _same_tensors(hf, back)}
            shutil.rmtree(back, ignore_errors=True)
        results["load_after"] = os.getloadavg()
    finally:
        for out in ("hf-copy", "mg", "hf-back"):
            shutil.rmtree(work / out, ignore_errors=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The conversion cache, the lock and atomic output: a second start skips the work; a changed
input or layout reconverts; kill -9 mid-conversion leaves the target as it was and a rerun
completes; two concurrent conversions of one target make one result and both succeed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckpt_convertor import ensure_megatron
from ckpt_convertor.cache import SIDECAR, is_complete, read_sidecar
from ckpt_convertor.convert import megatron_to_hf
from ckpt_convertor.megatron_io import RANK_FILE, RELEASE, find_checkpoint

from ckpt_testlib import assert_same_tensors, load_hf, write_hf

REPO = Path(__file__).resolve().parents[1]


def _files(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock")]


def _assert_good(hf: Path, out: Path, tp: int, pp: int, tmp: Path) -> None:
    mg = find_checkpoint(out)
    assert (mg.tp, mg.pp) == (tp, pp)
    back = megatron_to_hf(out, tmp / f"back_{tp}_{pp}_{time.monotonic_ns()}", fsync=False, progress=False)
    assert_same_tensors(load_hf(hf), load_hf(back))
    assert not _leftovers(out)


def test_second_start_skips_conversion(tmp_path):
    hf = write_hf(tmp_path / "hf")
    out, converted = ensure_megatron(hf, tmp_path / "mg", 2, 2, progress=False)
    assert converted
    before = _files(out)
    t0 = time.perf_counter()
    out2, converted2 = ensure_megatron(hf, tmp_path / "mg", 2, 2, progress=False)
    elapsed = time.perf_counter() - t0
    assert (out2, converted2) == (out, False)
    assert _files(out) == before  # nothing rewritten
    assert elapsed < 2.0, f"cache hit took {elapsed:.2f} s"


@pytest.mark.parametrize("change", ["config", "shard", "layout", "dtype", "deleted_rank_file"])
def test_changed_input_or_layout_reconverts(tmp_path, change):
    hf = write_hf(tmp_path / "hf", shard_bytes=64 * 1024)
    out, _ = ensure_megatron(hf, tmp_path / "mg", 2, 1, progress=False)
    tp, kw = 2, {}
    if change == "config":
        cfg = json.loads((hf / "config.json").read_text())
        cfg["max_position_embeddings"] = 1024
        (hf / "config.json").write_text(json.dumps(cfg))
    elif change == "shard":  # same size, new mtime: a replaced file is not trusted
        shard = sorted(hf.glob("model-*.safetensors"))[0]
        os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1_000_000_000))
    elif change == "layout":
        tp = 1
    elif change == "dtype":
        kw = {"dtype": "fp32"}
    else:
        (out / RELEASE / "mp_rank_01" / RANK_FILE).unlink()
    _, converted = ensure_megatron(hf, out, tp, 1, progress=False, **kw)
    assert converted
    assert is_complete(out, read_sidecar(out)["fingerprint"])
    assert find_checkpoint(out).tp == tp  # old rank directories are gone with the old checkpoint


def _cli(hf: Path, out: Path, tp: int, pp: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ckpt_convertor", "hf-to-megatron", "--hf", str(hf), "--out", str(out),
         "--tp", str(tp), "--pp", str(pp), "--no-progress", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_kill_9_mid_conversion_then_rerun_gives_a_clean_complete_result(tmp_path):
    # big enough that writing lasts a while (~100 MB fp32, 12 layers, written as 12 rank files)
    hf = write_hf(tmp_path / "hf", dtype="fp32", shard_bytes=32 * 1024**2, vocab_size=32768, hidden_size=256,
                  intermediate_size=512, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=4)
    out = tmp_path / "mg"
    ensure_megatron(hf, out, 1, 1, progress=False)  # a complete older conversion is in place
    old = _files(out)
    killed = False
    for _attempt in range(3):
        proc = _cli(hf, out, 4, 3)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            tmps = list(tmp_path.glob(".mg.tmp-*/release/*/" + RANK_FILE))
            if tmps:  # rank files are being written
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed = proc.returncode == -signal.SIGKILL
                break
            time.sleep(0.005)
        else:
            proc.wait()
        if killed:
            break
    assert killed, "the conversion finished before it could be killed"
    assert list(tmp_path.glob(".mg.tmp-*")), "the kill should have left a temp directory behind"
    assert _files(out) == old, "the killed conversion touched the existing checkpoint"
    rerun = _cli(hf, out, 4, 3)
    log, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log
    assert "converted:" in log
    _assert_good(hf, out, 4, 3, tmp_path)


def test_concurrent_conversions_of_one_target_make_one_result_and_both_succeed(tmp_path):
    hf = write_hf(tmp_path / "hf", dtype="fp32", vocab_size=16384, hidden_size=128, intermediate_size=256,
                  num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4)
    out = tmp_path / "mg"
    procs = [_cli(hf, out, 2, 3) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum("wrote " in log for log in logs) == 1, logs  # exactly one conversion ran
    assert sum("converted:" in log for log in logs) == 1, logs
    assert sum("up to date:" in log for log in logs) == 1, logs
    assert (out / SIDECAR).is_file()
    _assert_good(hf, out, 2, 3, tmp_path)

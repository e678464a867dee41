"""The patch ``transformer_engine.cudnn:torch's``: Transformer Engine must load the cuDNN torch uses.

On the H100 image TE's loader took the CUDA toolkit's cuDNN 9.14 before torch's 9.19 and torch then
refused its own cuDNN (docs/runs/gpu-h100-2026-12-07-te). The patch points ``CUDNN_HOME`` (what TE's
loader reads first) at torch's cuDNN. Here, without TE: where that cuDNN is found, that a user's choice
wins, and what the probe reads in TE's loader. tests/test_te_gpu.py checks the result where TE runs.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from rlinf_pangu.patches import transformer_engine as te_patch

#: TE 2.20's loader, the lines the probe looks for (from transformer_engine/common/__init__.py)
LOADER_2_20 = '''
def _load_cuda_library_from_system(lib_name: str):
    paths = (
        os.environ.get(f"{lib_name.upper()}_HOME"),
        os.environ.get(f"{lib_name.upper()}_PATH"),
        os.environ.get("CUDA_HOME"),
        "/usr/local/cuda",
    )

def _load_cuda_library(lib_name: str):
    found, handle = _load_cuda_library_from_system(lib_name)
'''


@pytest.fixture
def clean_env(monkeypatch):
    """No cuDNN named; whatever the patch sets is undone afterwards (later tests start subprocesses)."""
    import os

    saved = dict(os.environ)
    for var in (*te_patch.ENV_VARS, "LD_LIBRARY_PATH"):
        os.environ.pop(var, None)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


def _cudnn_version(lib: Path) -> int:
    return ctypes.CDLL(str(lib)).cudnnGetVersion()


def test_torchs_cudnn_is_found_beside_torch_and_is_the_one_torch_was_built_with():
    home = te_patch.torch_cudnn_home()
    assert home is not None and home.parent.parent == Path(torch.__file__).parent.parent, home
    assert _cudnn_version(home / "lib" / "libcudnn.so.9") == torch.backends.cudnn.version()


def test_unset_cudnn_home_is_pointed_at_torchs_cudnn(clean_env):
    te_patch.point_te_at_torchs_cudnn()
    import os

    assert os.environ["CUDNN_HOME"] == str(te_patch.torch_cudnn_home())


def test_torchs_cudnn_lib_goes_first_on_ld_library_path_once(clean_env):
    import os

    lib = str(te_patch.torch_cudnn_home() / "lib")
    clean_env.setenv("LD_LIBRARY_PATH", os.pathsep.join(["/usr/local/cuda/lib64", lib]))
    te_patch.point_te_at_torchs_cudnn()
    assert os.environ["LD_LIBRARY_PATH"].split(os.pathsep) == [lib, "/usr/local/cuda/lib64"]


@pytest.mark.parametrize("var", te_patch.ENV_VARS)
def test_a_cudnn_the_user_named_is_left_alone(clean_env, var, tmp_path):
    import os

    clean_env.setenv(var, str(tmp_path))
    clean_env.setenv("LD_LIBRARY_PATH", "/opt/mine")
    te_patch.point_te_at_torchs_cudnn()
    assert os.environ[var] == str(tmp_path)
    assert var == "CUDNN_HOME" or "CUDNN_HOME" not in os.environ
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/mine"


_IN_A_FRESH_PROCESS = """
import json, torch
from rlinf_pangu.patches import transformer_engine as te_patch
before = te_patch.mapped_cudnn_files()  # torch's import maps its core library itself
te_patch.point_te_at_torchs_cudnn()
print(json.dumps({"before": before, "mapped": te_patch.mapped_cudnn_files(), "torch": torch.backends.cudnn.version()}))
"""


def _fresh(ld_library_path: str | None) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (*te_patch.ENV_VARS, "LD_LIBRARY_PATH")}
    if ld_library_path is not None:
        env["LD_LIBRARY_PATH"] = ld_library_path
    out = subprocess.run([sys.executable, "-c", _IN_A_FRESH_PROCESS], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_process_that_applies_the_patch_maps_every_cudnn_library_from_torchs_copy():
    """LD_LIBRARY_PATH set inside a process does not reach its own loader; on the H100 CUDNN_HOME alone left
    TE on torch's core library and the image's 9.14 sub-libraries (docs/runs/gpu-h100-2026-12-07-te2). The
    patch loads torch's eight libraries by path: every cuDNN file mapped afterwards is torch's, and torch
    accepts the cuDNN it finds."""
    home = te_patch.torch_cudnn_home()
    seen = _fresh(None)
    assert len(seen["before"]) < len(seen["mapped"]), seen  # the patch loaded them, not torch's import
    assert sorted(Path(f).name for f in seen["mapped"]) == sorted(p.name for p in (home / "lib").glob("libcudnn*.so.9"))
    assert all(Path(f).parent == home / "lib" for f in seen["mapped"]), seen["mapped"]
    assert seen["torch"] == torch.backends.cudnn.version()


def test_a_process_whose_loader_started_with_torchs_cudnn_first_loads_nothing_itself():
    """Ray's workers and the test ranks inherit the variables: the patch returns before loading anything
    (torch's own import maps what it needs, from the same copy)."""
    seen = _fresh(str(te_patch.torch_cudnn_home() / "lib"))
    assert seen["mapped"] == seen["before"], seen


def test_the_load_order_puts_each_library_after_the_cudnn_libraries_it_needs():
    """A library loaded before one it needs would resolve that one by name, from wherever the system's
    loader finds it first (the image's 9.14 on the H100). The needs are read from each file (DT_NEEDED)."""
    order = [p.name for p in te_patch._cudnn_libraries(te_patch.torch_cudnn_home() / "lib")]
    assert order[0] == "libcudnn_graph.so.9" and order[-1] == "libcudnn.so.9", order
    for name in order:
        for need in _needed(te_patch.torch_cudnn_home() / "lib" / name):
            if need.startswith("libcudnn"):
                assert order.index(need) < order.index(name), (name, need, order)


def _needed(lib: Path) -> list[str]:
    """DT_NEEDED entries of an ELF shared library, read with the standard library only."""
    import struct

    data = lib.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, lib  # 64-bit ELF
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynamic = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC
    strtab = sections[dynamic[6]]  # sh_link: its string table
    needed = []
    for off in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            start = strtab[4] + val
            needed.append(data[start:data.index(b"\0", start)].decode())
    return needed


def _fake_te(tmp_path: Path, loader: str) -> Path:
    common = tmp_path / "transformer_engine" / "common"
    common.mkdir(parents=True)
    (tmp_path / "transformer_engine" / "__init__.py").write_text("")
    (common / "__init__.py").write_text(loader)
    return tmp_path / "transformer_engine"


def test_the_probe_sees_te_2_20s_loader_prefer_the_toolkit(tmp_path, monkeypatch):
    te_dir = _fake_te(tmp_path, LOADER_2_20)
    monkeypatch.setattr(te_patch, "_package_dir", lambda name: te_dir if name == "transformer_engine" else None)
    assert te_patch.te_loader_prefers_the_toolkit()


def test_the_probe_fails_when_the_loader_no_longer_reads_cudnn_home(tmp_path, monkeypatch):
    te_dir = _fake_te(tmp_path, LOADER_2_20.replace('os.environ.get(f"{lib_name.upper()}_HOME"),', ""))
    monkeypatch.setattr(te_patch, "_package_dir", lambda name: te_dir if name == "transformer_engine" else None)
    assert not te_patch.te_loader_prefers_the_toolkit()


def test_without_te_the_probe_says_not_needed():
    if te_patch._package_dir("transformer_engine") is not None:
        pytest.skip("Transformer Engine is installed here (tests/test_te_gpu.py covers it)")
    assert not te_patch.te_loader_prefers_the_toolkit()


@pytest.fixture
def te_applies(clean_env):
    """As where TE 2.20 is installed: the patch's module present, its probe true, not yet applied here."""
    from rlinf_pangu.patches import PATCHES, core

    clean_env.setattr(core, "installed", lambda module: True)
    clean_env.setattr(PATCHES[te_patch.TORCH_CUDNN], "applies", lambda: True)
    clean_env.setattr(PATCHES[te_patch.TORCH_CUDNN], "done", False)
    return clean_env


def test_without_te_the_shell_gets_no_lines(clean_env, capsys):
    if te_patch._package_dir("transformer_engine") is not None:
        pytest.skip("Transformer Engine is installed here")
    from rlinf_pangu.patches import PATCHES

    clean_env.setattr(PATCHES[te_patch.TORCH_CUDNN], "done", False)
    te_patch.print_env()
    assert capsys.readouterr().out == ""


def test_the_shell_lines_set_what_the_patch_sets(te_applies, capsys):
    import os
    import shlex

    te_patch.print_env()
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line)[1].split("=", 1)[0] for line in lines] == ["CUDNN_HOME", "LD_LIBRARY_PATH"]
    assert shlex.split(lines[0])[1] == f"CUDNN_HOME={os.environ['CUDNN_HOME']}"


def test_the_shell_lines_are_empty_when_the_user_named_a_cudnn(te_applies, capsys, tmp_path):
    te_applies.setenv("CUDNN_PATH", str(tmp_path))
    te_patch.print_env()
    assert capsys.readouterr().out == ""

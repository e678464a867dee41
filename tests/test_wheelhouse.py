"""The air-gapped install procedure (README, GPU section): a wheelhouse cut into chunks by
scripts/build_wheelhouse.py, installed chunk by chunk into ONE target folder by
scripts/install_wheelhouse.sh, ending with the project installed and ``python -m rlinf.train``
resolving with that folder on ``PYTHONPATH``.

Real pip, real wheels (written here: small, each with a console script; two pairs share a package
folder, one pair declared an install group like Transformer Engine's three wheels), the project's
real chunker and installer. What must hold:

* chunk by chunk into one target, nothing an earlier chunk installed goes away (``bin/`` scripts,
  a package folder two wheels share); a negative control shows plain ``pip install --target`` per
  chunk losing the first chunk's script;
* a file cut across chunks is joined and sha256-checked; a corrupted part is named, nothing of it
  installed;
* the wheels of an install group wait for each other (and for a wheel built on the host, as TE's
  torch binding is) and go in together; a fallback wheel goes in only when asked for;
* chunks are as few as the size limit allows, each under it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install_wheelhouse.sh"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bw = _load("build_wheelhouse")
wi = _load("wheelhouse_install")


def make_wheel(out: Path, name: str, version: str, files: dict[str, bytes], script: str | None = None) -> Path:
    """A minimal valid py3 wheel: ``files`` (path -> bytes), an optional console script
    ``<script> = <name>_pkg:main`` printing ``<name> <version>``, and a RECORD pip accepts."""
    dist = f"{name}-{version}.dist-info"
    members = dict(files)
    members[f"{name}_pkg/__init__.py"] = f"def main():\n    print('{name} {version}')\n".encode()
    members[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    members[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if script:
        members[f"{dist}/entry_points.txt"] = f"[console_scripts]\n{script} = {name}_pkg:main\n".encode()
    record = []
    for path, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    members[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_STORED) as z:  # stored: the payload keeps its size
        for path, data in members.items():
            z.writestr(path, data)
    return whl


def _payload(seed: int, n: int = 24_000) -> bytes:
    return hashlib.shake_256(str(seed).encode()).digest(n)  # incompressible, reproducible


@pytest.fixture()
def house(tmp_path) -> dict:
    """Four wheels, an sdist and a fallback wheel, cut into CHUNK-byte chunks by the real chunker.

    alpha, beta: console scripts; both write ``sharedns/`` (different files).
    gamma, delta: an install group (they share ``grouped/``), delta a "built on the host" wheel
    whose source travels as an sdist, like TE's torch binding; its prebuilt copy is a fallback.
    """
    src = tmp_path / "src"
    src.mkdir()
    alpha = make_wheel(src, "alpha", "1.0", {"sharedns/alpha_part.py": b"A = 1\n", "alpha_pkg/blob.bin": _payload(1)}, "alpha-tool")
    beta = make_wheel(src, "beta", "1.0", {"sharedns/beta_part.py": b"B = 2\n", "beta_pkg/blob.bin": _payload(2)}, "beta-tool")
    gamma = make_wheel(src, "gamma", "1.0", {"grouped/gamma.py": b"G = 3\n", "gamma_pkg/blob.bin": _payload(3)})
    built = tmp_path / "built"
    built.mkdir()
    delta = make_wheel(built, "delta", "1.0", {"grouped/delta.py": b"D = 4\n"})
    sdist = src / "delta-1.0.tar.gz"
    sdist.write_bytes(_payload(4, 2000))
    fallback_dir = tmp_path / "fallback"
    fallback_dir.mkdir()
    fallback = make_wheel(fallback_dir, "delta", "1.0", {"grouped/delta.py": b"D = 4\n"})
    files = [sdist, gamma, alpha, beta, fallback]
    man = bw.manifest([f for f in files if f is not fallback], te=False, fallback=[fallback])
    man["together"] = {"grouped": ["gamma", "delta"]}
    man["build"] = {sdist.name: "(the test puts delta's wheel into spool/built)"}
    out = tmp_path / "wheelhouse"
    out.mkdir()
    for f in files:  # the wheelhouse folder itself, as build_wheelhouse.main leaves it: whole files + manifest
        (out / f.name).write_bytes(f.read_bytes())
    (out / "MANIFEST.json").write_text(json.dumps(man))
    chunks = bw.write_chunks(out, files, CHUNK, man)
    return {"chunks": chunks, "files": files, "delta": delta, "target": tmp_path / "site", "man": man, "out": out}


CHUNK = 20 * 1024  # bytes: every 24 kB wheel crosses a chunk boundary


def install(*args: Path | str, fallback: str | None = None) -> subprocess.CompletedProcess:
    """``install_wheelhouse.sh SRC... TARGET``; with no SRC or a fallback, the installer it wraps."""
    cmd = ["bash", str(INSTALL), *map(str, args)]
    if fallback or len(args) == 1:
        cmd = [sys.executable, str(ROOT / "scripts" / "wheelhouse_install.py"), *map(str, args[:-1]),
               "--target", str(args[-1]), *(["--use-fallback", fallback] if fallback else [])]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=300)


def run_script(target: Path, name: str) -> str:
    """Run a console script the way a user would: from target/bin with PYTHONPATH=target."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([str(target / "bin" / name)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_chunks_are_as_few_as_the_limit_allows_and_rebuild_every_file(house):
    total = sum(f.stat().st_size for f in house["files"])
    assert len(house["chunks"]) == -(-total // CHUNK)
    for d in house["chunks"]:
        assert sum(p.stat().st_size for p in d.iterdir() if p.name != "MANIFEST.json") <= CHUNK
    for f in house["files"]:  # every part, in order, is the file's bytes
        parts = house["man"]["parts"].get(f.name)
        pieces = [next(d / p for d in house["chunks"] if (d / p).exists()) for p in parts] if parts else []
        if parts:
            assert b"".join(p.read_bytes() for p in pieces) == f.read_bytes()


def test_chunk_by_chunk_into_one_target_keeps_every_script_and_shared_folder(house):
    target = house["target"]
    seen_alpha = False
    for i, chunk in enumerate(house["chunks"]):
        r = install(chunk, target)
        assert r.returncode == 0, r.stdout + r.stderr
        if (target / "bin" / "alpha-tool").exists():
            seen_alpha = True
        if seen_alpha:  # once there, an earlier chunk's script survives every later chunk
            assert run_script(target, "alpha-tool") == "alpha 1.0", f"after chunk {i}"
    assert run_script(target, "alpha-tool") == "alpha 1.0"
    assert run_script(target, "beta-tool") == "beta 1.0"
    assert (target / "sharedns" / "alpha_part.py").exists() and (target / "sharedns" / "beta_part.py").exists()
    r = subprocess.run([sys.executable, "-c", "import sharedns.alpha_part as a, sharedns.beta_part as b; print(a.A + b.B)"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)})
    assert r.stdout.strip() == "3", r.stderr


def test_negative_control_pip_target_per_chunk_loses_the_first_chunks_script(house, tmp_path):
    """What the installer exists for: pip's --target, once per chunk, replaces bin/ wholesale."""
    target = tmp_path / "naive"
    src = house["files"]
    for whl in (src[2], src[3]):  # alpha, then beta, as two transfers
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade",
                        "--disable-pip-version-check", "--target", str(target), str(whl)], check=True,
                       capture_output=True)
    assert (target / "bin" / "beta-tool").exists()
    assert not (target / "bin" / "alpha-tool").exists()


def test_an_install_group_waits_for_its_built_member_then_goes_in_together(house):
    target = house["target"]
    for chunk in house["chunks"]:
        r = install(chunk, target)
        assert r.returncode == 0, r.stderr
    assert "waits for delta" in r.stdout and "delta-1.0.tar.gz (arrived)" in r.stdout, r.stdout
    assert not (target / "grouped").exists() and not (target / "gamma_pkg").exists()  # held back, not half-installed
    # what scripts/build_te_torch.sh does on the GPU host: the built wheel into spool/built
    built = target / ".wheelhouse" / "spool" / "built"
    built.mkdir(exist_ok=True)
    (built / house["delta"].name).write_bytes(house["delta"].read_bytes())
    r = install(target)  # no new source: just install what is complete
    assert r.returncode == 0, r.stderr
    assert "installed 2 wheel(s)" in r.stdout and "gamma-1.0" in r.stdout and "delta-1.0" in r.stdout, r.stdout
    assert sorted(p.name for p in (target / "grouped").iterdir()) == ["delta.py", "gamma.py"]
    assert "(complete)" in r.stdout
    installed = json.loads((target / ".wheelhouse" / "installed.json").read_text())
    assert set(installed.values()) == {"alpha", "beta", "gamma", "delta"}  # the fallback stayed out


def test_the_whole_wheelhouse_folder_installs_in_one_run(house):
    """Without transfer limits: the folder at once (its chunks/ come along and change nothing)."""
    target = house["target"]
    r = install(house["out"], target)
    assert r.returncode == 0, r.stderr
    assert run_script(target, "alpha-tool") == "alpha 1.0" and run_script(target, "beta-tool") == "beta 1.0"
    assert "waits for delta" in r.stdout  # the group still waits for its built member


def test_the_fallback_goes_in_only_when_asked(house):
    target = house["target"]
    for chunk in house["chunks"]:
        install(chunk, target)
    r = install(target, fallback="delta")
    assert r.returncode == 0, r.stderr
    assert "using the fallback delta-1.0" in r.stdout and (target / "grouped" / "delta.py").exists()


def test_a_corrupted_part_is_named_and_nothing_of_it_is_installed(house):
    target = house["target"]
    split = next(name for name in house["man"]["parts"] if name.startswith("beta"))
    last_part = house["man"]["parts"][split][-1]
    chunk = next(d for d in house["chunks"] if (d / last_part).exists())
    data = bytearray((chunk / last_part).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (chunk / last_part).write_bytes(bytes(data))
    codes = [install(d, target) for d in house["chunks"]]
    bad = [r for r in codes if r.returncode != 0]
    assert bad and f"{split}: size/sha256 differ from the manifest" in bad[0].stderr, [r.stderr for r in codes]
    assert not (target / "bin" / "beta-tool").exists() and not (target / "beta_pkg").exists()
    spool = target / ".wheelhouse" / "spool"
    assert not (spool / split).exists() and not (spool / last_part).exists()  # gone: they can be sent again


def test_another_version_already_in_the_target_is_refused_by_name(house, tmp_path):
    target = house["target"]
    old = make_wheel(tmp_path, "alpha", "0.9", {}, "alpha-tool")  # a target that already holds another alpha
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--disable-pip-version-check",
                    "--target", str(target), str(old)], check=True, capture_output=True)
    results = [install(d, target) for d in house["chunks"]]
    assert any("already has alpha 0.9; this wheelhouse brings 1.0" in r.stderr for r in results), [r.stderr for r in results]
    assert run_script(target, "alpha-tool") == "alpha 0.9"  # the refused merge changed nothing


def test_the_te_build_script_reports_a_missing_sdist(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "scripts" / "build_te_torch.sh"), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 3
    assert (tmp_path / "build" / "done").read_text().startswith("rc=3")
    assert "no transformer_engine_torch-*.tar.gz" in (tmp_path / "build" / "build.log").read_text()


def test_the_real_wheelhouse_plan_carries_te_as_one_group():
    """The shipped table: TE's three distributions one install group, the binding built from its sdist."""
    te = bw.te_wanted()
    assert te == {"transformer-engine": "2.20.2", "transformer-engine-cu13": "2.20.2",
                  "transformer-engine-torch": "2.20.2", "nvdlfw-inspect": "0.2.2"}
    assert not set(te) & set(bw.wanted())  # never downloaded as plain wheels
    man = bw.manifest([], te=True, fallback=[])
    assert man["together"] == {"transformer_engine": list(bw.TE)}


# --------------------------------------------------------------------------------------
# The whole procedure's last steps, in a fresh interpreter
# --------------------------------------------------------------------------------------

#: This checkout's own install in .venv: hidden from the stand-in runtime (the project is installed
#: there by the procedure itself, and pip must never see, let alone uninstall, the shared .venv's).
_OWN = ("rlinf_pangu", "__editable__", "rlinf_pangu_startup.pth")


def _runtime(tmp_path: Path) -> Path:
    """A fresh venv standing in for the GPU image's Python: its site-packages sees, through a
    .pth path line, a folder of links to this .venv's packages (torch & co., as the image has;
    RLinf & co., as the wheelhouse target would) -- minus this project's own install."""
    import sysconfig

    venv = tmp_path / "runtime"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    image = tmp_path / "image-site"
    image.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(_OWN) and entry.suffix != ".pth":
            (image / entry.name).symlink_to(entry)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    (site / "zz_image_packages.pth").write_text(f"{image}\n")
    return venv


def _checkout_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    return dest


@pytest.mark.slow
def test_the_procedure_ends_with_python_m_rlinf_train(house, tmp_path):
    """README's GPU steps after the wheelhouse: the project into the runtime's Python with
    ``pip install --no-index --no-deps --no-build-isolation -e .`` (it brings the start-up .pth
    that makes ``rlinf.train`` exist), the target on ``PYTHONPATH``; then ``python -m rlinf.train``
    resolves, from any directory, to this project's driver (``--dry-run``: checks, prints, starts nothing)."""
    target = house["target"]
    for chunk in house["chunks"]:
        assert install(chunk, target).returncode == 0
    venv = _runtime(tmp_path)
    repo = _checkout_copy(tmp_path / "repo")
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(target)
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-e", "."], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([py, "-m", "rlinf.train", "--config", str(repo / "examples/math/pangu-tiny-grpo-megatron-cpu.yaml"),
                        "--dry-run", f"runner.output_dir={tmp_path / 'runs'}"], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '"transformer_impl": "local"' in r.stdout, r.stdout[-2000:]  # the CPU mode's choice, resolved
    where = subprocess.run([py, "-c", "import rlinf_pangu, alpha_pkg; print(rlinf_pangu.__file__); print(alpha_pkg.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert where.stdout.split() == [str(repo / "rlinf_pangu" / "__init__.py"), str(target / "alpha_pkg" / "__init__.py")], where

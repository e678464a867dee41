"""Install a wheelhouse (scripts/build_wheelhouse.py) into ONE target folder, chunk by chunk.

    python3 scripts/wheelhouse_install.py SRC [SRC ...] --target TARGET [--use-fallback PROJECT]
    (or: bash scripts/install_wheelhouse.sh SRC TARGET)

Run it after every transfer, always with the same TARGET; then ``export PYTHONPATH=TARGET``.
Standard library only: it runs on the GPU host's own Python before anything is installed.

Why not ``pip install --target`` once per chunk: pip's ``--target`` replaces a whole top-level
folder of the target with the one it just installed (``--upgrade``) or skips it with a warning
(without), so a second chunk's ``bin/`` wipes the first chunk's console scripts (``ray``), and of
two wheels that share a package folder (Transformer Engine's three all write
``transformer_engine/``) the second replaces the first. Here each step installs into a fresh
staging folder and *merges* it into the target file by file, so nothing installed before goes
away; and the wheels of one install group (the manifest's ``together``) go into one pip call,
once every member is there.

State lives in ``TARGET/.wheelhouse/``: ``spool/`` (every file received, parts reassembled and
sha256-checked against the manifest), ``manifest.json`` and ``installed.json``. Each run prints
what it installed and what it still waits for (parts of a file, a member of a group, a wheel to be
built from an sdist), and exits 0 unless something is wrong (a bad checksum, a conflicting
version already in the target), which it names.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MANIFEST = "MANIFEST.json"


class WheelhouseError(RuntimeError):
    """A wheelhouse that cannot be installed as it is; the message names the file at fault."""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str:
    """Normalized project name of a wheel/sdist/dist-info name (``ray-2.60.0-...whl`` -> ``ray``)."""
    return norm(re.split(r"-\d", filename, maxsplit=1)[0])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    tmp.replace(path)


class Wheelhouse:
    """The install state kept in ``TARGET/.wheelhouse``."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.state = target / ".wheelhouse"
        self.spool = self.state / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.manifest: dict = _read_json(self.state / "manifest.json", {})
        self.installed: dict[str, str] = _read_json(self.state / "installed.json", {})

    # ---- receiving -------------------------------------------------------------------

    def receive(self, src: Path) -> list[str]:
        """Copy what ``src`` holds into the spool (skipping what is there); returns the names."""
        if not src.is_dir():
            raise WheelhouseError(f"{src}: not a directory")
        if (src / MANIFEST).exists():
            self._merge_manifest(json.loads((src / MANIFEST).read_text()), src / MANIFEST)
        got = []
        for f in sorted(src.iterdir()):
            if f.name == MANIFEST or not f.is_file() or not re.search(r"\.(whl|tar\.gz)(\.part\d+)?$", f.name):
                continue
            dst = self.spool / f.name
            if not (dst.exists() and dst.stat().st_size == f.stat().st_size):
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.copyfile(f, tmp)
                tmp.replace(dst)
            got.append(f.name)
        return got

    def _merge_manifest(self, new: dict, where: Path) -> None:
        """Every chunk carries the same manifest; the wheelhouse folder itself one without parts."""
        old = self.manifest
        for name, meta in new.get("files", {}).items():
            if name in old.get("files", {}) and old["files"][name] != meta:
                raise WheelhouseError(f"{where}: {name} differs from the manifest of an earlier chunk (mixed wheelhouses?)")
        merged = {**old, **new, "files": {**old.get("files", {}), **new.get("files", {})}}
        for key in ("parts", "chunks"):
            merged[key] = new.get(key) or old.get(key) or type(new.get(key, []))()
        self.manifest = merged
        _write_json(self.state / "manifest.json", merged)

    # ---- reassembling and checking -----------------------------------------------------

    def reassemble(self) -> dict[str, list[str]]:
        """Join every file whose parts are all in the spool; returns file -> missing parts."""
        waiting = {}
        for name, parts in self.manifest.get("parts", {}).items():
            whole = self.spool / name
            if whole.exists():
                continue
            missing = [p for p in parts if not (self.spool / p).exists()]
            if missing:
                waiting[name] = missing
                continue
            tmp = whole.with_name(whole.name + ".tmp")
            with tmp.open("wb") as out:
                for p in parts:
                    with (self.spool / p).open("rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
            try:
                self._check(tmp, name)
            except WheelhouseError:
                for p in parts:  # which part is bad is unknown: all of them must come again
                    (self.spool / p).unlink()
                raise
            tmp.replace(whole)
            for p in parts:
                (self.spool / p).unlink()
            print(f"[wheelhouse] {name}: {len(parts)} parts joined, sha256 OK")
        return waiting

    def _check(self, path: Path, name: str) -> None:
        meta = self.manifest.get("files", {}).get(name)
        if meta is None:
            return  # a file the manifest does not know (a plain folder of wheels, a built wheel)
        if path.stat().st_size != meta["size"] or sha256(path) != meta["sha256"]:
            path.unlink()
            raise WheelhouseError(
                f"{name}: size/sha256 differ from the manifest ({meta['size']} bytes, {meta['sha256']}); "
                "the copy (and its parts) are deleted: send them again"
            )

    def verify_whole_files(self) -> None:
        """Check every whole file that arrived as it is (parts were checked when joined)."""
        checked = set(_read_json(self.state / "checked.json", []))
        for f in sorted(self.spool.iterdir()):
            if f.suffix in (".whl", ".gz") and f.name not in checked and f.name not in self.manifest.get("parts", {}):
                self._check(f, f.name)
                checked.add(f.name)
        _write_json(self.state / "checked.json", sorted(checked))

    # ---- deciding what to install ------------------------------------------------------

    def use_fallback(self, project: str) -> str:
        """Put the manifest's fallback wheel of ``project`` into the pool of installable wheels."""
        name = self.manifest.get("fallback", {}).get(norm(project))
        if name is None:
            raise WheelhouseError(f"the manifest has no fallback wheel for {project}")
        src = self.spool / name
        if not src.exists():
            raise WheelhouseError(f"the fallback {name} has not arrived (it travels in the last chunk)")
        dst = self.spool / "built" / name
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, dst)
        return name

    def _pool(self) -> dict[str, Path]:
        """Installable wheels: spool/*.whl that are not fallbacks, plus spool/built/*.whl."""
        fallbacks = set(self.manifest.get("fallback", {}).values())
        wheels = [w for w in self.spool.glob("*.whl") if w.name not in fallbacks]
        wheels += list((self.spool / "built").glob("*.whl"))
        pool: dict[str, Path] = {}
        for w in sorted(wheels):
            p = project_of(w.name)
            if p in pool and pool[p].name != w.name:
                raise WheelhouseError(f"two wheels of {p}: {pool[p].name} and {w.name}; remove one")
            pool[p] = w
        return pool

    def plan(self) -> tuple[list[list[Path]], list[str]]:
        """Batches to install now (one pip call each) and what is still awaited, in words."""
        pool = self._pool()
        pending = {p: w for p, w in pool.items() if w.name not in self.installed}
        batches: list[list[Path]] = []
        waiting = []
        grouped = set()
        for group, members in self.manifest.get("together", {}).items():
            members = [norm(m) for m in members]
            grouped.update(members)
            todo = [m for m in members if m in pending]
            if not todo:
                continue
            absent = [m for m in members if m not in pool]
            if absent:
                waiting.append(f"group {group}: waits for {', '.join(absent)} ({len(todo)} wheel(s) held back)")
            else:
                batches.append([pool[m] for m in members])  # all of them: one pip call
        rest = [w for p, w in sorted(pending.items()) if p not in grouped]
        if rest:
            batches.insert(0, rest)
        for sdist, script in self.manifest.get("build", {}).items():
            if project_of(sdist) not in pool:
                state = "arrived" if (self.spool / sdist).exists() else "not arrived yet"
                waiting.append(f"{sdist} ({state}): build its wheel into {self.spool / 'built'} with {script}")
        return batches, waiting

    # ---- installing ----------------------------------------------------------------------

    def install(self, wheels: list[Path], python: str) -> None:
        """One pip call into a fresh staging folder, then merged into the target."""
        with tempfile.TemporaryDirectory(prefix="stage-", dir=self.state) as stage:
            cmd = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--disable-pip-version-check", "--target", stage, *map(str, wheels)]
            r = subprocess.run(cmd)
            if r.returncode != 0:
                raise WheelhouseError(f"pip failed ({r.returncode}) installing {[w.name for w in wheels]}")
            self._check_versions(Path(stage))
            n = merge_tree(Path(stage), self.target)
        for w in wheels:
            self.installed[w.name] = project_of(w.name)
        _write_json(self.state / "installed.json", self.installed)
        print(f"[wheelhouse] installed {len(wheels)} wheel(s) ({n} files) into {self.target}: "
              + ", ".join(w.name.split("-")[0] + "-" + w.name.split("-")[1] for w in wheels))

    def _check_versions(self, stage: Path) -> None:
        """Refuse to merge a version over another version of the same project (stale files would stay)."""
        have = {}
        for d in self.target.glob("*.dist-info"):
            name, _, version = d.name[: -len(".dist-info")].partition("-")
            have[norm(name)] = version
        for d in stage.glob("*.dist-info"):
            name, _, version = d.name[: -len(".dist-info")].partition("-")
            old = have.get(norm(name))
            if old is not None and old != version:
                raise WheelhouseError(
                    f"{self.target} already has {name} {old}; this wheelhouse brings {version}: "
                    "install into a fresh target folder"
                )


def merge_tree(src: Path, dst: Path) -> int:
    """Move every file of ``src`` to the same place under ``dst``; files already in ``dst`` that
    ``src`` does not have stay. Returns the number of files moved."""
    n = 0
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        out = dst / rel
        if out.exists() and not out.is_dir():
            raise WheelhouseError(f"{out} is a file in the target, a folder in the new wheels")
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            target = out / f
            if target.is_dir():
                raise WheelhouseError(f"{target} is a folder in the target, a file in the new wheels")
            os.replace(Path(root) / f, target)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", type=Path, help="wheelhouse folders or chunks (NN/) that arrived")
    ap.add_argument("--target", type=Path, required=True, help="the one folder everything is installed into")
    ap.add_argument("--use-fallback", action="append", default=[], metavar="PROJECT",
                    help="install the manifest's prebuilt fallback wheel of PROJECT (e.g. transformer-engine-torch)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter whose pip installs (default: this one)")
    ap.add_argument("--status", action="store_true", help="only report what is installed and awaited")
    a = ap.parse_args(argv)
    try:
        wh = Wheelhouse(a.target.resolve())
        for src in a.sources:
            subs = sorted(d for d in src.glob("chunks/*") if d.is_dir()) if (src / "chunks").is_dir() else []
            for d in [src, *subs]:
                got = wh.receive(d)
                print(f"[wheelhouse] {d}: {len(got)} file(s) received")
        waiting_parts = wh.reassemble()
        wh.verify_whole_files()
        for project in a.use_fallback:
            print(f"[wheelhouse] using the fallback {wh.use_fallback(project)}")
        batches, waiting = wh.plan()
        if not a.status:
            for batch in batches:
                wh.install(batch, a.python)
            batches = []
        chunks = wh.manifest.get("chunks", [])
        if chunks:
            seen = [i for i, names in enumerate(chunks)
                    if all((wh.spool / n).exists() or n in wh.installed or _joined(wh, n) for n in names)]
            print(f"[wheelhouse] chunks received: {seen} of {len(chunks)}")
        for name, missing in waiting_parts.items():
            print(f"[wheelhouse] waiting: {name} needs {', '.join(missing)}")
        for line in waiting:
            print(f"[wheelhouse] waiting: {line}")
        done = not waiting_parts and not waiting and not batches
        print(f"[wheelhouse] {len(wh.installed)} wheel(s) installed in {wh.target}"
              + (" (complete)" if done else "") + f"; use: export PYTHONPATH={wh.target}")
        return 0
    except WheelhouseError as e:
        print(f"[wheelhouse] ERROR: {e}", file=sys.stderr)
        return 2


def _joined(wh: Wheelhouse, part: str) -> bool:
    """A part whose file was already joined (the part itself is gone)."""
    m = re.fullmatch(r"(.+)\.part\d+", part)
    return bool(m) and (wh.spool / m.group(1)).exists()


if __name__ == "__main__":
    raise SystemExit(main())

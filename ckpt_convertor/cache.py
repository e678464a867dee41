"""Fingerprint, lock and atomic output for conversions (no torch import: a cache hit stays cheap).

* The fingerprint covers what decides the output: every top-level file of the HF directory
  (name, size, mtime), a hash of config.json and of the index, the parallel layout, the dtype,
  the norm naming and the converter version. A converted checkpoint records it in its sidecar.
* A conversion writes into a temp directory beside the target and renames it into place when
  complete, so the target path only ever holds a complete checkpoint (or nothing).
* An ``fcntl`` lock beside the target serialises converters of the same target across processes:
  the second one waits, then finds the first one's result in the cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConversionError

log = logging.getLogger(__name__)

#: Bump when the output of the same input changes (layout, file format, sidecar).
CONVERTER_VERSION = "1"
#: Written last into a Megatron output directory: its presence means the checkpoint is complete.
SIDECAR = "rlinf_pangu_ckpt.json"
#: The HF metadata (config, tokenizer, index, RoPE buffers) kept with a Megatron output.
HF_META = "hf_meta"


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def fingerprint(hf_dir: str | Path, **params: Any) -> str:
    """A digest of the HF directory's files and the conversion parameters (see module doc)."""
    hf_dir = Path(hf_dir)
    try:
        entries = sorted(os.scandir(hf_dir), key=lambda e: e.name)
    except OSError as e:
        raise ConversionError(f"cannot list HF checkpoint directory {hf_dir}: {e}") from e
    files = []
    for e in entries:
        if e.is_file():
            st = e.stat()
            files.append([e.name, st.st_size, st.st_mtime_ns])
    doc = {
        "converter": CONVERTER_VERSION,
        "params": params,
        "files": files,
        "config": _sha256_file(hf_dir / "config.json"),
        "index": _sha256_file(hf_dir / "model.safetensors.index.json"),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def read_sidecar(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / SIDECAR).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(out: str | Path, fp: str) -> bool:
    """True when ``out`` holds a finished conversion with fingerprint ``fp`` and every file it
    recorded still has its recorded size (a cheap check against deleted or truncated rank files)."""
    out = Path(out)
    side = read_sidecar(out)
    if not side or side.get("fingerprint") != fp:
        return False
    for rel, size in side.get("files", {}).items():
        try:
            if (out / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _describe_unwritable(path: Path, e: OSError) -> ConversionError:
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ConversionError(f"output directory {path} is not writable ({e.strerror})")
    return ConversionError(f"cannot write in output directory {path}: {e}")


@contextlib.contextmanager
def target_lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``out`` (released by the kernel on kill)."""
    out = Path(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(parent / f".{out.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _describe_unwritable(parent, e) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cleanup_stale(out: Path) -> None:
    """Remove temp/old directories a killed conversion of ``out`` left behind (call under the lock)."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        log.info("removing %s left by an interrupted conversion", p)
        shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def is_ours(out: Path) -> bool:
    """A directory this converter wrote (it may be replaced), or an empty one."""
    return (out / SIDECAR).is_file() or (out.is_dir() and not any(out.iterdir()))


@contextlib.contextmanager
def staging(out: str | Path, may_replace: Callable[[Path], bool] = is_ours) -> Iterator[Path]:
    """A temp directory beside ``out`` that becomes ``out`` when the block completes.

    On any failure (including KeyboardInterrupt) the temp directory is removed and ``out`` is
    untouched. An existing ``out`` is replaced only if ``may_replace(out)``.
    """
    out = Path(out)
    parent = out.parent
    if out.exists() and not (out.is_dir() and may_replace(out)):
        raise ConversionError(
            f"{out} exists and was not written by ckpt_convertor; remove it or choose another output path"
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise _describe_unwritable(parent, e) from e
    try:
        yield tmp
        tmp.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            old.rmdir()
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

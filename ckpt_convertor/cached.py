"""Convert unless an identical conversion is already in place: the entry point callers use.

Sits above :mod:`.cache` (fingerprint, lock, atomic staging; no torch) and :mod:`.convert` (the
conversion itself, which imports torch): a cache hit imports only the first.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .cache import cleanup_stale, fingerprint, is_complete, target_lock

log = logging.getLogger(__name__)


def ensure_megatron(hf_dir: str | Path, out: str | Path, tp: int, pp: int = 1, vpp: int | None = None,
                    dtype: str | None = None, norm_names: str = "local", force: bool = False,
                    progress: bool | None = None) -> tuple[Path, bool]:
    """Make ``out`` hold the Megatron conversion of ``hf_dir``; returns (out, converted_now).

    A cache hit (same fingerprint, files intact) returns without importing torch. Concurrent
    callers for the same ``out`` serialise on the lock; the later ones find the cache warm.
    """
    out = Path(out).absolute()
    vpp = None if vpp in (None, 1) else int(vpp)
    fp = fingerprint(hf_dir, tp=tp, pp=pp, vpp=vpp, dtype=dtype or "auto", norm_names=norm_names)
    if not force and is_complete(out, fp):
        log.info("Megatron checkpoint %s is up to date (fingerprint %s); skipping conversion", out, fp[:12])
        return out, False
    with target_lock(out):
        if not force and is_complete(out, fp):
            log.info("Megatron checkpoint %s was converted by a concurrent caller; reusing it", out)
            return out, False
        cleanup_stale(out)
        from .convert import hf_to_megatron

        hf_to_megatron(hf_dir, out, tp, pp, vpp=vpp, dtype=dtype, norm_names=norm_names,
                       fingerprint=fp, progress=progress)
    return out, True

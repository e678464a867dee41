"""A training run's checkpoints: how they are written so a crash never leaves a half one where a
resume looks, how a resume finds and checks one before anything starts, and the digest that proves
the actor came back with exactly the state it saved.

RLinf 0.3.0's reasoning runner saves every ``runner.save_interval`` steps into
``<output_dir>/<experiment_name>/checkpoints/global_step_<N>/``: ``actor/`` (Megatron's torch
format: ``latest_checkpointed_iteration.txt``, ``iter_<N>/mp_rank_XX[_YYY]/model_optim_rng.pt`` and,
with the distributed optimizer, ``distrib_optim.pt`` beside it) and ``data/data.pt`` (the data
loader's position). It writes them in place, file after file, and its ``resume_dir=auto`` takes the
highest ``global_step_*`` directory, complete or not. Here (patched in through
:mod:`rlinf_pangu.patches.rlinf`):

* **writing** (:func:`save`, the runner's ``_save_checkpoint``): everything goes into
  ``checkpoints/.partial-global_step_<N>/`` (a name RLinf's scan and :func:`latest` skip), the HF
  metadata the export needs is added (``actor/hf_meta/``: config, tokenizer, index, RoPE buffers),
  every file is fsynced, the completeness marker :data:`MARKER` is written last (the step, every
  file's size, the parallel layout, the model's shapes and the digest of each actor rank's state),
  and the directory is renamed to ``global_step_<N>``. A crash at any point leaves either the
  previous complete checkpoints or the new complete one under a ``global_step_`` name.
* **resuming** (:func:`resolve`, in the driver before Ray starts): ``runner.resume_dir=auto`` is
  the highest complete checkpoint (or a fresh start when there is none); an explicit path must be
  a complete checkpoint of this model at this run's TP/PP. A missing, foreign or corrupt directory
  is a :class:`CheckpointError` that names the path (and the file at fault).
* **proving the resume** (:func:`state_digest`): each Megatron rank digests its weights, optimizer
  state (fp32 main parameters, Adam moments, step) and LR schedule when it saves and again right
  after it loads; a rank whose digests differ fails the resume instead of training on other state.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from torch.utils.data import RandomSampler

log = logging.getLogger(__name__)

#: Written last into a complete run checkpoint (``global_step_<N>/``).
MARKER = "rlinf_pangu_complete.json"
FORMAT = "rlinf-pangu/run-checkpoint"
FORMAT_VERSION = 1
STEP_PREFIX = "global_step_"
#: Where a checkpoint is written before it is complete; never matches ``global_step_*``.
PARTIAL_PREFIX = ".partial-"
#: A complete checkpoint of the same step being replaced (a run resumed from an earlier step).
REPLACED_PREFIX = ".replaced-"
#: Megatron's tracker file in the actor's directory.
TRACKER = "latest_checkpointed_iteration.txt"
HF_META = "hf_meta"
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}(\d+)$")


class CheckpointError(ValueError):
    """A run checkpoint that cannot be resumed from; the message starts with the path at fault."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def checkpoints_dir(output_dir: str | os.PathLike, experiment_name: str) -> Path:
    """Where RLinf's runner saves: ``<output_dir>/<experiment_name>/checkpoints``."""
    return Path(output_dir) / experiment_name / "checkpoints"


def step_dir(root: Path, step: int) -> Path:
    return root / f"{STEP_PREFIX}{int(step)}"


def partial_dir(final: Path) -> Path:
    return final.parent / f"{PARTIAL_PREFIX}{final.name}"


def step_of(path: str | os.PathLike) -> int | None:
    """N of a ``global_step_<N>`` directory name, else None."""
    m = _STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def begin(final: Path) -> Path:
    """A fresh, empty staging directory for ``final`` (a stale one from a crashed save is removed)."""
    tmp = partial_dir(final)
    if tmp.exists():
        log.warning("removing %s, left by a save that did not finish", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, final: Path, marker: Mapping[str, Any]) -> Path:
    """Make ``tmp`` the complete checkpoint ``final``: fsync its files, write the marker last
    (with every file's size), rename it into place, fsync the parent."""
    files = _fsync_tree(tmp)
    doc = dict(marker)
    doc["files"] = files
    _write_json(tmp / MARKER, doc)
    _fsync_dir(tmp)
    aside = None
    if final.exists():  # a run resumed from an earlier step saves this step again
        aside = final.parent / f"{REPLACED_PREFIX}{final.name}"
        if aside.exists():
            shutil.rmtree(aside)
        final.rename(aside)
    tmp.rename(final)
    _fsync_dir(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


def marker_doc(step: int, *, parallel: Mapping[str, Any], model: Mapping[str, Any],
               digests: Mapping[str, Sequence[Mapping[str, Any]]], experiment: str = "",
               backend: str = "megatron") -> dict[str, Any]:
    """The completeness marker's content (``files`` is added by :func:`commit`)."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": int(step),
        "experiment": experiment,
        "backend": backend,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "parallel": dict(parallel),
        "model": dict(model),
        "digests": {role: [dict(d) for d in ds if d] for role, ds in digests.items()},
    }


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> dict[str, int]:
    """fsync every file and directory under ``root``; returns relative path -> size."""
    files: dict[str, int] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            files[str(p.relative_to(root))] = p.stat().st_size
        _fsync_dir(Path(dirpath))
    return dict(sorted(files.items()))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_hf_meta(hf_dir: str | os.PathLike, dst: Path) -> None:
    """Keep the HF config, tokenizer, index and RoPE buffers next to the actor's Megatron files,
    where ``python -m ckpt_convertor megatron-to-hf`` finds them (the checkpoint then exports on its
    own, even after the run's model directory is gone)."""
    from ckpt_convertor.convert import save_hf_meta

    save_hf_meta(hf_dir, dst / HF_META)


def save(runner: Any) -> Path:
    """The runner's ``_save_checkpoint``: RLinf's three parts (actor, critic, data loader) into a
    staging directory, then :func:`commit`. Returns the complete checkpoint's path."""
    import torch

    cfg = runner.cfg
    step = int(runner.global_steps)
    final = step_dir(checkpoints_dir(cfg.runner.output_dir, cfg.runner.experiment_name), step)
    tmp = begin(final)
    digests: dict[str, list] = {}
    roles = [("actor", runner.actor)] + ([("critic", runner.critic)] if getattr(runner, "critic", None) else [])
    for role, group in roles:
        digests[role] = [d for d in group.save_checkpoint(str(tmp / role), step).wait() if d]
    (tmp / "data").mkdir()
    torch.save(runner.train_dataloader.state_dict(), tmp / "data" / "data.pt")
    backend = str(cfg.actor.get("training_backend", "megatron"))
    if backend == "megatron":  # what megatron-to-hf needs to export this checkpoint on its own
        copy_hf_meta(cfg.rollout.model.model_path, tmp / "actor")
    marker = marker_doc(step, parallel=parallel_of(cfg), model=model_of(cfg.rollout.model.model_path),
                        digests=digests, experiment=str(cfg.runner.experiment_name), backend=backend)
    commit(tmp, final, marker)
    log.info("saved checkpoint %s (step %d, %d actor ranks' state digested)", final, step, len(digests.get("actor", [])))
    return final


def parallel_of(cfg: Any) -> dict[str, Any]:
    """The actor's Megatron layout, which a torch-format checkpoint cannot change on load."""
    model = cfg.actor.model
    vpp = model.get("virtual_pipeline_model_parallel_size", None)
    return {
        "tp": int(model.tensor_model_parallel_size),
        "pp": int(model.pipeline_model_parallel_size),
        "vpp": int(vpp) if vpp not in (None, 1) else None,
    }


def model_of(hf_dir: str | os.PathLike) -> dict[str, Any]:
    """The model's shapes (``rlinf_pangu.layout.PanguDims``) from an HF directory's config.json."""
    from .layout import PanguDims

    path = Path(hf_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"cannot read the model config: {e}") from e
    return dataclasses.asdict(PanguDims.from_hf_config(cfg))


# --------------------------------------------------------------------------------------
# Checking and finding
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunCheckpoint:
    """A complete run checkpoint: its directory, step and marker."""

    path: Path
    step: int
    marker: dict[str, Any]

    @property
    def parallel(self) -> dict[str, Any]:
        return self.marker.get("parallel", {})

    def digests(self, role: str) -> list[dict[str, Any]]:
        return list(self.marker.get("digests", {}).get(role, []))


def read(path: str | os.PathLike) -> RunCheckpoint:
    """Check that ``path`` is a complete run checkpoint; :class:`CheckpointError` (naming the
    path, or the file at fault) if it is missing, foreign, incomplete or corrupt.

    Cheap (no tensor is read): the marker, every recorded file present with its recorded size,
    Megatron's tracker naming this step, every ``.pt`` file's zip directory readable.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such directory")
    if not path.is_dir():
        raise CheckpointError(path, "not a directory")
    name_step = step_of(path)
    marker_path = path / MARKER
    if not marker_path.is_file():
        what = _describe_foreign(path)
        raise CheckpointError(path, f"not a complete rlinf-pangu run checkpoint: {MARKER} is missing ({what})")
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(marker_path, f"corrupt completeness marker: {e}") from e
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise CheckpointError(marker_path, f"not an rlinf-pangu run checkpoint marker (format {marker.get('format') if isinstance(marker, dict) else None!r})")
    if int(marker.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(marker_path, f"written by a newer rlinf-pangu (format version {marker['version']} > {FORMAT_VERSION})")
    step = marker.get("step")
    if not isinstance(step, int) or name_step is None or name_step != step:
        raise CheckpointError(path, f"the directory name says step {name_step}, its marker says {step}: "
                              f"RLinf reads the step from the name, so it must be {STEP_PREFIX}{step}")
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(marker_path, "the marker lists no files")
    for rel, size in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f, "missing (listed in the completeness marker)")
        actual = f.stat().st_size
        if actual != size:
            raise CheckpointError(f, f"{actual} bytes, {size} when the checkpoint was saved (truncated or overwritten)")
        if f.suffix == ".pt":
            _check_zip(f)
    if marker.get("backend", "megatron") == "megatron":  # another backend's files: the sizes are the check
        _check_tracker(path / "actor" / TRACKER, step)
    if not (path / "data" / "data.pt").is_file():
        raise CheckpointError(path / "data" / "data.pt", "missing: the data loader's position was not saved")
    return RunCheckpoint(path, step, marker)


def _check_tracker(tracker: Path, step: int) -> None:
    """Megatron's tracker must exist and name this step's iteration directory."""
    if not tracker.is_file():
        raise CheckpointError(tracker, "missing: the actor's Megatron checkpoint is incomplete")
    if tracker.read_text().strip() != str(step):
        raise CheckpointError(tracker, f"names iteration {tracker.read_text().strip()!r}, not step {step}")


def _check_zip(f: Path) -> None:
    """torch.save files are zip archives: their central directory (at the end) must be readable."""
    try:
        with zipfile.ZipFile(f) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f, f"corrupt torch file: {e}") from e


def _describe_foreign(path: Path) -> str:
    if (path / "config.json").is_file():
        return "it looks like an HF model directory; resume_dir takes a checkpoints/global_step_<N> directory of a run"
    if (path / TRACKER).is_file():
        return "it looks like a bare Megatron checkpoint; resume_dir takes the global_step_<N> directory above actor/"
    if (path / "checkpoints").is_dir():
        return f"it looks like a run directory; use {path / 'checkpoints'}/{STEP_PREFIX}<N> or runner.resume_dir=auto"
    if step_of(path) is not None:
        return "a save that never finished, or a checkpoint written without rlinf-pangu's marker"
    return "not a checkpoints/global_step_<N> directory of a run"


def latest(root: str | os.PathLike) -> RunCheckpoint | None:
    """The complete checkpoint with the highest step under ``root`` (``.../checkpoints``), or None.
    Incomplete ones (a crashed save's ``.partial-`` directory, a ``global_step_`` without a valid
    marker) are skipped with a warning that says why."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = sorted(((step_of(d), d) for d in root.iterdir() if d.is_dir() and step_of(d) is not None), reverse=True)
    for _step, d in steps:
        try:
            return read(d)
        except CheckpointError as e:
            log.warning("skipping %s", e)
    for d in root.iterdir():
        if d.name.startswith(PARTIAL_PREFIX):
            log.warning("ignoring %s: a save that did not finish", d)
    return None


def check_compatible(ckpt: RunCheckpoint, cfg: Any) -> None:
    """The run can load this checkpoint: same model shapes, same actor TP/PP/VPP (Megatron's torch
    format stores one file per TP/PP rank and cannot reshard on load)."""
    want_par = parallel_of(cfg)
    have_par = {k: ckpt.parallel.get(k) for k in want_par}
    if have_par != want_par:
        raise CheckpointError(ckpt.path, f"saved with actor parallelism {have_par}, this run uses {want_par} "
                              "(a torch-format Megatron checkpoint loads only at the layout it was saved with)")
    want_model = model_of(cfg.rollout.model.model_path)
    have_model = ckpt.marker.get("model", {})
    diff = {k: (have_model.get(k), v) for k, v in want_model.items() if have_model.get(k) != v}
    if diff:
        k, (have, want) = next(iter(diff.items()))
        raise CheckpointError(ckpt.path, f"a checkpoint of another model: {k}={have}, but "
                              f"{cfg.rollout.model.model_path} has {k}={want}" + (f" ({len(diff) - 1} more differ)" if len(diff) > 1 else ""))


def resolve(cfg: Any) -> RunCheckpoint | None:
    """``runner.resume_dir`` made concrete, before anything starts (in place): ``null`` stays a
    fresh start; ``auto`` becomes the latest complete checkpoint of this run (or ``null``); a path
    must be a complete, compatible checkpoint. Returns the checkpoint to resume from."""
    from omegaconf import open_dict

    value = cfg.runner.get("resume_dir", None)
    if value is None or str(value).strip() in ("", "null", "None"):
        return None
    if str(value).strip() == "auto":
        root = checkpoints_dir(cfg.runner.output_dir, cfg.runner.experiment_name)
        ckpt = latest(root)
        if ckpt is None:
            log.info("runner.resume_dir=auto: no complete checkpoint under %s, starting from scratch", root)
    else:
        ckpt = read(Path(str(value)).expanduser().absolute())
    if ckpt is not None:
        check_compatible(ckpt, cfg)
        log.info("resuming from %s (step %d)", ckpt.path, ckpt.step)
    with open_dict(cfg):
        cfg.runner.resume_dir = str(ckpt.path) if ckpt is not None else None
    return ckpt


# --------------------------------------------------------------------------------------
# The state digest (in each Megatron rank)
# --------------------------------------------------------------------------------------

#: Elements per chunk of the checksum (bounded temporaries on a GPU).
_CHUNK = 1 << 22
#: Position weights cycle with this prime, so a swap of two elements changes the checksum.
_WEIGHT_CYCLE = 65521


def tensor_checksum(t: Any) -> str:
    """An exact checksum of a tensor's bytes, computed where the tensor lives (no copy to the host).

    The bytes are read as int16 words w_i; the checksum is (sum w_i, sum w_i * (i mod 65521 + 1))
    in Python integers: any changed word changes the first sum, any moved word the second. Every
    product fits int64 (|w| < 2^15, weight < 2^16, 2^22 per chunk), so it is exact on any device.
    """
    import torch

    x = t.detach()
    flat = x.contiguous().reshape(-1)
    if flat.element_size() == 1:
        words = flat.view(torch.uint8).to(torch.int16)
    elif flat.numel():
        words = flat.view(torch.int16)
    else:
        words = flat.view(torch.uint8).to(torch.int16)
    s1 = s2 = 0
    n = words.numel()
    for off in range(0, n, _CHUNK):
        c = words[off : off + _CHUNK].to(torch.int64)
        w = torch.arange(off, off + c.numel(), device=c.device, dtype=torch.int64) % _WEIGHT_CYCLE + 1
        s1 += int(c.sum())
        s2 += int((c * w).sum())
    return f"{str(x.dtype).removeprefix('torch.')}{list(x.shape)}:{s1}:{s2}"


def _digest(items: Iterable[tuple[str, Any]], record: dict[str, str] | None = None) -> tuple[str, int]:
    """sha256 over ``name=checksum`` lines (tensors by :func:`tensor_checksum`, other values by
    repr); ``record`` collects each line, to name the first item that differs on a mismatch."""
    import torch

    h = hashlib.sha256()
    n = 0
    for name, value in items:
        if isinstance(value, torch.Tensor):
            text = tensor_checksum(value)
            n += 1
        else:
            text = repr(value)
        h.update(f"{name}={text}\n".encode())
        if record is not None:
            record[name] = text
    return h.hexdigest(), n


def _inner_optimizers(optimizer: Any) -> list[Any]:
    chained = getattr(optimizer, "chained_optimizers", None)
    return list(chained) if chained is not None else ([optimizer] if optimizer is not None else [])


def _optimizer_items(optimizer: Any) -> Iterator[tuple[str, Any]]:
    """Each Megatron optimizer's torch optimizer: its parameters (the fp32 main copies), their
    state (Adam moments, step) and the group settings (lr, betas, ...), in a fixed order."""
    for i, opt in enumerate(_inner_optimizers(optimizer)):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for g, group in enumerate(inner.param_groups):
            per_param_step = any("step" in inner.state.get(p, {}) for p in group["params"])
            for key in sorted(k for k in group if k != "params"):
                if key == "step" and per_param_step:
                    # torch's Adam counts steps per parameter (digested below); Megatron's load adds
                    # a copy to the group that the optimizer never reads (TE's FusedAdam keeps it
                    # here only, and then it is digested)
                    continue
                yield f"opt{i}.group{g}.{key}", group[key]
            for j, p in enumerate(group["params"]):
                yield f"opt{i}.group{g}.param{j}", p
                for key, value in sorted(inner.state.get(p, {}).items()):
                    yield f"opt{i}.group{g}.param{j}.{key}", value


def _unwrap(chunk: Any) -> Any:
    """The model inside Megatron's wrappers (DDP, Float16Module): its parameter names are the
    checkpoint's (``embedding.word_embeddings.weight``), whatever the precision or wrapping."""
    import torch

    while isinstance(getattr(chunk, "module", None), torch.nn.Module):
        chunk = chunk.module
    return chunk


def weights_digest(chunks: Sequence[Iterable[tuple[str, Any]]]) -> str:
    """Digest of model weights: per model chunk (``model``, or ``model0..`` with virtual pipeline
    stages), its (name, tensor) pairs in order, names as in the checkpoint. Anything that holds
    the same tensors under the same names (a live model, a rank file, an export mapped back to
    the rank's shards) has the same digest."""
    return _digest((f"model{i}.{n}", t) for i, items in enumerate(chunks) for n, t in items)[0]


def state_digest(manager: Any, rank: int | None = None) -> dict[str, Any]:
    """Digest of a Megatron worker's live state (call with the weights and optimizer on their
    device, i.e. inside ``ensure_onloaded_and_then_offload``): weights, optimizer, LR schedule,
    and each item's checksum (``items``), so that a mismatch names the first item that differs."""
    items: dict[str, str] = {}
    chunks = [list(_unwrap(c).named_parameters()) for c in manager.model]
    w, _ = _digest(((f"model{i}.{n}", t) for i, c in enumerate(chunks) for n, t in c), items)
    o, no = _digest(_optimizer_items(getattr(manager, "optimizer", None)), items)
    sched = getattr(manager, "lr_scheduler", None)
    s, _ = _digest(((f"scheduler.{k}", v) for k, v in sorted(sched.state_dict().items())) if sched is not None else [], items)
    if rank is None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return {"rank": int(rank), "weights": w, "optimizer": o, "scheduler": s, "tensors": sum(map(len, chunks)) + no,
            "items": items}


def expected_digest(load_path: str | os.PathLike, rank: int) -> dict[str, Any] | None:
    """The digest a rank saved, from the marker of the checkpoint ``load_path`` (``.../actor``)
    belongs to; None when the checkpoint has no marker (not saved through :func:`save`)."""
    load_path = Path(load_path)
    try:
        marker = json.loads((load_path.parent / MARKER).read_text())
    except (OSError, ValueError):
        return None
    for d in marker.get("digests", {}).get(load_path.name, []):
        if d.get("rank") == rank:
            return d
    return None


def verify_loaded(load_path: str | os.PathLike, digest: Mapping[str, Any]) -> bool:
    """Compare a rank's state right after loading with what it saved; raise if they differ.
    Returns False when there is nothing to compare with (no marker)."""
    want = expected_digest(load_path, int(digest["rank"]))
    if want is None:
        log.warning("%s: no saved state digest for rank %s; the resumed state is not verified", load_path, digest["rank"])
        return False
    bad = [k for k in ("weights", "optimizer", "scheduler") if want.get(k) != digest.get(k)]
    if bad:
        saved, loaded = want.get("items", {}), digest.get("items", {})
        first = next((k for k in [*saved, *loaded] if saved.get(k) != loaded.get(k)), None)
        where = f"; first difference: {first} saved {saved.get(first)!r}, loaded {loaded.get(first)!r}" if first else ""
        raise CheckpointError(load_path, f"rank {digest['rank']} loaded {', '.join(bad)} that differ from what it saved "
                              f"(digest {digest.get(bad[0], '')[:12]} != saved {str(want.get(bad[0], ''))[:12]}{where})")
    return True


# --------------------------------------------------------------------------------------
# The data position
# --------------------------------------------------------------------------------------


class _ResumableIterator:
    """One epoch of torch's own RandomSampler iterator, Stateful for torchdata's StatefulDataLoader:
    the generator state at the epoch's start and how many indices were taken. Loading regenerates
    that epoch's order and skips what was taken, so the generator ends where it would have."""

    def __init__(self, sampler: "ResumableRandomSampler"):
        self.sampler = sampler
        gen = sampler.generator
        self._start = gen.get_state() if gen is not None else None
        self._it = RandomSampler.__iter__(sampler)
        self.yielded = 0

    def __iter__(self) -> "_ResumableIterator":
        return self

    def __next__(self) -> int:
        value = next(self._it)
        self.yielded += 1
        return value

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._start, "yielded": self.yielded}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        gen = self.sampler.generator
        if gen is not None and state.get("generator") is not None:
            gen.set_state(state["generator"])
            self._start = state["generator"]
        self._it = RandomSampler.__iter__(self.sampler)
        for _ in range(int(state["yielded"])):
            next(self._it)
        self.yielded = int(state["yielded"])


class ResumableRandomSampler(RandomSampler):
    """torch's RandomSampler (same order, same use of its generator) whose epoch iterator saves
    and restores its position, so a resumed run draws the batches the uninterrupted one would."""

    def __iter__(self) -> _ResumableIterator:
        return _ResumableIterator(self)

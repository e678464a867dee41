"""Header-only validation of an HF Pangu checkpoint directory, before anything loads it.

transformers reports a bad tensor in a printed table and raises a generic error; a user with a
7B checkpoint needs the exception itself to name the file or tensor at fault. Reading only the
safetensors headers keeps this cheap (no tensor data is touched).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from ..layout import ROTARY_INV_FREQ, PanguDims

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class PanguCheckpointError(ValueError):
    """An HF checkpoint directory is unusable; the message names the file or tensor."""


def weight_map(path: str | Path) -> dict[str, str]:
    """Tensor name -> shard file name, from the index (sharded) or the single file."""
    path = Path(path)
    if (path / INDEX).is_file():
        try:
            return dict(json.loads((path / INDEX).read_text())["weight_map"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PanguCheckpointError(f"{path / INDEX}: not a valid safetensors index ({e})") from None
    if (path / SINGLE).is_file():
        return {k: SINGLE for k in _keys(path / SINGLE)}
    raise PanguCheckpointError(f"{path}: no {INDEX} or {SINGLE} found")


def _keys(file: Path) -> list[str]:
    try:
        with safe_open(str(file), "pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises several types for a damaged header
        raise PanguCheckpointError(f"{file}: unreadable safetensors file ({e})") from None


def tensor_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """name -> (shape, dtype, file) from the shard headers, checking the index against the files."""
    path = Path(path)
    wm = weight_map(path)
    out: dict[str, tuple[tuple[int, ...], str, str]] = {}
    for fname in sorted(set(wm.values())):
        file = path / fname
        if not file.is_file():
            names = sorted(k for k, v in wm.items() if v == fname)
            raise PanguCheckpointError(f"{file}: shard listed in {INDEX} is missing (holds {names[0]} and {len(names) - 1} more)")
        try:
            with safe_open(str(file), "pt") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    out[k] = (tuple(sl.get_shape()), str(sl.get_dtype()), fname)
        except PanguCheckpointError:
            raise
        except Exception as e:
            raise PanguCheckpointError(f"{file}: unreadable safetensors file ({e})") from None
    for k, fname in wm.items():
        if k not in out or out[k][2] != fname:
            raise PanguCheckpointError(f"tensor {k!r}: {INDEX} places it in {fname}, which does not hold it")
    return out


def validate_hf_dir(path: str | Path, dims: PanguDims) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """Check every tensor the config implies is present with the right shape, and nothing else."""
    found = tensor_shapes(path)
    expected = dims.hf_shapes()
    for name, shape in expected.items():
        if name not in found:
            raise PanguCheckpointError(f"tensor {name!r} is missing from {path} (config implies it)")
        if found[name][0] != shape:
            raise PanguCheckpointError(
                f"tensor {name!r} in {found[name][2]} has shape {list(found[name][0])}, "
                f"config implies {list(shape)}"
            )
    for name, (_, _, fname) in found.items():
        if name not in expected and not ROTARY_INV_FREQ.search(name):
            if dims.tie_word_embeddings and name == "lm_head.weight":
                continue  # some tied exports still write the (identical) head
            raise PanguCheckpointError(f"unexpected tensor {name!r} in {fname}: not part of a Pangu model with this config")
    return found


def load_tensors(path: str | Path) -> dict:
    """Every weight of an HF checkpoint dir in memory (sharded or single file), RoPE buffers dropped.

    For small checkpoints (tests, benchmarks, references); conversion streams instead.
    """
    from safetensors.torch import load_file

    path = Path(path)
    out: dict = {}
    for file in sorted(set(weight_map(path).values())):
        out.update(load_file(str(path / file)))
    return {k: v for k, v in out.items() if not ROTARY_INV_FREQ.search(k)}

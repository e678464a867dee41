"""Header-only checks of an HF Pangu checkpoint directory, before anything loads it.

Two strengths, for two kinds of caller:

* :func:`check_tensors` names a *bad* tensor or file: a shard the index lists but that is absent,
  a shard whose header cannot be read (truncated, corrupt), an index that places a tensor in a
  shard that does not hold it, a tensor whose shape disagrees with the config. transformers
  reports a size mismatch in a printed table and raises a generic error, and a truncated shard as
  a bare safetensors error; a user with a 7B checkpoint needs the exception to name the culprit.
  It says nothing about tensors that are absent or extra: ``from_pretrained`` reports those
  through transformers' own loading info, which PEFT, TRL and accelerate depend on.
* :func:`require_complete` also refuses a checkpoint with an expected tensor missing (or one it
  cannot place). The start-up conversion (``ckpt_convertor``, RLinf's ``use_hf_ckpt``) and the
  project's own loaders call it through :func:`refuse_missing`: a checkpoint headed for RL
  training must never be half random.

Reading only the safetensors headers keeps this cheap (no tensor data is touched). This module
imports no transformers, so the converter can use it without paying for that import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

from safetensors import safe_open

from ..layout import ROTARY_INV_FREQ, PanguDims

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
#: The base model's attribute in the causal-LM class: base-model checkpoints lack this prefix.
BASE_PREFIX = "model."

#: name -> (shape, safetensors dtype, file name)
Found = dict[str, tuple[tuple[int, ...], str, str]]


class PanguCheckpointError(ValueError):
    """An HF checkpoint directory is unusable; the message names the file or tensor."""


def has_safetensors(path: str | Path) -> bool:
    """True when ``path`` holds the safetensors weights transformers would load by default."""
    path = Path(path)
    return (path / INDEX).is_file() or (path / SINGLE).is_file()


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


def tensor_shapes(path: str | Path) -> Found:
    """name -> (shape, dtype, file) from the shard headers, checking the index against the files."""
    path = Path(path)
    wm = weight_map(path)
    out: Found = {}
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
        except Exception as e:
            raise PanguCheckpointError(f"{file}: unreadable safetensors file ({e})") from None
    for k, fname in wm.items():
        if k not in out or out[k][2] != fname:
            raise PanguCheckpointError(f"tensor {k!r}: {INDEX} places it in {fname}, which does not hold it")
    return out


def expected_shapes(dims: PanguDims, base_model: bool = False) -> dict[str, tuple[int, ...]]:
    """The tensors a Pangu model with these dims has: the causal-LM names, or the base model's
    (no ``model.`` prefix, no head) for ``base_model=True``."""
    shapes = dims.hf_shapes()
    if not base_model:
        return shapes
    return {n[len(BASE_PREFIX):]: s for n, s in shapes.items() if n.startswith(BASE_PREFIX)}


def model_name(name: str, expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """The model tensor a checkpoint tensor loads into, as transformers maps the base-model prefix
    (a base-model checkpoint into the causal LM, or the reverse); None for one the model lacks."""
    for candidate in (name, BASE_PREFIX + name, name[len(BASE_PREFIX):] if name.startswith(BASE_PREFIX) else None):
        if candidate is not None and candidate in expected:
            return candidate
    return None


def check_tensors(path: str | Path, expected: Mapping[str, tuple[int, ...]], *, shapes: bool = True) -> Found:
    """Name any unreadable shard, lying index, or (``shapes``) tensor whose shape disagrees with
    ``expected``. Absent and extra tensors pass: callers that must refuse them use
    :func:`require_complete`."""
    found = tensor_shapes(path)
    if shapes:
        for name, (shape, _, fname) in found.items():
            target = model_name(name, expected)
            if target is not None and shape != tuple(expected[target]):
                raise PanguCheckpointError(
                    f"tensor {name!r} in {fname} has shape {list(shape)}, config implies {list(expected[target])}"
                )
    return found


def refuse_missing(expected: Iterable[str], present: Iterable[str], where: str | Path) -> None:
    """Raise naming the first expected tensor that ``present`` lacks: the one refusal the start-up
    conversion and the project's loaders share."""
    have = set(present)
    missing = [n for n in expected if n not in have]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise PanguCheckpointError(
            f"missing tensor {missing[0]!r}{more} in {where} (config.json expects it): refusing a partial "
            "checkpoint, whose missing weights would start training from random values"
        )


def require_complete(path: str | Path, dims: PanguDims) -> Found:
    """Every tensor the config implies is present with the right shape, and nothing else is."""
    expected = dims.hf_shapes()
    found = check_tensors(path, expected)
    refuse_missing(expected, found, path)
    for name, (_, _, fname) in found.items():
        if name not in expected and not ROTARY_INV_FREQ.search(name):
            if dims.tie_word_embeddings and name == "lm_head.weight":
                continue  # some tied exports still write the (identical) head
            raise PanguCheckpointError(f"unexpected tensor {name!r} in {fname}: not part of a Pangu model with this config")
    return found


def load_tensors(path: str | Path) -> dict:
    """Every weight of a complete HF checkpoint dir in memory (sharded or single file), RoPE buffers
    dropped; a partial checkpoint is refused (:func:`require_complete`).

    For small checkpoints (tests, benchmarks, references); conversion streams instead.
    """
    from safetensors.torch import load_file

    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise PanguCheckpointError(f"{path / 'config.json'}: cannot be read as JSON ({e})") from None
    require_complete(path, PanguDims.from_hf_config(config))
    out: dict = {}
    for file in sorted(set(weight_map(path).values())):
        out.update(load_file(str(path / file)))
    return {k: v for k, v in out.items() if not ROTARY_INV_FREQ.search(k)}

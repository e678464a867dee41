"""Export a checkpoint of RLinf's FSDP actor to an HF directory that serves and loads as Pangu.

``python -m rlinf_pangu.fsdp_export RUN/checkpoints/global_step_N --out DIR [--hf BASE] [--dtype bf16]``

Why this reads what it reads: RLinf's FSDP actor saves (``runner.save_interval``) a DCP checkpoint
for resuming and, with ``actor.fsdp_config.save_full_model_weights`` (on in ``configs/rlinf/fsdp.yaml``),
the whole model as one state dict under its HF names: ``actor/model_state_dict/full_weights.pt``.
That file holds weights only; the config and tokenizer come from the HF checkpoint the run started
from (``--hf``, else the run's ``config.resolved.yaml`` names it).

What the output holds: the weights as safetensors shards with an index (in the base checkpoint's
dtype unless ``--dtype`` says otherwise), the base's config.json and tokenizer files, and nothing
that points at remote code: the release's .py files are not copied and ``auto_map`` is dropped
from config.json and tokenizer_config.json, so the directory is what this project's classes load
(``python -m rlinf_pangu.serve``, ``AutoModelForCausalLM`` after ``rlinf_pangu.register()``).

Every name and shape is checked against the layout the config declares before anything is
written (the error names the tensor); the directory appears only once complete (written aside,
then renamed).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger(__name__)

#: Where RLinf's FSDP save puts the whole model (``FSDPStrategyBase.save_checkpoint``).
FULL_WEIGHTS = Path("model_state_dict") / "full_weights.pt"
#: Files of the base checkpoint the export carries over (``auto_map`` removed from the JSON ones).
META_FILES = ("config.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "generation_config.json", "chat_template.jinja")
#: The two JSON files that may point at the release's own code.
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
DEFAULT_SHARD_BYTES = 5 * 1024**3


class ExportError(ValueError):
    """The checkpoint cannot be exported; the message names the file or tensor at fault."""


def find_full_weights(checkpoint: str | Path) -> Path:
    """``full_weights.pt`` of a run's ``global_step_N``, its ``actor/``, or the file itself."""
    path = Path(checkpoint)
    for candidate in (path, path / FULL_WEIGHTS, path / "actor" / FULL_WEIGHTS):
        if candidate.is_file():
            return candidate
    raise ExportError(
        f"no {FULL_WEIGHTS} under {path} (nor under {path / 'actor'}): is it a checkpoint of RLinf's FSDP actor "
        "saved with actor.fsdp_config.save_full_model_weights: true?"
    )


def base_from_run(checkpoint: str | Path) -> Path | None:
    """The HF checkpoint a run started from: ``actor.model.model_path`` in the ``config.resolved.yaml``
    of the run directory above ``checkpoint`` (written by ``python -m rlinf.train``)."""
    import yaml

    for parent in [Path(checkpoint).resolve(), *Path(checkpoint).resolve().parents]:
        resolved = parent / "config.resolved.yaml"
        if resolved.is_file():
            cfg = yaml.safe_load(resolved.read_text()) or {}
            path = ((cfg.get("actor") or {}).get("model") or {}).get("model_path") or (
                (cfg.get("rollout") or {}).get("model") or {}).get("model_path")
            return Path(path) if path else None
    return None


def expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor a Pangu checkpoint with this config.json holds."""
    from .layout import PanguDims

    return {k: tuple(v) for k, v in PanguDims.from_hf_config(config).hf_shapes().items()}


def checked_state(state: dict, config: dict, source: Path) -> dict[str, torch.Tensor]:
    """The state dict's tensors by HF name, checked against the layout of ``config``.

    A tied model's ``lm_head.weight`` (the embedding under a second name) is dropped after
    checking it is that embedding; anything else unexpected, missing or misshapen is an error.
    """
    want = expected_tensors(config)
    tied = bool(config.get("tie_word_embeddings", False))
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"{source}: entry {name!r} is a {type(t).__name__}, not a tensor")
        if tied and name == "lm_head.weight" and name not in want:
            emb = state.get("model.embed_tokens.weight")
            if emb is None or not torch.equal(t, emb):
                raise ExportError(f"{source}: lm_head.weight differs from model.embed_tokens.weight in a tied model")
            continue
        if name not in want:
            raise ExportError(f"{source}: tensor {name!r} is not part of Pangu's layout for this config")
        if tuple(t.shape) != want[name]:
            raise ExportError(f"{source}: tensor {name!r} has shape {list(t.shape)}, the config expects {list(want[name])}")
        if not torch.isfinite(t).all():
            raise ExportError(f"{source}: tensor {name!r} has non-finite values")
        out[name] = t
    missing = [n for n in want if n not in out]
    if missing:
        raise ExportError(f"{source}: no tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return out


def _shards(tensors: dict[str, torch.Tensor], dtype: torch.dtype, shard_bytes: int) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * torch.empty(0, dtype=dtype).element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def _write_meta(base: Path, dst: Path, dtype: torch.dtype) -> list[str]:
    written = []
    for name in META_FILES:
        src = base / name
        if not src.is_file():
            continue
        if name in AUTO_MAP_FILES:
            data = json.loads(src.read_text())
            data.pop("auto_map", None)
            if name == "config.json":
                key = "torch_dtype" if "torch_dtype" in data or "dtype" not in data else "dtype"
                data[key] = _DTYPE_NAMES[dtype]
            (dst / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        else:
            shutil.copyfile(src, dst / name)
        written.append(name)
    if "config.json" not in written:
        raise ExportError(f"{base} has no config.json: pass the HF checkpoint the run started from (--hf)")
    return written


def export_fsdp_to_hf(checkpoint: str | Path, out: str | Path, base: str | Path | None = None,
                      dtype: str | torch.dtype | None = None, *, overwrite: bool = False,
                      shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write the HF directory ``out`` from an FSDP actor checkpoint (see the module docstring)."""
    from ckpt_convertor import cache
    from ckpt_convertor.hf_writer import SafetensorsWriter

    weights = find_full_weights(checkpoint)
    base = Path(base) if base is not None else base_from_run(checkpoint)
    if base is None or not (base / "config.json").is_file():
        raise ExportError(f"no HF checkpoint to take config and tokenizer from ({base}); pass --hf")
    config = json.loads((base / "config.json").read_text())
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ExportError(f"--dtype {dtype!r}: one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    if dtype is None:
        named = str(config.get("torch_dtype") or config.get("dtype") or "float32")
        dtype = {v: k for k, v in _DTYPE_NAMES.items()}.get(named, torch.float32)
    log.info("reading %s", weights)
    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    tensors = checked_state(state, config, weights)
    out = Path(out).absolute()
    groups = _shards(tensors, dtype, shard_bytes)
    files = {n: (f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" if len(groups) > 1 else "model.safetensors")
             for i, g in enumerate(groups) for n in g}
    may_replace = (lambda _p: True) if overwrite else (lambda p: not any(p.iterdir()))
    with cache.target_lock(out), cache.staging(out, may_replace=may_replace) as tmp:
        total = 0
        for group in groups:
            entries = [(n, tuple(tensors[n].shape), dtype) for n in group]
            w = SafetensorsWriter(tmp / files[group[0]], entries)
            try:
                for n in group:
                    total += w.write(n, tensors[n].detach().to(dtype).contiguous())
            except BaseException:
                w.abort()
                raise
            w.close()
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(files.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        _write_meta(base, tmp, dtype)
    log.info("wrote %s (%d tensors, %.1f MiB, %s) from %s", out, len(tensors), total / 2**20, _DTYPE_NAMES[dtype], weights)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlinf_pangu.fsdp_export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a run's checkpoints/global_step_N (or its actor/, or full_weights.pt)")
    p.add_argument("--out", required=True, help="the HF directory to write (must not exist, or be empty)")
    p.add_argument("--hf", help="the HF checkpoint the run started from (default: from the run's config.resolved.yaml)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights' dtype (default: the base checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(name)s] %(message)s")
    from ckpt_convertor.errors import ConversionError

    try:
        out = export_fsdp_to_hf(args.checkpoint, args.out, args.hf, args.dtype, overwrite=args.overwrite)
    except (ExportError, ConversionError) as e:  # bad input, or an output directory that is not ours to replace
        print(f"export error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

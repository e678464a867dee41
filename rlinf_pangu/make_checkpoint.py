"""Checkpoint factory: a complete official-layout openPangu-Embedded HF directory with random weights.

``python -m rlinf_pangu.make_checkpoint --preset {tiny,1b,7b} --out DIR [--seed N] [--dtype bf16]``

It writes what an official release holds (config.json with ``bias``/``auto_map``/eos 45892,
tokenizer_config.json with the chat template, a SentencePiece ``tokenizer.model`` with the
official vocabulary size and special-token ids, sharded safetensors with an index that also
carries ``rotary_emb.inv_freq`` like the official shards), so code written for the real model
runs unchanged on it. Weights stream shard by shard: the 7B preset never holds more than one
shard in memory. The directory appears atomically (written to a temp dir, then renamed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from .chat import BOS, CHAT_TEMPLATE, EOS_PIECE, EOS_TOKEN_ID, UNK, special_token_ids
from .layout import PanguDims
from .presets import preset

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
CORPUS = Path(__file__).with_name("assets") / "tokenizer_corpus.txt"
SHARD_BYTES = 2 * 1024**3


def hf_config_dict(cfg: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """config.json shaped like the official one (keys, auto_map, token ids)."""
    out = {
        "architectures": ["PanguEmbeddedForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_openpangu_dense.PanguEmbeddedConfig",
            "AutoModel": "modeling_openpangu_dense.PanguEmbeddedModel",
            "AutoModelForCausalLM": "modeling_openpangu_dense.PanguEmbeddedForCausalLM",
        },
        "model_type": "PanguEmbedded",
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "pad_token_id": 0,
        "eos_token_id": EOS_TOKEN_ID,
        "initializer_range": 0.02,
        "torch_dtype": _DTYPE_NAMES[dtype],
        "use_cache": True,
        "transformers_version": "4.53.2",
    }
    out.update(cfg)
    return dict(sorted(out.items()))


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def random_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Deterministic per-name init; biases and norm weights are non-trivial (not 0 or 1)."""
    g = _generator(seed, name)
    if name.endswith("bias"):
        t = torch.randn(shape, generator=g) * 0.1
    elif "norm" in name:
        t = 1.0 + torch.randn(shape, generator=g) * 0.1
    else:
        fan_in = shape[-1] if len(shape) > 1 else 1
        t = torch.randn(shape, generator=g) * min(0.1, fan_in**-0.5)
    return t.to(dtype)


def _inv_freq(cfg: dict[str, Any]) -> torch.Tensor:
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 1.0 / (cfg["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def iter_tensors(cfg: dict[str, Any], seed: int, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    dims = PanguDims.from_hf_config(cfg)
    inv = _inv_freq(cfg)
    for name, shape in dims.hf_shapes().items():
        yield name, random_tensor(name, shape, seed, dtype)
        if name.endswith("input_layernorm.weight"):  # official shards carry the RoPE buffer per layer
            yield name.replace("input_layernorm.weight", "self_attn.rotary_emb.inv_freq"), inv.clone()


def write_weights(out: Path, tensors: Iterator[tuple[str, torch.Tensor]], total: int, shard_bytes: int) -> None:
    """Stream tensors into ``model-XXXXX-of-YYYYY.safetensors`` shards plus the index."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    staged: list[Path] = []
    weight_map: dict[str, int] = {}
    total_size = 0
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="weights", disable=total < 64 * 1024**2)

    def flush() -> None:
        path = out / f".shard-{len(staged):05d}.safetensors"
        save_file(shards[-1], str(path), metadata={"format": "pt"})
        staged.append(path)
        shards[-1] = {}
        sizes[-1] = 0

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if sizes[-1] and sizes[-1] + nbytes > shard_bytes:
            flush()
        shards[-1][name] = t
        sizes[-1] += nbytes
        weight_map[name] = len(staged)
        total_size += nbytes
        bar.update(nbytes)
    if shards[-1]:
        flush()
    bar.close()
    n = len(staged)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for path, final in zip(staged, names):
        path.chmod(0o644)
        path.rename(out / final)
    index = {"metadata": {"total_size": total_size}, "weight_map": {k: names[v] for k, v in sorted(weight_map.items())}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def train_tokenizer_model(vocab_size: int, work: Path) -> bytes:
    """A SentencePiece model trained on the bundled corpus, padded to the official vocabulary.

    The trained pieces take the low ids; the named special tokens sit at their official ids; the
    rest are UNUSED filler pieces (never produced by encoding), so ids line up with configs
    written for the real model.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    specials = special_token_ids(vocab_size)
    prefix = work / "spm"
    spm.SentencePieceTrainer.train(
        input=str(CORPUS), model_prefix=str(prefix), vocab_size=1000, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=[t for t, i in sorted(specials.items(), key=lambda x: x[1]) if i > 2],
        num_threads=2, minloglevel=2,
    )
    proto = pb.ModelProto()
    proto.ParseFromString((work / "spm.model").read_bytes())
    by_piece = {p.piece: p for p in proto.pieces}
    slots: list[Any] = [None] * vocab_size
    for tok, idx in specials.items():
        slots[idx] = by_piece.pop(tok)
    rest = iter(p for p in proto.pieces if p.piece in by_piece)
    for i in range(vocab_size):
        if slots[i] is None:
            nxt = next(rest, None)
            if nxt is None:
                filler = pb.ModelProto.SentencePiece()
                filler.piece, filler.score, filler.type = f"<pangu_reserved_{i}>", 0.0, pb.ModelProto.SentencePiece.UNUSED
                nxt = filler
            slots[i] = nxt
    leftover = list(rest)
    if leftover:
        raise RuntimeError(f"{len(leftover)} trained pieces did not fit below the special-token ids")
    del proto.pieces[:]
    proto.pieces.extend(slots)
    return proto.SerializeToString()


def tokenizer_files(vocab_size: int) -> dict[str, Any]:
    specials = special_token_ids(vocab_size)
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for t, i in sorted(specials.items(), key=lambda x: x[1])
    }
    tok_cfg = {
        "tokenizer_class": "PanguTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_openpangu.PanguTokenizer", None]},
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS_PIECE,
        "unk_token": UNK,
        "pad_token": UNK,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 32768,
        "sp_model_kwargs": {},
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }
    special_map = {"bos_token": BOS, "eos_token": EOS_PIECE, "unk_token": UNK, "pad_token": UNK}
    gen = {"bos_token_id": 1, "eos_token_id": EOS_TOKEN_ID, "pad_token_id": 0, "do_sample": True,
           "temperature": 1.0, "top_p": 1.0}
    return {"tokenizer_config.json": tok_cfg, "special_tokens_map.json": special_map, "generation_config.json": gen}


def make_checkpoint(
    out: str | os.PathLike,
    preset_name: str = "tiny",
    seed: int = 0,
    dtype: str | torch.dtype = "bf16",
    shard_bytes: int = SHARD_BYTES,
    overwrite: bool = False,
    **overrides: Any,
) -> Path:
    """Write a complete official-layout Pangu HF directory at ``out`` (atomically) and return it."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    cfg = preset(preset_name, **overrides)
    dims = PanguDims.from_hf_config(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype), indent=2) + "\n")
        for name, content in tokenizer_files(dims.vocab_size).items():
            (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
        (tmp / "tokenizer.model").write_bytes(train_tokenizer_model(dims.vocab_size, tmp))
        for f in ("spm.model", "spm.vocab"):
            (tmp / f).unlink()
        total = sum(_numel(s) for s in dims.hf_shapes().values()) * torch.empty(0, dtype=dtype).element_size()
        total += dims.num_hidden_layers * dims.head_dim // 2 * 4  # the fp32 inv_freq buffers
        write_weights(tmp, iter_tensors(cfg, seed, dtype), total, shard_bytes)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s Pangu checkpoint (%s, seed %d) to %s", preset_name, dtype, seed, out)
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rlinf_pangu.make_checkpoint", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=["tiny", "1b", "7b"], default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--shard-gb", type=float, default=SHARD_BYTES / 1024**3)
    p.add_argument("--tie-word-embeddings", choices=["true", "false"], default=None,
                   help="override the preset's embedding tying")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    over = {} if a.tie_word_embeddings is None else {"tie_word_embeddings": a.tie_word_embeddings == "true"}
    make_checkpoint(a.out, a.preset, a.seed, a.dtype, int(a.shard_gb * 1024**3), a.overwrite, **over)


if __name__ == "__main__":
    main()

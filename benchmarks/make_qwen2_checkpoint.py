"""A random Qwen2 checkpoint with the same dimensions as a Pangu one: the GRPO benchmark's baseline model.

    python benchmarks/make_qwen2_checkpoint.py --like PANGU_HF_DIR --out DIR [--seed 0] [--dtype bf16]

Why: ``benchmarks/grpo_step.py`` compares a GRPO step of openPangu-Embedded with RLinf's own path for
a model RLinf supports natively (``qwen2.5``: RLinf's converter, its TransformFuncs sync, SGLang's own
``Qwen2ForCausalLM``). Qwen2 is Pangu without the o_proj bias (q/k/v biases, gated SiLU MLP, RMSNorm,
RoPE, GQA), so a Qwen2 model with Pangu's hidden size, layers, heads, KV heads, FFN width, vocabulary
and embedding tying does the same arithmetic less one bias add per layer.

How: transformers' own ``Qwen2Config`` / ``Qwen2ForCausalLM`` random initialisation, with two changes:

* RMSNorm weights become ``1 + 0.1 N(0,1)`` and the q/k/v biases ``0.1 N(0,1)`` (transformers
  initialises them to exactly 1 and 0). A sync or conversion that dropped a norm or a bias would
  then show in the run's SGLang-vs-recompute log-prob gap instead of passing unseen (the same rule
  as the Pangu factory's, ``rlinf_pangu.make_checkpoint.random_tensor``).
* The tokenizer files are the Pangu checkpoint's (``tokenizer.model``, its config, special tokens,
  generation config; eos 45892), so both runs tokenize the same prompts into the same ids and the
  same reward grades them: the data is identical, only the model differs.

The directory appears atomically (written aside, renamed into place).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("make_qwen2_checkpoint")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: Pangu config.json key -> Qwen2Config key (the dimensions both runs must share).
SHARED_DIMS: dict[str, str] = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "vocab_size": "vocab_size",
    "tie_word_embeddings": "tie_word_embeddings",
}
#: Keys copied as they are (numerics and token ids that do not change the cost but keep the runs alike).
COPIED = ("rms_norm_eps", "rope_theta", "max_position_embeddings", "hidden_act", "bos_token_id",
          "eos_token_id", "pad_token_id")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def qwen2_config(pangu: dict[str, Any], dtype: torch.dtype):
    """``Qwen2Config`` with the Pangu config's dimensions (the keys of :data:`SHARED_DIMS`)."""
    from transformers import Qwen2Config

    missing = [k for k in (*SHARED_DIMS, *COPIED) if k not in pangu]
    if missing:
        raise KeyError(f"the Pangu config.json lacks {missing}")
    kwargs = {SHARED_DIMS[k]: pangu[k] for k in SHARED_DIMS} | {k: pangu[k] for k in COPIED}
    cfg = Qwen2Config(**kwargs, use_sliding_window=False, attention_dropout=0.0)
    cfg.torch_dtype = dtype
    return cfg


def dims_of(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in SHARED_DIMS}


@torch.no_grad()
def perturb_norms_and_biases(model: torch.nn.Module, seed: int) -> int:
    """Norm weights ``1 + 0.1 N``, biases ``0.1 N`` (module doc); returns how many tensors changed."""
    g = torch.Generator().manual_seed(seed + 1)
    n = 0
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        elif "norm" in name:
            p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)
        else:
            continue
        n += 1
    return n


def make_qwen2_checkpoint(like: str | Path, out: str | Path, seed: int = 0, dtype: str = "bf16",
                          overwrite: bool = False) -> Path:
    """Write the Qwen2 twin of the Pangu checkpoint at ``like`` to ``out`` (atomically); returns ``out``."""
    from transformers import Qwen2ForCausalLM

    like, out = Path(like), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    pangu = json.loads((like / "config.json").read_text())
    torch_dtype = DTYPES[dtype]
    cfg = qwen2_config(pangu, torch_dtype)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    changed = perturb_norms_and_biases(model, seed)
    model = model.to(torch_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (like / name).is_file():
                shutil.copy2(like / name, tmp / name)
        written = json.loads((tmp / "config.json").read_text())
        if dims_of(written) != dims_of(pangu):
            raise RuntimeError(f"Qwen2 dims {dims_of(written)} differ from Pangu's {dims_of(pangu)}")
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(p.numel() for p in model.parameters())
    log.info("wrote a Qwen2 checkpoint (%.3fB parameters, %s, seed %d, %d norms/biases set) with %s's dims to %s",
             n_params / 1e9, dtype, seed, changed, like, out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--like", required=True, help="the Pangu HF checkpoint whose dimensions and tokenizer to take")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_qwen2_checkpoint(a.like, a.out, a.seed, a.dtype, a.overwrite)


if __name__ == "__main__":
    main()

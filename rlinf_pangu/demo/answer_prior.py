"""A prior on the answer tokens for the *random* tiny demo checkpoint, so GRPO has something to learn.

Why: a random model over openPangu's 153k-token vocabulary samples any given token with
probability ~1e-5, so on the bundled single-digit arithmetic set it essentially never answers
correctly: every reward is 0, every GRPO advantage is 0, and nothing is learned. This adds
``strength`` nats to the logits of the ten digit tokens in every context (a shift of their
output-embedding rows along the mean final hidden state), so a random model answers *some*
digit most of the time and the right one about one time in ten. Which digit answers which
question is still random: that is what the reward teaches, visibly within a few dozen steps.

Only for factory-made demo checkpoints: the demo's YAML asks for it as a finishing step of the
checkpoint factory (``pangu.make_checkpoint.finish: [{call: rlinf_pangu.demo.answer_prior:finish,
strength: 12.0}]``); nothing on the general path imports this module. An untied output layer is
required (the prior must not move the input embeddings).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def digit_token_ids(tokenizer) -> list[int]:
    """The id of each digit as a standalone piece ("▁d" when the vocabulary has it, else "d")."""
    ids = []
    for d in range(10):
        for piece in (f"\u2581{d}", str(d)):
            i = tokenizer.convert_tokens_to_ids(piece)
            if i is not None and i != tokenizer.unk_token_id:
                ids.append(int(i))
                break
        else:
            raise ValueError(f"the tokenizer has no piece for the digit {d}")
    return ids


@torch.no_grad()
def mean_final_hidden(model, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Mean over ``prompts`` of the last position's final (normed) hidden state."""
    states = []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        states.append(model.model(input_ids=ids).last_hidden_state[0, -1].float())
    return torch.stack(states).mean(0)


def apply_answer_prior(ckpt: str | os.PathLike, strength: float, prompts: Sequence[str]) -> list[int]:
    """Shift the digit rows of ``lm_head.weight`` in the HF checkpoint at ``ckpt`` (in place, atomically)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = Path(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    if cfg.get("tie_word_embeddings"):
        raise ValueError(f"{ckpt}: answer_prior needs an untied output layer (tie_word_embeddings is true)")
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    mean = mean_final_hidden(model, tok, prompts)
    ids = digit_token_ids(tok)
    shard = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]["lm_head.weight"]
    tensors = load_file(ckpt / shard)
    w = tensors["lm_head.weight"]
    delta = strength * mean / mean.pow(2).sum()
    w32 = w.float()
    w32[ids] += delta
    tensors["lm_head.weight"] = w32.to(w.dtype)
    fd, tmp = tempfile.mkstemp(dir=ckpt, prefix=f".{shard}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, ckpt / shard)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("answer prior: +%.1f nats on digit tokens %s in %s", strength, ids, ckpt)
    return ids


def finish(ckpt: str | os.PathLike, cfg, strength: float) -> None:
    """The checkpoint factory's finishing step (``pangu.make_checkpoint.finish``): the prior, shaped
    by the run's first training prompts as the model sees them."""
    from rlinf_pangu.config import chat_prompts

    apply_answer_prior(ckpt, float(strength), chat_prompts(cfg, Path(ckpt)))

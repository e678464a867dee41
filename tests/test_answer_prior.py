"""The demo answer prior makes a random model say a digit most of the time, and nothing else changes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlinf_pangu.demo.answer_prior import apply_answer_prior, digit_token_ids

PROMPTS = ["[unused9]系统：[unused10][unused9]用户：2+3=[unused10][unused9]助手：",
           "[unused9]系统：[unused10][unused9]用户：7-4=[unused10][unused9]助手："]


def _digit_mass(ckpt, text):
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        p = model(**tok(text, return_tensors="pt")).logits[0, -1].softmax(-1)
    return float(p[digit_token_ids(tok)].sum())


def _all_tensors(ckpt) -> dict[str, torch.Tensor]:
    """Every tensor of a (sharded) checkpoint, through its index."""
    wm = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for f in sorted(set(wm.values())):
        out.update(load_file(ckpt / f))
    return out


def test_prior_moves_mass_to_digits_only(tiny_fp32, tmp_path):
    import rlinf_pangu

    rlinf_pangu.register_transformers()
    ckpt = shutil.copytree(tiny_fp32, tmp_path / "ckpt")
    files = sorted(ckpt.glob("*.safetensors"))
    assert len(files) > 1, "the fixture is sharded: the byte check below must cover that layout"
    before = _all_tensors(ckpt)
    before_bytes = {f.name: f.read_bytes() for f in files}
    assert _digit_mass(ckpt, PROMPTS[0]) < 1e-3  # random: ~10 / 153k
    ids = apply_answer_prior(ckpt, 12.0, PROMPTS)
    assert len(ids) == 10
    for text in PROMPTS + ["[unused9]系统：[unused10][unused9]用户：9-9=[unused10][unused9]助手："]:  # unseen question, same format
        assert _digit_mass(ckpt, text) > 0.5
    after = _all_tensors(ckpt)
    assert sorted(after) == sorted(before)
    for k, v in before.items():  # every other tensor bit for bit, wherever its shard is
        if k != "lm_head.weight":
            assert v.dtype == after[k].dtype and torch.equal(v.view(torch.uint8), after[k].view(torch.uint8)), k
    changed = (before["lm_head.weight"] != after["lm_head.weight"]).any(-1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(ids)
    # and only lm_head's shard file was rewritten: the others are byte for byte the same files
    wm = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    untouched = [f for f in before_bytes if f != wm["lm_head.weight"]]
    assert untouched and all((ckpt / f).read_bytes() == before_bytes[f] for f in untouched)


def test_prior_refuses_tied_embeddings(tiny_tied_fp32, tmp_path):
    ckpt = shutil.copytree(tiny_tied_fp32, tmp_path / "tied")
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        apply_answer_prior(ckpt, 12.0, PROMPTS)

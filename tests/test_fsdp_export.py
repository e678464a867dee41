"""``rlinf_pangu.fsdp_export``: an FSDP actor's full state dict (RLinf's ``full_weights.pt``, HF
names) becomes an HF directory this project's classes load, with bad input named and nothing
partial left behind. The export of a real run's save (RLinf's own FSDP checkpoint) and serving it
are in tests/test_e2e_fsdp_cpu.py; here the state dicts are the checkpoints' own tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rlinf_pangu
from rlinf_pangu.fsdp_export import FULL_WEIGHTS, ExportError, base_from_run, export_fsdp_to_hf
from rlinf_pangu.hf.checkpoint import load_tensors


def _saved(tmp_path: Path, state: dict) -> Path:
    """A run's ``global_step_N`` laid out as RLinf's FSDP save writes it."""
    step = tmp_path / "run" / "checkpoints" / "global_step_3"
    (step / "actor" / FULL_WEIGHTS).parent.mkdir(parents=True)
    torch.save(state, step / "actor" / FULL_WEIGHTS)
    return step


@pytest.fixture(scope="module", autouse=True)
def _registered():
    rlinf_pangu.register_transformers()


def test_export_loads_as_pangu_with_exactly_the_saved_weights(tiny_fp32, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = {k: v + 0.01 for k, v in load_tensors(tiny_fp32).items()}  # "trained": differs from the base
    out = export_fsdp_to_hf(_saved(tmp_path, state), tmp_path / "hf", base=tiny_fp32)
    assert not list(out.glob("*.py")) and not list(out.glob(".*tmp*"))
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((out / name).read_text()), name
    model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    got = dict(model.named_parameters())
    assert set(got) == set(state)
    assert all(torch.equal(got[k].detach(), state[k]) for k in state)
    assert type(AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)).__name__ == "PanguTokenizer"


def test_dtype_defaults_to_the_bases_and_can_be_chosen(tiny_fp32, tmp_path):
    state = load_tensors(tiny_fp32)
    out = export_fsdp_to_hf(_saved(tmp_path, state), tmp_path / "hf", base=tiny_fp32, dtype="bf16")
    from safetensors import safe_open

    index = json.loads((out / "model.safetensors.index.json").read_text())
    with safe_open(str(out / index["weight_map"]["model.norm.weight"]), framework="pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_tied_model_drops_lm_head_once_it_is_checked_to_be_the_embedding(tiny_tied_fp32, tmp_path):
    from transformers import AutoModelForCausalLM

    state = load_tensors(tiny_tied_fp32)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # what a tied model's state dict holds
    out = export_fsdp_to_hf(_saved(tmp_path, state), tmp_path / "hf", base=tiny_tied_fp32)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_tied_lm_head_that_is_not_the_embedding_is_refused(tiny_tied_fp32, tmp_path):
    state = load_tensors(tiny_tied_fp32)
    state["lm_head.weight"] = state["model.embed_tokens.weight"] + 1
    with pytest.raises(ExportError, match="lm_head.weight differs"):
        export_fsdp_to_hf(_saved(tmp_path, state), tmp_path / "hf", base=tiny_tied_fp32)


@pytest.mark.parametrize("fault", ["missing", "shape", "unexpected", "nan"])
def test_bad_state_is_named_and_nothing_is_written(tiny_fp32, tmp_path, fault):
    state = load_tensors(tiny_fp32)
    name = "model.layers.2.self_attn.o_proj.bias"
    if fault == "missing":
        del state[name]
    elif fault == "shape":
        state[name] = state[name][:-1]
    elif fault == "unexpected":
        state["model.layers.2.mlp.up_proj.bias"] = torch.zeros(4)
        name = "model.layers.2.mlp.up_proj.bias"
    else:
        state[name] = state[name].clone()
        state[name][0] = float("nan")
    with pytest.raises(ExportError) as e:
        export_fsdp_to_hf(_saved(tmp_path, state), tmp_path / "hf", base=tiny_fp32)
    assert name in str(e.value)
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf*"))


def test_an_existing_output_is_kept_unless_overwrite(tiny_fp32, tmp_path):
    from ckpt_convertor.errors import ConversionError

    step = _saved(tmp_path, load_tensors(tiny_fp32))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "mine.txt").write_text("keep")
    with pytest.raises(ConversionError):
        export_fsdp_to_hf(step, tmp_path / "hf", base=tiny_fp32)
    assert (tmp_path / "hf" / "mine.txt").read_text() == "keep"
    export_fsdp_to_hf(step, tmp_path / "hf", base=tiny_fp32, overwrite=True)
    assert not (tmp_path / "hf" / "mine.txt").exists()


def test_no_fsdp_save_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="save_full_model_weights"):
        export_fsdp_to_hf(tmp_path, tmp_path / "hf", base=tmp_path)


def test_the_base_checkpoint_comes_from_the_runs_resolved_config(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "global_step_3"
    step.mkdir(parents=True)
    (tmp_path / "run" / "config.resolved.yaml").write_text("actor:\n  model:\n    model_path: /models/pangu-1b\n")
    assert base_from_run(step) == Path("/models/pangu-1b")

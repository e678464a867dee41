"""Bad inputs: each fails with one ConversionError naming the culprit, and nothing is left at the
output path (nor any temp directory beside it)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ckpt_convertor import ConversionError, ensure_megatron
from ckpt_convertor.convert import hf_to_megatron, megatron_to_hf
from ckpt_convertor.megatron_io import RANK_FILE, RELEASE

from ckpt_testlib import hf_tensors, write_hf

FAST = dict(fsync=False, progress=False)


def _fails(hf_dir: Path, out: Path, match: str, tp: int = 1, pp: int = 1, **kw) -> ConversionError:
    with pytest.raises(ConversionError, match=match) as e:
        hf_to_megatron(hf_dir, out, tp, pp, **FAST, **kw)
    assert not out.exists(), "a failed conversion left something at the output path"
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a failed conversion left its temp directory"
    return e.value


def _with(tmp_path: Path, change) -> Path:
    tensors = hf_tensors()
    change(tensors)
    return write_hf(tmp_path / "hf", tensors=tensors)


def test_missing_tensor_is_named(tmp_path):
    hf = _with(tmp_path, lambda t: t.pop("model.layers.1.self_attn.o_proj.bias"))
    _fails(hf, tmp_path / "mg", r"missing tensor 'model\.layers\.1\.self_attn\.o_proj\.bias'")


def test_startup_conversion_refuses_a_checkpoint_with_a_tensor_missing(tmp_path):
    """RLinf's start-up conversion (use_hf_ckpt) is where a partial checkpoint must stop: training
    from it would start some weights at random values. transformers' from_pretrained only reports
    missing keys (tests/test_hf_contract.py)."""
    from ckpt_convertor.startup import convert_on_startup

    hf = _with(tmp_path, lambda t: t.pop("model.layers.0.mlp.down_proj.weight"))
    save = tmp_path / "mg"
    with pytest.raises(ConversionError, match=r"missing tensor 'model\.layers\.0\.mlp\.down_proj\.weight'"):
        convert_on_startup(str(hf), {"save_path": str(save), "tensor_model_parallel_size": 1})
    assert not save.exists()


def test_project_loader_refuses_a_checkpoint_with_a_tensor_missing(tmp_path):
    from rlinf_pangu.hf.checkpoint import PanguCheckpointError, load_tensors

    hf = _with(tmp_path, lambda t: t.pop("model.layers.1.input_layernorm.weight"))
    with pytest.raises(PanguCheckpointError, match=r"missing tensor 'model\.layers\.1\.input_layernorm\.weight'"):
        load_tensors(hf)


def test_converter_and_project_loader_refuse_with_the_same_words(tmp_path):
    """One refusal, in rlinf_pangu.hf.checkpoint, called by both."""
    from rlinf_pangu.hf.checkpoint import PanguCheckpointError, load_tensors

    hf = _with(tmp_path, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(PanguCheckpointError) as loader:
        load_tensors(hf)
    converter = _fails(hf, tmp_path / "mg", "missing tensor")
    assert str(converter) == str(loader.value)


def test_unexpected_tensor_is_named(tmp_path):
    hf = _with(tmp_path, lambda t: t.update({"model.layers.0.mlp.gate_proj.bias": torch.zeros(128, dtype=torch.bfloat16)}))
    _fails(hf, tmp_path / "mg", r"unexpected tensor 'model\.layers\.0\.mlp\.gate_proj\.bias'")


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    hf = _with(tmp_path, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64, dtype=torch.bfloat16)}))
    _fails(hf, tmp_path / "mg", r"'model\.layers\.0\.self_attn\.k_proj\.weight'.*shape \[64, 64\], expected \[32, 64\]")


def test_wrong_dtype_is_named(tmp_path):
    hf = _with(tmp_path, lambda t: t.update({"model.norm.weight": t["model.norm.weight"].to(torch.float16)}))
    _fails(hf, tmp_path / "mg", r"'model\.norm\.weight'.*dtype torch\.float16.*checkpoint's dtype is torch\.bfloat16")


def test_truncated_shard_file_is_named(tmp_path):
    hf = write_hf(tmp_path / "hf", shard_bytes=64 * 1024)
    shard = sorted(hf.glob("model-*.safetensors"))[1]
    os.truncate(shard, shard.stat().st_size - 100)
    _fails(hf, tmp_path / "mg", rf"{shard.name} is truncated: tensor '.*' ends at byte")


def test_index_naming_a_missing_file_is_named(tmp_path):
    hf = write_hf(tmp_path / "hf", shard_bytes=64 * 1024)
    gone = sorted(hf.glob("model-*.safetensors"))[-1]
    gone.unlink()
    _fails(hf, tmp_path / "mg", rf"names '{gone.name}'.*does not exist")


@pytest.mark.parametrize("config_layers", [1, 3])
def test_config_layer_count_disagreeing_with_weights_is_named(tmp_path, config_layers):
    hf = write_hf(tmp_path / "hf")  # 2 layers of weights
    cfg = json.loads((hf / "config.json").read_text())
    cfg["num_hidden_layers"] = config_layers
    (hf / "config.json").write_text(json.dumps(cfg))
    _fails(hf, tmp_path / "mg", rf"num_hidden_layers={config_layers} but the weights hold layers 0\.\.1 \(2 layers\)")


@pytest.mark.parametrize(
    "overrides, tp, named",
    [
        # heads = kv_heads x q_per_group, so a TP that misses the heads misses the KV heads too
        (dict(num_attention_heads=6, num_key_value_heads=6, hidden_size=48), 4, ["num_attention_heads=6", "num_key_value_heads=6"]),
        (dict(num_attention_heads=8, num_key_value_heads=2, hidden_size=64), 4, ["num_key_value_heads=2"]),
        (dict(vocab_size=513), 2, ["vocab_size=513"]),
    ],
    ids=["heads", "kv_heads", "vocab"],
)
def test_tp_not_dividing_is_named(tmp_path, overrides, tp, named):
    hf = write_hf(tmp_path / "hf", **overrides)
    err = _fails(hf, tmp_path / "mg", rf"{named[0]} is not divisible by tensor parallel size {tp}", tp=tp)
    assert all(f"{n} is not divisible" in str(err) for n in named)
    assert str(err).count("not divisible") == len(named), err  # the dimensions that divide are not named


def test_pp_not_dividing_layers_is_named(tmp_path):
    _fails(write_hf(tmp_path / "hf"), tmp_path / "mg", r"num_hidden_layers=2 is not divisible by pipeline stages 3", pp=3)


def _make_unwritable(d: Path) -> str:
    """Make ``d`` refuse new entries, also for root (chmod does not stop root; the immutable bit does)."""
    if os.geteuid() != 0:
        d.chmod(0o555)
        return "chmod"
    r = subprocess.run(["chattr", "+i", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and cannot set the immutable bit here: {r.stderr.decode().strip()}")
    return "chattr"


def _restore(d: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(d)], check=True)
    else:
        d.chmod(0o755)


def test_output_directory_not_writable_is_named(tmp_path):
    hf = write_hf(tmp_path / "hf")
    parent = tmp_path / "readonly"
    parent.mkdir()
    how = _make_unwritable(parent)
    try:
        with pytest.raises(ConversionError, match=rf"output directory {parent} is not writable"):
            ensure_megatron(hf, parent / "mg", 1, 1, progress=False)
        assert list(parent.iterdir()) == []
        with pytest.raises(ConversionError, match=rf"output directory {parent} is not writable"):
            hf_to_megatron(hf, parent / "mg", 1, 1, **FAST)
        assert list(parent.iterdir()) == []
    finally:
        _restore(parent, how)


def test_existing_foreign_output_directory_is_not_replaced(tmp_path):
    hf = write_hf(tmp_path / "hf")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="exists and was not written by ckpt_convertor"):
        hf_to_megatron(hf, out, 1, 1, **FAST)
    assert (out / "notes.txt").read_text() == "keep me"


def test_pickle_weights_are_never_read(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    shutil.copy(write_hf(tmp_path / "src") / "config.json", hf / "config.json")
    (hf / "pytorch_model.bin").write_bytes(b"not opened")
    _fails(hf, tmp_path / "mg", r"no safetensors weights.*pytorch_model\.bin are pickle files, which are never read")


# ---- Megatron side -------------------------------------------------------------------------


@pytest.fixture
def converted(tmp_path):
    hf = write_hf(tmp_path / "hf")
    return hf_to_megatron(hf, tmp_path / "mg", 2, 2, **FAST)


def test_missing_rank_file_is_named(converted, tmp_path):
    (converted / RELEASE / "mp_rank_01_001" / RANK_FILE).unlink()
    out = tmp_path / "back"
    with pytest.raises(ConversionError, match=r"missing rank file .*mp_rank_01_001/model_optim_rng\.pt \(TP=2, PP=2\)"):
        megatron_to_hf(converted, out, **FAST)
    assert not out.exists()


def test_unexpected_megatron_tensor_is_named(converted, tmp_path):
    for r in range(2):
        f = converted / RELEASE / f"mp_rank_{r:02d}_000" / RANK_FILE
        sd = torch.load(f, weights_only=True)
        sd["model"]["decoder.layers.0.mlp.linear_fc1.bias"] = torch.zeros(128)
        torch.save(sd, f)
    out = tmp_path / "back"
    with pytest.raises(ConversionError, match=r"decoder\.layers\.0\.mlp\.linear_fc1\.bias"):
        megatron_to_hf(converted, out, **FAST)
    assert not out.exists()


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_rank_file_with_code_is_refused_without_running_it(converted, tmp_path):
    """torch.load(weights_only=True): a pickle that would create a file is refused, file not created."""
    marker = tmp_path / "pwned"
    f = converted / RELEASE / "mp_rank_00_000" / RANK_FILE
    sd = torch.load(f, weights_only=True)
    sd["payload"] = _RunsCode(str(marker))
    torch.save(sd, f, pickle_module=pickle)
    assert not marker.exists()
    with pytest.raises(ConversionError, match=r"mp_rank_00_000/model_optim_rng\.pt with weights_only=True"):
        megatron_to_hf(converted, tmp_path / "back", **FAST)
    assert not marker.exists()

"""RLinf start-up (``actor.megatron.use_hf_ckpt``): after ``rlinf_pangu.register()``, the
``convert_hf_to_mg`` that RLinf's runners import runs ckpt_convertor for Pangu checkpoints (cached)
and RLinf's own converter for anything else."""

from __future__ import annotations

import ast
import importlib.util
import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import rlinf_pangu
from ckpt_convertor import ConversionError
from ckpt_convertor.cache import read_sidecar
from ckpt_convertor.megatron_io import find_checkpoint
from ckpt_convertor.startup import is_pangu_checkpoint
from rlinf_pangu import patches
from rlinf_pangu.patches import rlinf as rlinf_patches

from ckpt_testlib import write_hf

_CONVERTER = "rlinf.utils.ckpt_convertor.megatron_convertor.convert_hf_to_mg"
_RUNNERS = ("reasoning_runner", "coding_online_rl_runner", "agent_runner", "agentlightning_runner")


def _actor_cfg(hf: Path, save: Path, tp: int = 2, pp: int = 2, model_tp: int | None = None, **ckpt) -> object:
    """The slice of RLinf's config the start-up conversion sees, shaped like RLinf's YAML."""
    cfg = OmegaConf.create({
        "actor": {
            "spec_name": "pangu",
            "model": {"tensor_model_parallel_size": model_tp or tp, "pipeline_model_parallel_size": pp},
            "megatron": {
                "use_hf_ckpt": True,
                "ckpt_convertor": {
                    "model": "openPangu-Embedded-7B", "hf_model_path": str(hf), "save_path": str(save),
                    "use_gpu_num": 0, "use_gpu_index": None, "process_num": 16,
                    "tensor_model_parallel_size": "${actor.model.tensor_model_parallel_size}",
                    "pipeline_model_parallel_size": "${actor.model.pipeline_model_parallel_size}",
                    **ckpt,
                },
            },
        }
    })
    return cfg.actor


def _rlinf_convert_hf_to_mg():
    rlinf_pangu.register()
    from rlinf.utils.ckpt_convertor.megatron_convertor.convert_hf_to_mg import convert_hf_to_mg

    return convert_hf_to_mg


def test_patch_probe_sees_rlinf_converter_without_pangu():
    # The probe reads RLinf's packaged default_args.yaml: True while RLinf lists no Pangu model.
    assert rlinf_patches._rlinf_converter_lacks_pangu() is True
    assert rlinf_patches.CKPT_CONVERT_DISPATCH in patches.PATCHES


@pytest.mark.parametrize("runner", _RUNNERS)
def test_rlinf_runners_import_the_converter_at_call_time(runner):
    """The patch swaps the module attribute; it reaches the runners only because they import
    ``convert_hf_to_mg`` inside the start-up method (checked on their source, not imported)."""
    spec = importlib.util.find_spec("rlinf")
    src = (Path(spec.submodule_search_locations[0]) / "runners" / f"{runner}.py").read_text()
    tree = ast.parse(src)
    top_level = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == _CONVERTER]
    nested = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == _CONVERTER]
    assert nested and not top_level


def test_rlinf_start_up_conversion_of_pangu_runs_ckpt_convertor_and_caches(tmp_path):
    hf = write_hf(tmp_path / "hf", num_hidden_layers=4)
    actor = _actor_cfg(hf, tmp_path / "converted" / "actor")
    convert_hf_to_mg = _rlinf_convert_hf_to_mg()
    chain, fn = [], convert_hf_to_mg  # the Pangu dispatch, under any other patch's wrapper
    while fn is not None:
        chain.append(fn)
        fn = getattr(fn, "__rlinf_pangu_original__", None)
    assert any(getattr(f, "__rlinf_pangu_dispatch__", False) for f in chain)

    convert_hf_to_mg(actor.megatron.ckpt_convertor.hf_model_path, actor.megatron.ckpt_convertor)
    save = Path(actor.megatron.ckpt_convertor.save_path)
    mg = find_checkpoint(save)  # what megatron.load = save_path reads
    assert (mg.tp, mg.pp) == (2, 2)
    assert read_sidecar(save)["norm_names"] == "local"
    stamp = (save / "rlinf_pangu_ckpt.json").stat().st_mtime_ns

    t0 = time.perf_counter()
    convert_hf_to_mg(actor.megatron.ckpt_convertor.hf_model_path, actor.megatron.ckpt_convertor)
    assert time.perf_counter() - t0 < 2.0
    assert (save / "rlinf_pangu_ckpt.json").stat().st_mtime_ns == stamp  # second start: nothing converted


@pytest.mark.parametrize("spec, names", [("pangu_te", "te"), ("pangu_local", "local"), ("te_gpt", "te"),
                                         ("pangu", "te" if importlib.util.find_spec("transformer_engine") else "local")])
def test_spec_name_chooses_the_norm_names(tmp_path, spec, names):
    hf = write_hf(tmp_path / "hf")
    actor = _actor_cfg(hf, tmp_path / "mg", tp=1, pp=1)
    actor.spec_name = spec
    _rlinf_convert_hf_to_mg()(str(hf), actor.megatron.ckpt_convertor)
    assert read_sidecar(tmp_path / "mg")["norm_names"] == names


def test_parallel_sizes_disagreeing_with_the_actor_are_refused(tmp_path):
    hf = write_hf(tmp_path / "hf")
    actor = _actor_cfg(hf, tmp_path / "mg", tp=1, model_tp=2, tensor_model_parallel_size=1)
    with pytest.raises(ConversionError, match=r"ckpt_convertor\.tensor_model_parallel_size=1 but actor\.model\.tensor_model_parallel_size=2"):
        _rlinf_convert_hf_to_mg()(str(hf), actor.megatron.ckpt_convertor)
    assert not (tmp_path / "mg").exists()


def test_other_models_still_go_to_rlinfs_converter(tmp_path):
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 256,
    }))
    assert not is_pangu_checkpoint(qwen)
    actor = _actor_cfg(qwen, tmp_path / "mg", tp=1, pp=1)
    actor.megatron.ckpt_convertor.model = "NoSuchModel"
    # RLinf's own converter runs: it looks the model name up in its default_args.yaml
    with pytest.raises(AssertionError, match="Model NoSuchModel not found in supported list"):
        _rlinf_convert_hf_to_mg()(str(qwen), actor.megatron.ckpt_convertor)

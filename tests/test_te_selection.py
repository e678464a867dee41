"""Which Megatron modules a run builds (Transformer Engine or megatron-core's local ones) and
whether RLinf's forward packs sequences follow the YAML (``actor.megatron.transformer_impl``,
RLinf's own knob) and what is installed, and the run says which, once.

The rule is a table (``rlinf_pangu.megatron.config.choose_spec``); these tests check the table,
that the shipped YAMLs choose TE on GPU and local in the CPU mode, that a bad value is refused by
name before any worker starts, and -- on real megatron-core, through RLinf's own model provider
in one gloo rank -- that this host (no TE) builds local attention, runs RLinf's unpacked forward
through the patch, and logs one line saying so. The TE side of the same rule (a TE model, packed)
runs in tests/test_te_gpu.py on a GPU with TE installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from harness import run_ranks
from rlinf_pangu import config as pc
from rlinf_pangu.make_checkpoint import hf_config_dict
from rlinf_pangu.megatron import config as mc
from rlinf_pangu.presets import preset

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "math"
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec_name, impl, installed, te",
    [
        ("pangu", "transformer_engine", True, True),  # RLinf's default with TE: TE, packed
        ("pangu", "transformer_engine", False, False),  # no TE: local, unpacked (the old GPU runs)
        ("pangu", None, True, True),  # key absent: RLinf's default
        ("pangu", None, False, False),
        ("pangu", "local", True, False),  # the YAML asks for local even where TE is installed
        ("pangu", "local", False, False),
        ("pangu_local", "transformer_engine", True, False),  # forced local
        ("pangu_te", "local", True, True),  # forced TE (the config check refuses this pair in a YAML)
    ],
)
def test_spec_and_packing_follow_transformer_impl_and_what_is_installed(spec_name, impl, installed, te):
    choice = mc.choose_spec(spec_name, impl, installed)
    assert choice.te is te and choice.packed is te  # packing needs TE's attention, and TE always packs
    words = choice.describe()
    assert ("Transformer Engine, sequences packed" in words) is te
    assert ("local (megatron-core modules), sequences unpacked" in words) is (not te)


def test_forced_te_spec_without_te_is_an_error_naming_what_to_use():
    with pytest.raises(ImportError, match="spec_name 'pangu_te'.*transformer_engine is not installed.*'pangu'"):
        mc.choose_spec("pangu_te", "transformer_engine", False)


def test_an_unknown_transformer_impl_is_refused():
    with pytest.raises(ValueError, match="transformer_impl='inference_optimized'"):
        mc.choose_spec("pangu", "inference_optimized", True)


# --------------------------------------------------------------------------------------
# The shipped YAMLs, resolved the way the driver resolves them (config-only checkpoints)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cfg_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cfgonly") / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(hf_config_dict(preset("tiny"), torch.bfloat16)))
    return d


def _resolved(example: str, ckpt: Path, tmp_path: Path, *overrides: str):
    cfg = pc.compose(EX / example, [f"rollout.model.model_path={ckpt}", f"runner.output_dir={tmp_path}", *overrides])
    return pc.resolve_rlinf(pc.prepare(cfg, base=tmp_path))


@pytest.mark.parametrize(
    "example, impl",
    [("pangu-tiny-grpo-megatron.yaml", "transformer_engine"), ("pangu-tiny-grpo-megatron-cpu.yaml", "local")],
)
def test_gpu_examples_choose_te_and_the_cpu_mode_local(example, impl, tiny_cfg_dir, tmp_path):
    cfg = _resolved(example, tiny_cfg_dir, tmp_path)
    assert cfg.actor.megatron.transformer_impl == impl  # after RLinf's own validation, which defaults it
    choice = mc.choose_spec(cfg.actor.spec_name, cfg.actor.megatron.transformer_impl, HAVE_TE)
    assert choice.te is (impl == "transformer_engine" and HAVE_TE)


def test_every_gpu_example_keeps_rlinf_default(tiny_cfg_dir, tmp_path):
    """The 1B/7B examples compose the same schema: nothing there turns TE off."""
    for example in ("pangu-1b-grpo-megatron.yaml", "pangu-7b-grpo-megatron.yaml"):
        cfg = pc.compose(EX / example, [f"rollout.model.model_path={tiny_cfg_dir}", "data.train_data_paths=[/x.jsonl]"])
        assert cfg.actor.megatron.transformer_impl == "transformer_engine", example


def test_a_bad_transformer_impl_in_the_yaml_names_the_key_before_any_worker(tiny_cfg_dir, tmp_path):
    with pytest.raises(mc.PanguMegatronConfigError, match=r"megatron\.transformer_impl='inference_optimized'"):
        _resolved("pangu-tiny-grpo-megatron.yaml", tiny_cfg_dir, tmp_path, "actor.megatron.transformer_impl=inference_optimized")


def test_forcing_the_te_spec_with_transformer_impl_local_is_refused(tiny_cfg_dir, tmp_path):
    with pytest.raises(mc.PanguMegatronConfigError, match="spec_name='pangu_te' with megatron.transformer_impl='local'"):
        _resolved("pangu-tiny-grpo-megatron-cpu.yaml", tiny_cfg_dir, tmp_path, "actor.spec_name=pangu_te")


# --------------------------------------------------------------------------------------
# On real megatron-core, through RLinf's provider (one gloo rank)
# --------------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def built_spec_rank(rank: int, world_size: int, ckpt: str, transformer_impl: str) -> dict:
    import megatron_ranks as R
    import rlinf_pangu
    from omegaconf import open_dict
    from rlinf.hybrid_engines.megatron.megatron_model_manager import MegatronModelManager

    from rlinf_pangu.megatron.spec import packs_sequences

    rlinf_pangu.register(sglang=False)
    lines = _Lines()
    spec_log = logging.getLogger("rlinf_pangu.megatron.spec")
    spec_log.setLevel(logging.INFO)
    spec_log.addHandler(lines)

    cfg = R.rlinf_actor_cfg(ckpt, 1, 1)
    with open_dict(cfg):
        cfg.megatron.transformer_impl = transformer_impl  # what the YAML says; RLinf hands it to Megatron's args
    R.init_parallel(1, 1, None)
    chunks = R.build_rlinf_model(cfg)
    R.build_rlinf_model(cfg)  # a second model in the same process (e.g. a reference): no second line
    model = chunks[0].eval()
    out = {
        "lines": list(lines.lines),
        "attention": type(model.decoder.layers[0].self_attention.core_attention).__name__,
        "packs": packs_sequences(chunks[0]),
    }
    # RLinf's forward through the patch: unpacked here; RLinf's own (packed) forward on the same
    # model is what the patch is for: megatron-core's attention refuses packed sequences
    ids = torch.randint(3, 1000, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    forward = MegatronModelManager.custom_forward
    with torch.no_grad():
        logits = forward(model, ids, mask, pos, sequence_parallel=False)
        out["patched_forward_finite"] = bool(torch.isfinite(logits[mask]).all())
        out["patched_forward_shape"] = tuple(logits.shape)
        try:
            forward.__rlinf_pangu_original__(model, ids, mask, pos, sequence_parallel=False)
            out["upstream_packed"] = "ran"
        except Exception as e:  # noqa: BLE001 - the type and message are the result
            out["upstream_packed"] = f"{type(e).__name__}: {e}"
    return out


@pytest.fixture(scope="module")
def built(tiny_fp32) -> dict:
    return run_ranks(built_spec_rank, 1, str(tiny_fp32), "transformer_engine", timeout=600)[0]


@pytest.mark.skipif(HAVE_TE, reason="Transformer Engine is installed here (tests/test_te_gpu.py covers it)")
def test_without_te_rlinf_builds_local_attention_and_logs_it_once(built):
    assert built["attention"] == "DotProductAttention" and built["packs"] is False
    spec_lines = [line for line in built["lines"] if line.startswith("Pangu Megatron spec:")]
    assert len(spec_lines) == 1, built["lines"]
    assert "local (megatron-core modules), sequences unpacked" in spec_lines[0]
    assert "transformer_engine is not installed" in spec_lines[0]


@pytest.mark.skipif(HAVE_TE, reason="Transformer Engine is installed here (tests/test_te_gpu.py covers it)")
def test_without_te_rlinf_forward_runs_unpacked_and_upstream_packing_would_fail(built):
    assert built["patched_forward_finite"] and built["patched_forward_shape"][:2] == (2, 6)
    assert built["upstream_packed"].startswith("AssertionError") and "TEDotProductAttention" in built["upstream_packed"], (
        built["upstream_packed"]
    )

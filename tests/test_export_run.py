"""A run's actor checkpoint at TP2 x PP2 (4 gloo ranks, CPU): saved and resumed through RLinf's own
``MegatronModelManager.save_checkpoint/load_checkpoint``, then exported with
``python -m ckpt_convertor megatron-to-hf`` as users run it.

The checkpoint is what a run writes (``checkpoints/global_step_1/actor/iter_0000001/mp_rank_XX_YYY/``
with ``model_optim_rng.pt`` and the distributed optimizer's ``distrib_optim.pt``, the tracker,
``hf_meta/``, the completeness marker); the rank side is tests/run_ckpt_ranks.py. One launch, several
checks:

* the resumed actor holds exactly the state the saved one had (every weight, fp32 main parameter,
  Adam moment and step, element by element), and a second step from it equals the uninterrupted
  actor's second step bit for bit; a freshly built actor differs (negative control);
* the step after a mid-run save trains (RLinf's save offloads everything; the patch restores the
  offload policy);
* the export equals the actor's weights bit for bit (every tensor of every rank, mapped back to
  that rank's shard by the layout), and the trained weights are not the start weights (so the
  equality is not the trivial one);
* transformers' ``AutoModelForCausalLM`` loads the export; its logits equal the actor's within
  1e-5 and its greedy (argmax) tokens are the actor's at every position. 1e-5: fp32 on both
  sides with a different reduction order (TP all-reduce, fused QKV GEMM), as the Megatron parity
  tests; a wrong layout is off by > 1e-2.

Bad inputs (a run checkpoint without its actor, without hf_meta/, with a rank file missing) are
refused naming the path, and leave no output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("megatron.training")
pytest.importorskip("rlinf")

import harness  # noqa: E402
import megatron_ranks as mr  # noqa: E402
import run_ckpt_ranks  # noqa: E402
from compare import check, diff  # noqa: E402

pytestmark = pytest.mark.slow

TP, PP = 2, 2
LOGITS_TOL = 1e-5


def _export(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckpt_convertor", "megatron-to-hf", "--megatron", str(src),
                           "--out", str(out), "--no-progress", *extra], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def life(tmp_path_factory, tiny_fp32):
    root = tmp_path_factory.mktemp("run_life")
    final = root / "runs" / "exp" / "checkpoints" / f"global_step_{run_ckpt_ranks.STEP}"
    results = harness.run_ranks(run_ckpt_ranks.save_and_resume, TP * PP, str(tiny_fp32), str(final), TP, PP,
                                timeout=1500, cpu_redirects=False)
    export = root / "export"
    p = _export(final, export)
    assert p.returncode == 0, p.stderr[-4000:]
    return {"root": root, "final": final, "export": export, "hf": tiny_fp32, "ranks": results}


def test_the_run_checkpoint_is_complete_with_every_rank_and_optimizer_file(life):
    from rlinf_pangu import run_checkpoint as rc

    ckpt = rc.read(life["final"])
    files = ckpt.marker["files"]
    for t in range(TP):
        for p in range(PP):
            for name in ("model_optim_rng.pt", "distrib_optim.pt"):
                assert f"actor/iter_0000001/mp_rank_{t:02d}_{p:03d}/{name}" in files, sorted(files)
    assert "actor/hf_meta/config.json" in files
    assert sorted(d["rank"] for d in ckpt.digests("actor")) == list(range(TP * PP))


def test_the_resumed_actor_holds_exactly_the_saved_state(life):
    for r in life["ranks"]:
        assert r["tensors"] > 20, r["tensors"]
        assert r["load_differences"] == [], f"rank {r['rank']}: {r['load_differences'][:5]}"
        assert r["loaded_digest"] == r["digest"]
        assert r["fresh_differs"], "a freshly built actor already equals the saved one: the check proves nothing"


def test_the_resumed_actor_continues_as_if_never_interrupted(life):
    for r in life["ranks"]:
        assert r["continue_differences"] == [], f"rank {r['rank']}: {r['continue_differences'][:5]}"
    last = [r for r in life["ranks"] if r["pp_rank"] == PP - 1]
    assert all(r["losses"][1] == r["losses"][2] for r in last), [r["losses"] for r in last]


def test_the_step_after_a_mid_run_save_trains(life):
    for r in life["ranks"]:
        # offload_* are off here (as in the CPU mode): after the save everything is back in place
        assert r["after_save_offloaded"] == (False, False, False), r["after_save_offloaded"]
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in life["ranks"] if r["pp_rank"] == PP - 1)


def _export_state(export: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(export.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _expected_shards(state: dict[str, torch.Tensor], hf_dir: Path, r: dict) -> dict[str, torch.Tensor]:
    """The rank's Megatron tensors made from an HF state by the layout (names as the DDP chunk has them)."""
    import json

    from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard

    dims = PanguDims.from_hf_config(json.loads((hf_dir / "config.json").read_text()))
    want = {}
    for i, c in enumerate(r["chunks"]):
        shard = hf_to_megatron_shard(state, dims, r["tp_rank"], TP, c["layers"], first=c["first"], last=c["last"])
        want.update({f"{i}.{k}": v for k, v in shard.items()})
    return want


def test_the_export_equals_the_actors_weights_bit_for_bit(life):
    from rlinf_pangu.run_checkpoint import weights_digest

    exported = _export_state(life["export"])
    start = _export_state(life["hf"])
    changed = 0
    for r in life["ranks"]:
        want = _expected_shards(exported, life["export"], r)
        assert set(want) == set(r["weights"]), sorted(set(want) ^ set(r["weights"]))[:5]
        for name, w in r["weights"].items():
            assert want[name].dtype == w.dtype and torch.equal(want[name], w), f"rank {r['rank']} {name}"
        # the same, against the digest the live actor recorded when it saved (names in its order)
        chunks = [[(n.split(".", 1)[1], want[n]) for n in r["weights"] if n.startswith(f"{i}.")] for i in range(len(r["chunks"]))]
        assert weights_digest(chunks) == r["digest"]["weights"], f"rank {r['rank']}"
        before = _expected_shards(start, life["hf"], r)
        changed += sum(not torch.equal(before[n].to(w.dtype), w) for n, w in r["weights"].items())
    assert changed > len(life["ranks"]) * 5, "training did not move the weights: the equality would be trivial"


def test_the_export_is_an_official_layout_hf_directory_with_the_projects_files(life):
    export, hf = life["export"], life["hf"]
    names = {p.name for p in export.iterdir()}
    assert {"config.json", "model.safetensors.index.json"} <= names
    index = "model.safetensors.index.json"
    for f in hf.iterdir():  # tokenizer and generation files byte for byte
        if f.suffix != ".safetensors" and f.name not in ("config.json", index):
            assert (export / f.name).read_bytes() == f.read_bytes(), f.name
    # the same shard layout, the same config
    assert json.loads((export / index).read_text())["weight_map"] == json.loads((hf / index).read_text())["weight_map"]
    assert json.loads((export / "config.json").read_text()) == json.loads((hf / "config.json").read_text())


def test_transformers_loads_the_export_and_reproduces_the_actors_logits_and_greedy_tokens(life):
    import rlinf_pangu

    rlinf_pangu.register_transformers()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(life["export"]), dtype=torch.float32, attn_implementation="eager").eval()
    batch = mr.make_batch(model.config.vocab_size)
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"]).logits
    last = [r for r in life["ranks"] if r["logits"] is not None]
    assert len(last) == TP  # the last pipeline stage, each TP rank with the gathered logits
    for r in last:
        check(diff(f"rank {r['rank']} logits vs transformers on the export", r["logits"].reshape(ref.shape), ref), LOGITS_TOL)
        assert torch.equal(r["logits"].reshape(ref.shape).argmax(-1), ref.argmax(-1))


# --------------------------------------------------------------------------------------
# Bad input: named, nothing written
# --------------------------------------------------------------------------------------


def _copy(life, tmp_path) -> Path:
    dst = tmp_path / "checkpoints" / "global_step_1"
    shutil.copytree(life["final"], dst)
    return dst


def test_a_missing_rank_file_is_named_and_nothing_is_written(life, tmp_path):
    ckpt = _copy(life, tmp_path)
    missing = ckpt / "actor/iter_0000001/mp_rank_01_001/model_optim_rng.pt"
    missing.unlink()
    p = _export(ckpt, tmp_path / "out")
    assert p.returncode == 2 and f"missing rank file {missing}" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_hf_meta_asks_for_the_model_directory(life, tmp_path):
    ckpt = _copy(life, tmp_path)
    shutil.rmtree(ckpt / "actor" / "hf_meta")
    p = _export(ckpt, tmp_path / "out")
    assert p.returncode == 2 and f"{ckpt / 'actor' / 'hf_meta' / 'config.json'} does not exist" in p.stderr
    assert "--meta-from" in p.stderr and not (tmp_path / "out").exists()
    p = _export(ckpt, tmp_path / "out", "--meta-from", str(life["hf"]))
    assert p.returncode == 0, p.stderr[-2000:]
    for f in (tmp_path / "out").glob("*.safetensors"):
        assert f.read_bytes() == (life["export"] / f.name).read_bytes()


def test_a_run_step_without_its_actor_is_named(life, tmp_path):
    ckpt = _copy(life, tmp_path)
    shutil.rmtree(ckpt / "actor")
    p = _export(ckpt, tmp_path / "out")
    assert p.returncode == 2 and f"{ckpt / 'latest_checkpointed_iteration.txt'} does not exist" in p.stderr, p.stderr[-2000:]

"""A run's checkpoints without a run (``rlinf_pangu.run_checkpoint``): what makes one complete, what
a resume accepts and refuses before Ray starts, the state digest, the data position across epochs,
and the RLinf patches that put them in the loop. Fast: real files, RLinf's own data-loader code,
no workers. The whole life of a real run (save, SIGKILL, resume, export) is tests/test_resume_cpu.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from harness import fresh_env
from rlinf_pangu import run_checkpoint as rc
from rlinf_pangu.config import ConfigError, absolutize_paths, check_resume

TINY_CONFIG = {
    "architectures": ["PanguEmbeddedForCausalLM"], "model_type": "PanguEmbedded", "hidden_size": 32,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2,
    "vocab_size": 100, "tie_word_embeddings": False,
}


def _hf_dir(root: Path, **overrides) -> Path:
    d = root / ("hf" + "".join(f"-{k}{v}" for k, v in overrides.items()))
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({**TINY_CONFIG, **overrides}))
    return d


def _cfg(tmp: Path, hf: Path, resume=None, tp=1, pp=1, max_steps=10):
    return OmegaConf.create({
        "runner": {"output_dir": str(tmp / "runs"), "experiment_name": "exp", "resume_dir": resume, "max_steps": max_steps},
        "rollout": {"model": {"model_path": str(hf)}},
        "actor": {"model": {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                            "virtual_pipeline_model_parallel_size": None}},
    })


def _write_checkpoint(cfg, step: int, *, commit: bool = True) -> Path:
    """The files RLinf's runner and Megatron write for one step (small real torch files), saved
    the way the patched runner does: staged, then committed with the marker."""
    final = rc.step_dir(rc.checkpoints_dir(cfg.runner.output_dir, cfg.runner.experiment_name), step)
    tmp = rc.begin(final)
    rank = tmp / "actor" / f"iter_{step:07d}" / "mp_rank_00"
    rank.mkdir(parents=True)
    torch.save({"model": {"w": torch.arange(6.0) + step}, "iteration": step}, rank / "model_optim_rng.pt")
    torch.save({"param": torch.ones(3)}, rank / "distrib_optim.pt")
    (tmp / "actor" / rc.TRACKER).write_text(str(step))
    (tmp / "data").mkdir()
    torch.save({"_num_yielded": step}, tmp / "data" / "data.pt")
    if not commit:
        return tmp
    marker = rc.marker_doc(step, parallel=rc.parallel_of(cfg), model=rc.model_of(cfg.rollout.model.model_path),
                           digests={"actor": [{"rank": 0, "weights": "w", "optimizer": "o", "scheduler": "s"}]})
    return rc.commit(tmp, final, marker)


@pytest.fixture
def run(tmp_path):
    hf = _hf_dir(tmp_path)
    cfg = _cfg(tmp_path, hf)
    return SimpleNamespace(tmp=tmp_path, hf=hf, cfg=cfg,
                           root=rc.checkpoints_dir(cfg.runner.output_dir, cfg.runner.experiment_name))


# --------------------------------------------------------------------------------------
# Writing: staged, marker last, renamed into place
# --------------------------------------------------------------------------------------


def test_a_committed_checkpoint_is_complete_and_lists_every_file_with_its_size(run):
    path = _write_checkpoint(run.cfg, 2)
    assert path.name == "global_step_2" and not rc.partial_dir(path).exists()
    ckpt = rc.read(path)
    assert ckpt.step == 2
    files = ckpt.marker["files"]
    assert set(files) == {"actor/latest_checkpointed_iteration.txt", "actor/iter_0000002/mp_rank_00/model_optim_rng.pt",
                          "actor/iter_0000002/mp_rank_00/distrib_optim.pt", "data/data.pt"}
    assert all(files[f] == (path / f).stat().st_size for f in files)


def test_a_save_in_progress_is_invisible_to_a_resume(run):
    _write_checkpoint(run.cfg, 1)
    staging = _write_checkpoint(run.cfg, 2, commit=False)  # the driver was killed here
    assert staging.name == ".partial-global_step_2" and rc.step_of(staging) is None
    assert rc.latest(run.root).step == 1


def test_a_new_save_of_a_step_replaces_the_old_one_whole(run):
    first = _write_checkpoint(run.cfg, 3)
    old = (first / "actor/iter_0000003/mp_rank_00/model_optim_rng.pt").read_bytes()
    rank = rc.begin(first) / "actor"
    assert rc.partial_dir(first).is_dir() and first.is_dir()  # the old one stays until the commit
    second = _write_checkpoint(run.cfg, 3)
    assert rc.read(second).step == 3 and not rc.partial_dir(first).exists() and not rank.exists()
    assert (second / "actor/iter_0000003/mp_rank_00/model_optim_rng.pt").read_bytes() == old
    assert [p.name for p in run.root.iterdir()] == ["global_step_3"]


# --------------------------------------------------------------------------------------
# Finding and checking, before anything starts
# --------------------------------------------------------------------------------------


def test_auto_takes_the_latest_complete_checkpoint(run):
    for step in (1, 2, 3):
        _write_checkpoint(run.cfg, step)
    bad = run.root / "global_step_3" / "data" / "data.pt"
    bad.write_bytes(bad.read_bytes()[:-1])  # step 3 damaged after it was saved
    _write_checkpoint(run.cfg, 4, commit=False)  # step 4's save never finished
    (run.root / "global_step_5").mkdir()  # a bare directory: never complete
    cfg = _cfg(run.tmp, run.hf, resume="auto")
    assert check_resume(cfg) == 2
    assert cfg.runner.resume_dir == str(run.root / "global_step_2")


def test_auto_without_checkpoints_is_a_fresh_start(run):
    cfg = _cfg(run.tmp, run.hf, resume="auto")
    assert check_resume(cfg) is None and cfg.runner.resume_dir is None


def test_auto_stays_a_word_when_paths_are_made_absolute(run):
    cfg = _cfg(run.tmp, run.hf, resume="auto")
    absolutize_paths(cfg, run.tmp)
    assert cfg.runner.resume_dir == "auto"


def _refusal(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        check_resume(cfg)
    assert e.value.key == "runner.resume_dir"
    return str(e.value)


def test_a_missing_directory_is_refused_naming_it(run):
    missing = run.root / "global_step_9"
    assert _refusal(_cfg(run.tmp, run.hf, resume=str(missing))) == f"runner.resume_dir: {missing}: no such directory"


@pytest.mark.parametrize("kind", ["hf model", "bare megatron", "run dir", "unmarked step"])
def test_a_foreign_directory_is_refused_naming_it_and_what_it_looks_like(run, kind):
    ckpt = _write_checkpoint(run.cfg, 1)
    target = {
        "hf model": run.hf,
        "bare megatron": ckpt / "actor",
        "run dir": run.root.parent,
        "unmarked step": run.root / "global_step_7",
    }[kind]
    target.mkdir(exist_ok=True)
    msg = _refusal(_cfg(run.tmp, run.hf, resume=str(target)))
    assert msg.startswith(f"runner.resume_dir: {target}: not a complete rlinf-pangu run checkpoint"), msg
    hint = {"hf model": "HF model directory", "bare megatron": "bare Megatron checkpoint", "run dir": "run directory",
            "unmarked step": "never finished"}[kind]
    assert hint in msg


@pytest.mark.parametrize("damage", ["truncated rank file", "garbled rank file", "deleted optimizer file",
                                    "garbled marker", "tracker of another step", "renamed directory"])
def test_a_corrupt_checkpoint_is_refused_naming_the_file_at_fault(run, damage):
    ckpt = _write_checkpoint(run.cfg, 2)
    rank_file = ckpt / "actor/iter_0000002/mp_rank_00/model_optim_rng.pt"
    if damage == "truncated rank file":
        rank_file.write_bytes(rank_file.read_bytes()[:100])
        culprit, why = rank_file, "truncated"
    elif damage == "garbled rank file":  # same size, zip directory destroyed
        data = bytearray(rank_file.read_bytes())
        data[-22:] = b"\0" * 22
        rank_file.write_bytes(bytes(data))
        culprit, why = rank_file, "corrupt torch file"
    elif damage == "deleted optimizer file":
        culprit, why = rank_file.parent / "distrib_optim.pt", "missing"
        culprit.unlink()
    elif damage == "garbled marker":
        culprit, why = ckpt / rc.MARKER, "corrupt completeness marker"
        culprit.write_text("{not json")
    elif damage == "tracker of another step":
        culprit, why = ckpt / "actor" / rc.TRACKER, "names iteration"
        culprit.write_text("1")
        marker = json.loads((ckpt / rc.MARKER).read_text())  # sizes still agree: only the content is wrong
        assert marker["files"]["actor/latest_checkpointed_iteration.txt"] == 1
    else:
        renamed = ckpt.with_name("global_step_5")
        ckpt.rename(renamed)
        culprit, why = renamed, "the directory name says step 5, its marker says 2"
    msg = _refusal(_cfg(run.tmp, run.hf, resume=str(culprit if damage == "renamed directory" else ckpt)))
    assert f"{culprit}:" in msg and why in msg, msg


def test_a_checkpoint_of_another_layout_or_model_is_refused(run):
    ckpt = _write_checkpoint(run.cfg, 2)
    msg = _refusal(_cfg(run.tmp, run.hf, resume=str(ckpt), tp=2))
    assert f"{ckpt}: saved with actor parallelism {{'tp': 1, 'pp': 1, 'vpp': None}}, this run uses {{'tp': 2" in msg
    other = _hf_dir(run.tmp, hidden_size=64)
    msg = _refusal(_cfg(run.tmp, other, resume=str(ckpt)))
    assert f"{ckpt}: a checkpoint of another model: hidden_size=32" in msg


def test_resuming_at_or_past_max_steps_is_refused_instead_of_running_on(run):
    ckpt = _write_checkpoint(run.cfg, 4)
    with pytest.raises(ConfigError) as e:
        check_resume(_cfg(run.tmp, run.hf, resume=str(ckpt), max_steps=4))
    assert e.value.key == "runner.max_steps" and "at step 4" in str(e.value)
    assert check_resume(_cfg(run.tmp, run.hf, resume=str(ckpt), max_steps=5)) == 4


# --------------------------------------------------------------------------------------
# The state digest
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_the_checksum_sees_any_changed_or_moved_element(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g)
    t = (x > 0) if dtype == torch.bool else (x * 100).to(dtype)
    base = rc.tensor_checksum(t)
    assert rc.tensor_checksum(t.clone()) == base
    changed = t.clone()
    changed[517] = ~t[517] if dtype == torch.bool else t[517] + 1
    assert rc.tensor_checksum(changed) != base
    i, j = next((i, j) for i in range(1000) for j in range(i + 1, 1000) if t[i] != t[j])
    swapped = t.clone()
    swapped[i], swapped[j] = t[j], t[i]
    assert rc.tensor_checksum(swapped) != base
    assert rc.tensor_checksum(t.view(10, 100)) != base  # the shape is part of it


def test_the_checksum_counts_in_exact_integers_beyond_one_chunk(monkeypatch):
    monkeypatch.setattr(rc, "_CHUNK", 64)
    t = torch.full((1000,), -1.0)  # int16 words 0x0000 / 0xBF80: negative sums across chunks
    words = t.view(torch.int16).to(torch.int64)
    weights = torch.arange(words.numel()) % rc._WEIGHT_CYCLE + 1
    assert rc.tensor_checksum(t) == f"float32[1000]:{int(words.sum())}:{int((words * weights).sum())}"


def test_a_rank_that_loads_other_state_than_it_saved_fails_the_resume(run):
    ckpt = _write_checkpoint(run.cfg, 2)
    saved = {"rank": 0, "weights": "w", "optimizer": "o", "scheduler": "s"}
    assert rc.verify_loaded(ckpt / "actor", saved) is True
    with pytest.raises(rc.CheckpointError, match=r"rank 0 loaded optimizer that differ"):
        rc.verify_loaded(ckpt / "actor", {**saved, "optimizer": "other"})


# --------------------------------------------------------------------------------------
# The data position (RLinf's own data loader)
# --------------------------------------------------------------------------------------


def _rlinf_loader(sampler_cls, n: int = 22):
    import rlinf.runners.reasoning_runner as rr

    cfg = OmegaConf.create({"data": {"shuffle": True, "seed": 1234, "num_workers": 0, "rollout_batch_size": 4,
                                     "val_rollout_batch_size": None}, "algorithm": {}})
    holder = SimpleNamespace(cfg=cfg)
    original = rr.RandomSampler
    rr.RandomSampler = sampler_cls
    try:
        rr.ReasoningRunner._build_dataloader(holder, list(range(n)), None, collate_fn=lambda b: b)
    finally:
        rr.RandomSampler = original
    return holder.train_dataloader


def _epochs(loader, n: int = 3) -> list:
    return [batch for _ in range(n) for batch in loader]


def _resumed_stream(sampler_cls, taken: int, epochs: int = 3) -> list:
    """Batches seen by a run that stopped after ``taken`` steps and resumed from the saved state
    (through torch.save, as RLinf's data.pt), looping epochs as RLinf's runner does."""
    import io

    dl = _rlinf_loader(sampler_cls)
    seen = []
    for _ in range(epochs):
        for batch in dl:
            seen.append(batch)
            if len(seen) == taken:
                break
        if len(seen) == taken:
            break
    buf = io.BytesIO()
    torch.save(dl.state_dict(), buf)
    buf.seek(0)
    resumed = _rlinf_loader(sampler_cls)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    for _ in range(taken // len(dl), epochs):  # RLinf: range(self.epoch, max_epochs)
        seen.extend(resumed)
    return seen


def test_the_resumable_sampler_draws_torchs_order():
    from torch.utils.data import RandomSampler

    assert _epochs(_rlinf_loader(rc.ResumableRandomSampler)) == _epochs(_rlinf_loader(RandomSampler))


@pytest.mark.parametrize("taken", [3, 5, 7, 11])  # within epoch 1, at its end, within epochs 2 and 3
def test_a_resumed_run_sees_the_batches_an_uninterrupted_one_would(taken):
    from torch.utils.data import RandomSampler

    uninterrupted = _epochs(_rlinf_loader(RandomSampler))
    resumed = _resumed_stream(rc.ResumableRandomSampler, taken)
    assert resumed == uninterrupted[: len(resumed)] and len(resumed) > taken + 2


def test_negative_control_torchs_sampler_replays_the_first_epoch_after_a_resume():
    from torch.utils.data import RandomSampler

    uninterrupted = _epochs(_rlinf_loader(RandomSampler))
    resumed = _resumed_stream(RandomSampler, 7)
    assert resumed != uninterrupted[: len(resumed)]


# --------------------------------------------------------------------------------------
# The patches that put this into RLinf's loop
# --------------------------------------------------------------------------------------

CHECKPOINT_PATCHES = ["rlinf.ReasoningRunner:atomic-save", "rlinf.MegatronModelManager:checkpoint-digest",
                      "rlinf.ReasoningRunner:resumable-sampler", "rlinf.MegatronModelManager:checkpoint-keeps-offload-policy",
                      "megatron.training.checkpointing:weights-only-load",
                      "megatron.core.optimizer.DistributedOptimizer:dp-zero-load-no-grad",
                      "megatron.core.optimizer.DistributedOptimizer:dp-zero-load-torch-adam-step",
                      "megatron.core.optimizer.DistributedOptimizer:load-state-dict-shared-step"]


def test_upstream_still_needs_the_checkpoint_patches():
    code = ("import json; from rlinf_pangu import patches as p\n"
            f"print(json.dumps({{n: p.PATCHES[n].applies() for n in {CHECKPOINT_PATCHES!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=fresh_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {n: True for n in CHECKPOINT_PATCHES}


def test_register_puts_the_checkpoint_patches_into_rlinfs_classes():
    code = (
        "import rlinf_pangu; rlinf_pangu.register(sglang=False)\n"
        "import rlinf.runners.reasoning_runner as rr\n"
        "from rlinf.hybrid_engines.megatron.megatron_model_manager import MegatronModelManager as M\n"
        "from rlinf_pangu.run_checkpoint import ResumableRandomSampler\n"
        "print(all(hasattr(f, '__rlinf_pangu_original__') for f in (rr.ReasoningRunner._save_checkpoint, "
        "M.save_checkpoint, M.load_checkpoint, M.ensure_onloaded_and_then_offload)), rr.RandomSampler is ResumableRandomSampler)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=fresh_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True True"


def test_the_step_report_continues_a_resumed_runs_metrics(tmp_path):
    from rlinf_pangu.report import StepReport, load_jsonl

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "rollout/reward_scores": s / 10}) + "\n"
                                                    for s in (1, 2, 3)))
    report = StepReport(tmp_path, 1, printer=lambda line: None)
    assert report.resume(2) == 2  # step 3 was not saved before the crash: it is trained again
    report.observe({"rollout/reward_scores": 0.9}, 2)
    report.observe({"actor/training/actor/approx_kl": 0.0}, 2)
    assert {s: r["rollout/reward_scores"] for s, r in load_jsonl(tmp_path / "metrics.jsonl").items()} == {1: 0.1, 2: 0.2, 3: 0.9}


# --------------------------------------------------------------------------------------
# The entry point refuses a bad resume_dir before Ray starts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "foreign"])
def test_the_entry_point_refuses_a_bad_resume_dir_before_ray_starts(tiny_fp32, tmp_path, kind):
    root = Path(__file__).resolve().parents[1]
    target = {"missing": tmp_path / "runs" / "x" / "checkpoints" / "global_step_3", "foreign": tiny_fp32}[kind]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rlinf.train", "--config", str(root / "examples/math/pangu-tiny-grpo-megatron-cpu.yaml"),
           f"runner.output_dir={out}", "runner.experiment_name=bad", f"rollout.model.model_path={tiny_fp32}",
           f"runner.resume_dir={target}"]
    env = {k: v for k, v in fresh_env().items() if not k.startswith(("RAY_", "RLINF_"))}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root, env=env)
    said = p.stdout + p.stderr
    assert p.returncode == 2, said[-3000:]
    why = {"missing": "no such directory", "foreign": "looks like an HF model directory"}[kind]
    lines = [ln for ln in said.splitlines() if "config error" in ln]
    assert len(lines) == 1 and f"runner.resume_dir: {target}: " in lines[0] and why in lines[0], said[-3000:]
    assert not (out / "bad" / "ray").exists()  # the driver links Ray's temp dir there when it starts it

"""Shared pieces of the weight-sync tests (tests/test_sync_*.py, tests/test_sglang_*.py).

Everything that runs inside a spawned rank is a module-level function here (picklable). The
Megatron side is real megatron-core (the Pangu spec of ``rlinf_pangu.megatron``) driven through
RLinf's own ``ReshardConfig`` / ``MegatronCoreWeightReshard``; the SGLang side is SGLang's own
model class and parallel state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from compare import Diff, check_against_floor, logprob_gap

#: Sync buckets hold this many decoder layers' bytes (RLinf counts only ``decoder.layers``
#: bytes): 1.5 puts the first bucket boundary inside the second layer of each stage.
BUCKET_LAYERS = 1.5


# --------------------------------------------------------------------------------------
# The post-sync judge (GPU tests and benchmarks): SGLang's log-probs against the actor's recompute
# --------------------------------------------------------------------------------------

#: SGLang serves bf16 (its CUDA RMSNorm has no fp32 kernel), so its log-probs never equal the
#: actor's: the *floor* is that gap with the right weights, measured in the same run on the same
#: (post-step) weights, loaded into SGLang by a path that shares nothing with the sync (the HF
#: tensors from tests/independent_layout.py, pushed by name). After the sync SGLang holds the same
#: bf16 values as after that load, so after and floor should be equal (the CPU dry runs measure
#: exactly 0 between them; ``sync_vs_floor`` records it on the GPU). The margins are headroom for
#: kernel nondeterminism, sized from the spread measured between the old pre-step floor and a
#: correct post-step sync, i.e. on *different* weights (docs/runs):
#:   tiny, TP2/TP1, 23 tokens (gpu-h100x2-2026-11-28, repeated on H200 in gpu-2026-11-28-packed):
#:     mean exp|d| floor 1.0107/1.0107, after 1.0099/1.0090 -> spread <= 0.0017;
#:     worst token floor 0.035/0.027, after 0.028/0.022 -> spread <= 0.008;
#:   1B-shaped 8 layers and 7B-shaped 8 layers, fp32 LM head (gpu-h100-2026-11-24, -27): mean exp
#:     floor 1.0162/1.0120 vs after 1.0091/1.0060, worst 0.078/0.063 vs 0.039/0.026: the pre-step
#:     floor sat *above* the sync (not the same comparison), which is why it is measured after the step.
#: One token 0.5 nats off among 24 adds 0.027 to mean exp|d| and ~0.5 to the worst: both fail.
#: Revisit from the first run's same-weights figures (colocated_sync.json, sync_multigpu.json).
POST_SYNC_MEAN_EXP_MARGIN = 2e-3
POST_SYNC_WORST_MARGIN = 0.02
#: The floor itself must look like bf16 noise, or a mistake shared by the floor's load and the
#: sync (SGLang's loader) would pass: measured floors mean exp|d| 1.0107-1.0163, worst 0.027-0.078
#: (tiny and 1B, fp32 LM head), and the GRPO runs' rollout-vs-recompute gap max <= 0.18 per step
#: (gpu-h100-2026-11-27); a broken load gives 3-5 in mean exp|d|.
FLOOR_CEILING = (1.05, 0.25)
#: The same with bf16 logits (no fp32 LM head: logits quantised to ~2**-8 of their size), the 7B
#: sync benchmark's check: measured mean exp|d| 1.094-1.135, worst token 0.31-0.47 (4 runs,
#: docs/runs/gpu-h100x2-2026-11-28, gpu-2026-11-28-packed).
FLOOR_CEILING_BF16_LOGITS = (1.2, 0.8)


def judge_post_sync(after: Diff, floor: Diff, ceiling: tuple[float, float] | None = FLOOR_CEILING) -> list[str]:
    """Problems (empty: passed) of SGLang's log-probs after the sync against the actor's, judged
    on the mean and on the worst token against the floor on the same weights."""
    return check_against_floor(after, floor, POST_SYNC_MEAN_EXP_MARGIN, POST_SYNC_WORST_MARGIN, ceiling)


def judge_same_weights(sync_vs_floor: Diff) -> list[str]:
    """SGLang after the sync against SGLang after the independent load of the same weights (same
    kernels, same bf16 values): any token apart by more than the worst-token margin is a sync error."""
    if not sync_vs_floor.finite:
        return [f"non-finite: {sync_vs_floor}"]
    if not sync_vs_floor.max_abs <= POST_SYNC_WORST_MARGIN:
        return [f"SGLang after the sync differs from SGLang on the same weights loaded independently: {sync_vs_floor}"]
    return []


def judge_control(control: Diff, floor: Diff, what: str) -> list[str]:
    """A negative control (stale weights, swapped shards) must land far outside what the judge
    accepts, or the check is blind: 10x the accepted mean excess and 10x the worst-token margin."""
    if not control.finite or not floor.finite:
        return [f"{what}: non-finite ({control} / {floor})"]
    problems = []
    if not control.mean_exp - 1 > 10 * (floor.mean_exp - 1 + POST_SYNC_MEAN_EXP_MARGIN):
        problems.append(f"{what} is too close to the floor in mean exp|d|: {control} vs {floor}")
    if not control.max_abs > floor.max_abs + 10 * POST_SYNC_WORST_MARGIN:
        problems.append(f"{what} is too close to the floor in its worst token: {control} vs {floor}")
    return problems


def record_gpu_result(name: str, result: dict) -> Path | None:
    """Write a GPU test's figures as ``$RLINF_PANGU_GPU_OUT/<name>.json`` (with the device and the
    imported versions) when that variable is set, so the run can be kept under docs/runs/."""
    out = os.environ.get("RLINF_PANGU_GPU_OUT")
    if not out:
        return None
    return _bench_common().write_result(out, name, result)


def _bench_common():
    """benchmarks/_sync_common.py (the GPU engine settings and the reporting the benchmarks use)."""
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import _sync_common

    return _sync_common



# --------------------------------------------------------------------------------------
# HF side
# --------------------------------------------------------------------------------------


def load_hf_state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF checkpoint dir (sharded safetensors), minus RoPE buffers."""
    from rlinf_pangu.hf.checkpoint import load_tensors

    return load_tensors(ckpt)


def hf_config(ckpt: str | Path):
    import rlinf_pangu

    rlinf_pangu.register_transformers()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(ckpt))


def rollout_reference(hf: dict[str, torch.Tensor], cfg, rollout_tp: int, rollout_rank: int) -> dict[str, torch.Tensor]:
    """What one SGLang rank must receive: each HF tensor split like SGLang splits it.

    Independent of the convertor: a tensor is cut along the TP dim the layout gives its
    Megatron parameter (q/k/v and gate/up along dim 0, o_proj/down along dim 1), kept whole
    when replicated (norms, o_proj bias), and the vocabulary tables are cut to SGLang's
    64-padded row ranges.
    """
    from resharding.vocab import sglang_vocab_rows
    from resharding.reshard import is_vocab_parallel
    from rlinf_pangu.layout import PanguDims, stage_mappings

    dims = PanguDims.from_hf_config(cfg)
    out = {}
    for mapping, layer in stage_mappings(dims):
        for name in mapping.hf_names(layer):
            t = hf[name]
            if mapping.tp_dim is None or rollout_tp == 1:
                out[name] = t
            elif is_vocab_parallel(mapping):
                lo, hi = sglang_vocab_rows(dims.vocab_size, rollout_tp, rollout_rank)
                out[name] = t[lo:hi]
            else:
                out[name] = t.chunk(rollout_tp, mapping.tp_dim)[rollout_rank]
    return out


def unpacked(bucket: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A sync bucket by HF name: a packed bucket (rlinf_pangu.packed_bucket) as views of its
    buffer, plain names as they are."""
    from rlinf_pangu.packed_bucket import expand

    return dict(expand(bucket.items()))


def is_one_packed_buffer(bucket: dict[str, torch.Tensor]) -> bool:
    from rlinf_pangu.packed_bucket import is_packed

    return len(bucket) == 1 and is_packed(next(iter(bucket)))


def compare_exact(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> list[str]:
    """Names that differ in presence, shape, dtype or any bit (``got`` may be packed)."""
    got = unpacked(got)
    bad = [f"missing {k}" for k in want if k not in got] + [f"extra {k}" for k in got if k not in want]
    for k in want.keys() & got.keys():
        a, b = got[k], want[k]
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            bad.append(f"differs {k}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
    return sorted(bad)


# --------------------------------------------------------------------------------------
# Megatron side (inside gloo ranks)
# --------------------------------------------------------------------------------------


def gloo_reshard_subgroups() -> None:
    """Test redirect: RLinf's MegatronCoreWeightReshard creates its TP subgroups with
    ``backend="nccl"``; CPU ranks need gloo."""
    from megatron.core import parallel_state as ps

    if getattr(ps.create_group, "_gloo_redirect", False):
        return
    original = ps.create_group

    def create_group(ranks=None, timeout=None, backend=None, *args, **kwargs):
        return original(ranks, timeout, "gloo", *args, **kwargs)

    create_group._gloo_redirect = True
    ps.create_group = create_group


def build_megatron(ckpt: str, tp: int, pp: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A Pangu GPTModel stage (local spec, ``dtype``: fp32, or bf16 as the GPU examples' actor)
    holding this rank's shard of the HF checkpoint, on ``device`` (a GPU rank's own GPU: "cuda")."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.models.gpt import GPTModel

    from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard
    from rlinf_pangu.megatron.config import gpt_model_kwargs, pangu_transformer_config
    from rlinf_pangu.megatron.spec import get_pangu_spec

    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    cfg = hf_config(ckpt)
    tc = pangu_transformer_config(cfg, tp=tp, pp=pp, dtype=dtype, use_cpu_initialization=True)
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    model = GPTModel(
        config=tc,
        transformer_layer_spec=get_pangu_spec("pangu_local", tc, False),
        pre_process=first,
        post_process=last,
        **gpt_model_kwargs(cfg),
    )
    dims = PanguDims.from_hf_config(cfg)
    per = dims.num_hidden_layers // pp
    stage = ps.get_pipeline_model_parallel_rank()
    shard = hf_to_megatron_shard(
        load_hf_state(ckpt), dims, ps.get_tensor_model_parallel_rank(), tp,
        layers=range(stage * per, (stage + 1) * per), first=first, last=last,
    )
    missing, unexpected = model.load_state_dict(shard, strict=False)
    missing = [k for k in missing if "_extra_state" not in k]
    assert not missing and not unexpected, (missing, unexpected)
    return model.to(device), tc, cfg


def aliases_params(synced: dict[str, torch.Tensor], model) -> list[str]:
    """Synced tensors that share memory with a live parameter (the rollout would see the actor's
    later updates, or freed memory after an offload)."""
    live = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sorted(k for k, t in unpacked(synced).items() if t.untyped_storage().data_ptr() in live)


def layer_bytes(model) -> int:
    """Bytes of decoder layer 0 on this rank (what RLinf's bucket capacity counts)."""
    return sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k.startswith("decoder.layers.0.") and "_extra_state" not in k)


def run_sync(model, tc, rollout_tp: int, capacity: int, convert_fn=None, packed: bool = True) -> tuple[list[list[str]], list[dict[str, torch.Tensor]]]:
    """RLinf's own sync on this rank: divide_model_to_bucket, then gather_and_reshard_model per bucket.

    Returns the Megatron names of each bucket and what each bucket produced: one packed buffer
    each (``packed``, what the actor sends to SGLang's Pangu class), HF names otherwise or when a
    ``convert_fn`` replaces the convertor.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from rlinf.utils.resharding.mcore_weight_reshard import MegatronCoreWeightReshard
    from rlinf.utils.resharding.reshard_config import ReshardConfig

    if next(model.parameters()).device.type == "cpu":
        gloo_reshard_subgroups()
    kw = {} if convert_fn is None else {"convert_fn": convert_fn}
    cfg = ReshardConfig(model_type="pangu", model_config=tc, reshard_tp_size=rollout_tp, bucket_capacity=capacity, **kw)
    if convert_fn is None:
        cfg._convertor.packed = packed  # as the actor's rollout-sync setup decides it
    reshard = MegatronCoreWeightReshard(cfg)
    buckets = reshard.divide_model_to_bucket([model])
    dst_tp_rank = dist.get_rank() % rollout_tp  # as RLinf's MegatronActor computes it
    outs = [reshard.gather_and_reshard_model(b, dst_tp_rank) for b in buckets]
    return [list(b) for b in buckets], outs


def rollout_rank_of(tp: int, rollout_tp: int) -> int:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank() // (tp // rollout_tp)


def megatron_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """Log-probabilities Megatron assigns to ``tokens[1:]`` (TP-gathered logits, fp32)."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    device = next(model.parameters()).device
    ids = torch.tensor([tokens], device=device)
    pos = torch.arange(len(tokens), device=device).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=pos, attention_mask=None)
        if ps.get_tensor_model_parallel_world_size() > 1:
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
    lp = torch.log_softmax(logits[0].float(), -1)
    return lp[:-1].gather(1, ids[0, 1:, None])[:, 0].cpu()


def optimizer_step(model, tokens: list[int], lr: float = 2e-2) -> float:
    """One Adam step on Megatron's own per-token loss (TP > 1 keeps replicated params in sync:
    without sequence parallelism their gradients are identical on every TP rank)."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokens[:-1]], device=device)
    labels = torch.tensor([tokens[1:]], device=device)
    pos = torch.arange(ids.shape[1], device=device).unsqueeze(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = model(input_ids=ids, position_ids=pos, attention_mask=None, labels=labels).float().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def _bucket_layers(bucket_keys: list[list[str]]) -> list[set[str]]:
    import re

    return [{m.group(1) for k in keys if (m := re.match(r"decoder\.layers\.(\d+)\.", k))} for keys in bucket_keys]


def layer_split_across_buckets(bucket_keys: list[list[str]]) -> bool:
    """True when some decoder layer's tensors sit in two buckets (a boundary inside a layer)."""
    layers = _bucket_layers(bucket_keys)
    return any(a & b for a, b in zip(layers, layers[1:]))


def sync_ranks(rank: int, world: int, ckpt: str, phases: list[dict], out_dir: str) -> list[dict]:
    """Run each phase on this rank; check every sync output bit for bit against the reference.

    A phase is ``{"tp", "pp", "rollout_tps", "save"?, "step_tokens"?, "seq"?, "device"?}`` or
    ``{"sglang_tp2": True}`` (:func:`sglang_presharded_rank` on the saved rollout-TP-2 output): build the
    Megatron stage from the checkpoint, sync it through RLinf to each rollout TP, compare with
    :func:`rollout_reference`. ``save`` writes this rank's rollout-TP-2 output to ``out_dir``.
    With ``step_tokens`` the phase then takes one optimizer step, records Megatron's
    logprobs of ``seq`` and syncs again to rollout TP 1: rank 0 saves the per-bucket HF output
    (and the Megatron-named layer tensors, for the negative controls) to ``out_dir``.
    """
    import rlinf_pangu
    from megatron.core import parallel_state as ps

    rlinf_pangu.register()
    hf = load_hf_state(ckpt)
    results = []
    for phase in phases:
        if phase.get("sglang_tp2"):  # after the Megatron phases, in the same processes
            results.append(sglang_presharded_rank(rank, world, ckpt, [str(Path(out_dir) / f"rollout_tp2_rank{r}.pt") for r in range(world)]))
            continue
        tp, pp = phase["tp"], phase["pp"]
        model, tc, cfg = build_megatron(ckpt, tp, pp, phase.get("device", "cpu"))
        capacity = int(layer_bytes(model) * BUCKET_LAYERS)
        for rtp in phase["rollout_tps"]:
            keys, outs = run_sync(model, tc, rtp, capacity)
            packed = all(is_one_packed_buffer(o) for o in outs)
            got: dict[str, torch.Tensor] = {}
            for o in outs:
                got.update(unpacked(o))
            aliased = aliases_params(got, model)
            got = {k: v.cpu() for k, v in got.items()}
            rr = rollout_rank_of(tp, rtp)
            want = rollout_reference(hf, cfg, rtp, rr)
            results.append({
                "tp": tp, "pp": pp, "rollout_tp": rtp, "rank": rank, "rollout_rank": rr,
                "mismatches": compare_exact(got, want), "n_tensors": len(got),
                "aliases_params": aliased, "device": str(next(model.parameters()).device),
                "n_buckets": len(keys), "split_layer": layer_split_across_buckets(keys), "packed": packed,
            })
            if rtp == 2 and phase.get("save"):
                torch.save(got, Path(out_dir) / f"rollout_tp2_rank{rr}.pt")
        if phase.get("step_tokens"):
            results.append(_step_and_sync(model, tc, phase, capacity, out_dir, rank))
        del model
        ps.destroy_model_parallel()
    return results


def _step_and_sync(model, tc, phase: dict, capacity: int, out_dir: str, rank: int) -> dict:
    loss = optimizer_step(model, phase["step_tokens"])
    lp = megatron_logprobs(model, phase["seq"])
    _, outs = run_sync(model, tc, 1, capacity)
    _, megatron_named = run_sync(model, tc, 1, capacity, convert_fn=lambda sd: sd)
    if rank == 0:
        layers = {k: v for o in megatron_named for k, v in o.items() if k.startswith("decoder.layers.")}
        torch.save({"buckets": outs, "megatron_layers": layers, "logprobs": lp, "loss": loss},
                   Path(out_dir) / "after_step.pt")
    return {"step": True, "rank": rank, "loss": loss}


# --------------------------------------------------------------------------------------
# The shared 2-rank Megatron run (pytest process)
# --------------------------------------------------------------------------------------

_RUNS: dict[str, dict] = {}


def _tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 150000, (n,), generator=g).tolist()


def two_rank_megatron_run(ckpt, tmp_path_factory) -> dict:
    """Megatron at TP2 (sync to rollout TP1 and TP2, one optimizer step, sync again) and at PP2
    (sync to PP1), on 2 gloo ranks; run once per pytest session and shared by the sync and
    SGLang tests. Returns the per-rank check results and what the SGLang tests load."""
    from harness import run_ranks

    key = str(ckpt)
    if key in _RUNS:
        return _RUNS[key]
    out = tmp_path_factory.mktemp("sync_run")
    seq = _tokens(24, 11)
    phases = [
        {"tp": 2, "pp": 1, "rollout_tps": [1, 2], "save": True, "step_tokens": _tokens(33, 12), "seq": seq},
        {"tp": 1, "pp": 2, "rollout_tps": [1]},
        {"sglang_tp2": True},
    ]
    per_rank = run_ranks(sync_ranks, 2, str(ckpt), phases, str(out), timeout=600, grace=20)
    step = torch.load(out / "after_step.pt", weights_only=False)
    step["seq"] = seq
    step["buckets_without_layers"] = [
        {k: v.clone() for k, v in unpacked(b).items() if not k.startswith("model.layers.")} for b in step["buckets"]
    ]
    _RUNS[key] = {
        "results": [r for rank in per_rank for r in rank],
        "after_step": step,
        "rollout_tp2": [out / f"rollout_tp2_rank{r}.pt" for r in range(2)],
    }
    return _RUNS[key]


def reshard_config(ckpt, actor_tp: int = 2, rollout_tp: int = 1, **kw):
    """RLinf's ReshardConfig for an actor at ``actor_tp`` syncing to ``rollout_tp`` (its
    convertor reads both TP sizes)."""
    import rlinf_pangu
    from rlinf.utils.resharding.reshard_config import ReshardConfig

    from rlinf_pangu.megatron.config import pangu_transformer_config

    rlinf_pangu.register()
    tc = pangu_transformer_config(hf_config(ckpt), tp=actor_tp, dtype=torch.float32, use_cpu_initialization=True)
    return ReshardConfig(model_type="pangu", model_config=tc, reshard_tp_size=rollout_tp, **kw)


def reshard_config_rollout_tp1(ckpt, actor_tp: int = 2):
    return reshard_config(ckpt, actor_tp, 1)


# --------------------------------------------------------------------------------------
# SGLang side (inside gloo ranks): SGLang's own model class and parallel state, no engine
# --------------------------------------------------------------------------------------


def sglang_model(ckpt: str, tp: int, rank: int):
    """SGLang's Pangu class at TP ``tp`` on the CPU, in a rank whose default group exists."""
    import rlinf_pangu

    rlinf_pangu.register(rlinf=False)
    from sglang.srt.distributed import init_distributed_environment, initialize_model_parallel
    from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.layers.dp_attention import initialize_dp_attention

    args = ServerArgs(
        model_path=ckpt, device="cpu", dtype="float32", attention_backend="torch_native",
        sampling_backend="pytorch", tp_size=tp, skip_tokenizer_init=True,
    )
    set_global_server_args_for_scheduler(args)
    import sglang.srt.distributed.parallel_state as sps

    original = sps.init_model_parallel_group

    def cpu_group(*args, **kwargs):  # test redirect: no NCCL/custom all-reduce on CPU ranks
        kwargs.update(use_pynccl=False, use_custom_allreduce=False, use_mscclpp_allreduce=False,
                      use_torch_symm_mem_allreduce=False)
        return original(*args, **kwargs)

    sps.init_model_parallel_group = cpu_group
    init_distributed_environment(world_size=tp, rank=rank, local_rank=rank, backend="gloo")
    initialize_model_parallel(tensor_model_parallel_size=tp, backend="gloo")
    model_config = ModelConfig.from_server_args(args)
    initialize_dp_attention(args, model_config)
    from rlinf_pangu.sglang_ext.pangu_embedded import PanguEmbeddedForCausalLM

    with torch.device("cpu"):
        return PanguEmbeddedForCausalLM(model_config.hf_config)


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def sglang_presharded_rank(rank: int, world: int, ckpt: str, presharded_files: list[str]) -> dict:
    """Load the full HF checkpoint with SGLang's own (non-presharded) splitting, then this rank's
    synced presharded bucket the way RLinf's rollout does: every parameter must come out the same.
    Also reports what Megatron's even vocab split does in SGLang's stock loader and in ours."""
    from rlinf_pangu import patches
    from rlinf_pangu.patches.sglang import SGLANG_CPU_PATCHES
    from rlinf_pangu.layout import LayoutError
    from rlinf_pangu.sglang_ext.weight_sync import load_presharded_weights

    model = sglang_model(ckpt, world, rank)
    hf = load_hf_state(ckpt)
    model.load_weights(list(hf.items()))
    reference = params_of(model)
    for p in model.parameters():  # make a partial load visible
        p.data.fill_(float("nan"))
    load_presharded_weights(model, list(torch.load(presharded_files[rank], weights_only=False).items()))
    mismatches = compare_exact(params_of(model), reference)

    # Megatron's even split of the embedding (what an unpatched sync would send):
    per = hf["model.embed_tokens.weight"].shape[0] // world
    even = hf["model.embed_tokens.weight"][rank * per : (rank + 1) * per]
    try:
        load_presharded_weights(model, [("model.embed_tokens.weight", even)])
        ours = "accepted"
    except LayoutError as e:
        ours = str(e)
    stock = _stock_presharded_embedding(model, even)
    return {
        "sglang_tp2": True, "rank": rank, "mismatches": mismatches, "n_params": len(reference),
        "even_split_ours": ours,
        "even_split_stock_equal": torch.equal(stock, reference["model.embed_tokens.weight"]),
        "cpu_patches": [n for n in SGLANG_CPU_PATCHES if patches.PATCHES[n].done],
    }


def _stock_presharded_embedding(model, even: torch.Tensor) -> torch.Tensor:
    """SGLang's own VocabParallelEmbedding.weight_loader, presharded, fed Megatron's even split."""
    emb = model.model.embed_tokens
    emb.use_presharded_weights = True
    emb.weight_loader(emb.weight, even)
    return emb.weight.detach().clone()


# --------------------------------------------------------------------------------------
# GPU ranks: Megatron TP2 on two GPUs (NCCL) -> a real sgl.Engine at rollout TP 2 or 1
# --------------------------------------------------------------------------------------


def _gpu_engine(ckpt: str, tp: int):
    """A bf16 ``sgl.Engine`` on GPUs 0..tp-1 with the settings that run on the GPU host (SGLang's
    CUDA RMSNorm kernel has no fp32 path)."""
    import os
    import sys

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "benchmarks"))
    import _sync_common as C

    # the rank's torch.distributed variables must not leak into SGLang's own TP processes
    rank_env = {k: os.environ.pop(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:
        return C.engine(ckpt, "cuda", "bfloat16", tp_size=tp, mem_fraction_static=0.3, disable_cuda_graph=True)
    finally:
        os.environ.update(rank_env)


def _engine_logprobs(eng, seq: list[int]) -> torch.Tensor:
    out = eng.generate(input_ids=[seq], sampling_params={"max_new_tokens": 1, "temperature": 0},
                       return_logprob=True, logprob_start_len=0)[0]
    return torch.tensor([v for v, _, _ in out["meta_info"]["input_token_logprobs"][1:]], dtype=torch.float64)


def _push_per_rank(eng, buckets: list[dict[str, torch.Tensor]], rank: int, world: int, owner) -> None:
    """Load each bucket into SGLang the way RLinf's rollout gets it: SGLang TP rank ``r`` gets
    tensor ``name`` as the CUDA IPC handle of actor rank ``owner(r, name)`` (SGLang's
    ``LocalSerializedTensor``), presharded, cache flushed after the last."""
    import torch.distributed as dist
    from sglang.srt.model_executor.model_runner_components.weight_updater import LocalSerializedTensor
    from sglang.srt.utils import MultiprocessingSerializer

    from rlinf_pangu.sglang_ext.weight_sync import LOADER

    for i, bucket in enumerate(buckets):
        mine = {k: MultiprocessingSerializer.serialize(v) for k, v in bucket.items()}
        every = [None] * world
        dist.all_gather_object(every, mine)
        if rank == 0:
            tp = eng.server_args.tp_size
            named = [(k, LocalSerializedTensor(values=[every[owner(r, k)][k] for r in range(tp)])) for k in mine]
            ok, msg = eng.update_weights_from_tensor(named, load_format=LOADER, flush_cache=i == len(buckets) - 1)[:2]
            assert ok, msg
        dist.barrier()  # the owners keep their tensors alive until SGLang has copied them


ROW_PARALLEL = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def post_step_hf(model, cfg) -> dict[str, torch.Tensor]:
    """The actor's current weights as HF tensors (on the CPU), every TP rank's shards gathered and
    merged by tests/independent_layout.py: nothing of the sync (RLinf's reshard, the convertor,
    packing) is on this path, so SGLang loading these is the floor's reference load."""
    import torch.distributed as dist

    import independent_layout as I

    mine = {k: v.detach().cpu() for k, v in model.state_dict().items() if "_extra_state" not in k}
    world = dist.get_world_size() if dist.is_initialized() else 1
    every = [None] * world
    if world > 1:
        dist.all_gather_object(every, mine)
    else:
        every = [mine]
    return I.megatron_to_hf(every, I.Shape.of(cfg.to_dict()))


def post_step_reference_rank(rank: int, world: int, ckpt: str, step_tokens: list[int]) -> dict:
    """CPU check of the GPU floor's reference load: after an optimizer step on Megatron TP ``world``,
    :func:`post_step_hf` (the shards merged by tests/independent_layout.py) equals what RLinf's sync
    gives to rollout TP 1, bit for bit."""
    import rlinf_pangu

    rlinf_pangu.register()
    model, tc, cfg = build_megatron(ckpt, world, 1)
    optimizer_step(model, step_tokens)
    reference = post_step_hf(model, cfg)
    _, outs = run_sync(model, tc, 1, int(layer_bytes(model) * BUCKET_LAYERS))
    synced: dict[str, torch.Tensor] = {}
    for o in outs:
        synced.update(unpacked(o))
    changed = sum(not torch.equal(reference[k], v) for k, v in load_hf_state(ckpt).items() if k in reference)
    return {"mismatches": compare_exact(synced, reference), "n": len(reference), "changed_by_step": changed}


def gpu_post_sync_rank(rank: int, world: int, ckpt: str, step_tokens: list[int], seq: list[int]) -> dict:
    """Megatron TP2 (fp32, one GPU per rank) takes an optimizer step and syncs through RLinf's own
    reshard (NCCL) to a real bf16 SGLang engine at rollout TP 2, then TP 1; rank 0 compares
    SGLang's logprobs of ``seq`` with Megatron's recomputed ones (:func:`compare.logprob_gap`).

    Per engine, from the same run: ``stale`` (the engine before the sync, still on the checkpoint's
    weights, against Megatron after the step), at TP 2 ``swapped`` (each SGLang rank given the other
    actor rank's o_proj and down_proj), ``after`` (the sync done right), then ``floor`` (the same
    post-step weights given to SGLang by :func:`post_step_hf`, each SGLang rank its own cut:
    bf16 kernels alone, on the weights ``after`` is judged on) and ``sync_vs_floor`` (SGLang against
    itself across the two loads). ``floor_pre_step`` (the checkpoint's weights against Megatron
    before the step) is what earlier runs called the floor, kept for comparison."""
    import torch.distributed as dist

    import rlinf_pangu

    rlinf_pangu.register()
    model, tc, cfg = build_megatron(ckpt, 2, 1, "cuda")
    capacity = int(layer_bytes(model) * BUCKET_LAYERS)
    before = megatron_logprobs(model, seq).double()
    optimizer_step(model, step_tokens)
    want = megatron_logprobs(model, seq).double()
    reference = post_step_hf(model, cfg)
    out: dict = {"rank": rank}
    for rollout_tp in (2, 1):
        eng = _gpu_engine(ckpt, rollout_tp) if rank == 0 else None
        dist.barrier()
        _, buckets = run_sync(model, tc, rollout_tp, capacity)
        report: dict = {"n_buckets": len(buckets), "tokens": len(seq) - 1}
        if rank == 0:
            served = _engine_logprobs(eng, seq)
            report.update(floor_pre_step=logprob_gap("floor_pre_step", served, before), stale=logprob_gap("stale", served, want))
        if rollout_tp == 2:
            # One engine call carries every SGLang rank's handle under one name, but each rank's
            # packed key names its own vocabulary rows (SGLang's shards differ by a few rows), so
            # TP 2 goes by HF name. (In RLinf each rollout rank receives its own actor rank's bucket.)
            buckets = [unpacked(b) for b in buckets]
            # The row-parallel halves only (o_proj, down_proj): swapping every layer tensor together
            # just moves whole heads/MLP columns to the other GPU, which sums to the same output.
            _push_per_rank(eng, buckets, rank, world, lambda r, name: 1 - r if name.endswith(ROW_PARALLEL) else r)
            if rank == 0:
                report["swapped"] = logprob_gap("swapped", _engine_logprobs(eng, seq), want)
        # rollout TP 1: every actor rank holds the whole model, packed; RLinf sends rank 0's
        owner = (lambda r, name: r) if rollout_tp == 2 else (lambda r, name: 0)
        _push_per_rank(eng, buckets, rank, world, owner)
        if rank == 0:
            after = _engine_logprobs(eng, seq)
            report["after"] = logprob_gap("after", after, want)
        # the floor: the same post-step weights by the independent path, this rank's SGLang cut
        cut = {k: v.to("cuda") for k, v in rollout_reference(reference, cfg, rollout_tp, rollout_rank_of(2, rollout_tp)).items()}
        _push_per_rank(eng, [cut], rank, world, owner)
        del cut
        if rank == 0:
            floor = _engine_logprobs(eng, seq)
            report.update(floor=logprob_gap("floor", floor, want), sync_vs_floor=logprob_gap("sync_vs_floor", after, floor))
            eng.shutdown()
        dist.barrier()
        out[f"rollout_tp{rollout_tp}"] = report
    return out


# --------------------------------------------------------------------------------------
# One GPU, colocated exactly as the GPU examples run it
# --------------------------------------------------------------------------------------

#: The GPU example the colocated test follows (one GPU, actor + rollout + sync colocated).
COLOCATED_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "math" / "pangu-tiny-grpo-megatron.yaml"


def example_config(model_path: str | Path, example: Path = COLOCATED_EXAMPLE):
    """The example's composed config (the project's own hydra composition), on ``model_path``."""
    from rlinf_pangu import config as pc

    return pc.compose(example, [f"rollout.model.model_path={model_path}"])


def rollout_engine_kwargs(cfg) -> dict:
    """The ``sgl.Engine`` arguments RLinf's ``SGLangWorker._init_engine`` derives from the rollout
    config for the Megatron backend's ``sync`` weight reload, restated here: CUDA graphs unless
    ``enforce_eager``, and then SGLang's memory saver on (RLinf ties the two), random ("dummy")
    start weights, the YAML's memory fraction, attention backend and batch limits. Plus what a
    plain engine needs to take RLinf's buckets: the project's loader, which does the two model-side
    steps RLinf's scheduler does (presharded flags, ``load_weights``)."""
    from rlinf_pangu.sglang_ext.weight_sync import LOADER

    r = cfg.rollout
    cuda_graphs = not r.enforce_eager
    return {
        "model_path": str(r.model.model_path),
        "disable_cuda_graph": not cuda_graphs,
        "cuda_graph_max_bs": min(r.cuda_graph_max_bs, r.max_running_requests),
        "tp_size": r.tensor_parallel_size,
        "mem_fraction_static": r.gpu_memory_utilization,
        "enable_memory_saver": cuda_graphs,
        "enable_torch_compile": r.sglang.use_torch_compile,
        "load_format": "dummy",
        "dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[str(r.model.precision)],
        "skip_tokenizer_init": not r.detokenize,
        "attention_backend": r.sglang.attention_backend,
        "max_running_requests": r.max_running_requests,
        "log_level": "warning",
        "random_seed": 0,
        "custom_weight_loader": [LOADER],
    }


def start_rollout_engine(kwargs: dict):
    """``Engine(**dataclasses.asdict(ServerArgs(**kwargs)))``, RLinf's own call, through the
    project's patch of it (RLinf's ``cuda_graph_max_bs`` is sglang 0.5.17's ``cuda_graph_max_bs_decode``)."""
    import dataclasses

    import sglang as sgl
    from sglang.srt.server_args import ServerArgs

    from rlinf_pangu.patches.rlinf import make_server_args_factory

    return sgl.Engine(**dataclasses.asdict(make_server_args_factory(ServerArgs)(**dict(kwargs))))


def actor_reshard(cfg, tc):
    """RLinf's ``MegatronCoreWeightReshard`` as the actor has it after ``init_worker_customize``
    with the project's rollout-sync setup (patch ``rlinf.MegatronActor:rollout-sync-setup``): the
    YAML's bucket capacity, and packed buckets exactly when the rollout reads them."""
    from types import SimpleNamespace

    from rlinf.utils.resharding.mcore_weight_reshard import MegatronCoreWeightReshard
    from rlinf.utils.resharding.reshard_config import ReshardConfig

    from rlinf_pangu.patches.rlinf import make_rollout_sync_setup

    actor = SimpleNamespace(cfg=cfg)

    def init_worker_customize(self):
        rc = ReshardConfig(model_type="pangu", model_config=tc, reshard_tp_size=cfg.rollout.tensor_parallel_size)
        self.rollout_weights_reshard = MegatronCoreWeightReshard(rc)

    make_rollout_sync_setup(init_worker_customize)(actor)
    return actor.rollout_weights_reshard


def colocated_sync(eng, reshard, model) -> dict:
    """One colocated hand-over as RLinf runs it: the rollout resumes its memory (RLinf's scheduler
    does, inside ``sync_hf_weight``, when the weights are offloaded), each bucket of RLinf's reshard
    goes over as CUDA IPC handles on the same GPU (SGLang's serializer pickles a CUDA tensor through
    torch's ``reduce_tensor``, the call RLinf's actor makes), the radix cache is flushed with the last."""
    from rlinf_pangu.sglang_ext.weight_sync import LOADER

    eng.resume_memory_occupation()
    buckets = reshard.divide_model_to_bucket([model])
    packed = []
    for i, bucket in enumerate(buckets):
        out = reshard.gather_and_reshard_model(bucket, 0)
        packed.append(is_one_packed_buffer(out))
        _bench_common()._update(eng, out, LOADER, flush=i == len(buckets) - 1)
        del out
    return {"buckets": len(buckets), "packed": all(packed)}


#: CPU dry run of :func:`colocated_rank` (its logic, not CUDA): SGLang's CPU settings, no memory
#: saver (torch_memory_saver hooks CUDA allocations; release/resume are then no-ops) and no CUDA
#: graphs; fp32 (this host has no bf16 instructions). Never used with a GPU.
CPU_DRY_RUN_ENGINE = {"device": "cpu", "attention_backend": "torch_native", "sampling_backend": "pytorch",
                      "disable_cuda_graph": True, "enable_memory_saver": False, "mem_fraction_static": 0.5,
                      "max_total_tokens": 4096, "dtype": "float32"}


def colocated_rank(rank: int, world: int, ckpt: str, seqs: list[list[int]], step_seqs: list[list[int]], lr: float,
                   device: str = "cuda") -> dict:
    """The colocated hand-over on one GPU (an NCCL rank of one, tests/harness), in RLinf's order:

    1. SGLang starts with the example's settings (:func:`rollout_engine_kwargs`: memory saver and
       CUDA graphs on, dummy weights) and releases its memory, as RLinf offloads a colocated rollout;
    2. the actor (Megatron, bf16 like the example's, the checkpoint's weights) syncs: ``initial``
       (SGLang's log-probs against the actor's recompute, before any training);
    3. SGLang releases again, the actor takes an optimizer step, syncs again: ``after``;
       ``stale`` = SGLang's log-probs from step 2 (the weights before the step) against the
       actor's new recompute: what a hand-over that silently kept the old weights would serve;
    4. the same post-step weights through the independent load (:func:`post_step_hf`): ``floor``,
       and ``sync_vs_floor`` (SGLang against itself).

    ``device="cpu"`` is the dry run of all of it but CUDA (:data:`CPU_DRY_RUN_ENGINE`, fp32 actor).
    """
    import rlinf_pangu
    from rlinf_pangu.sglang_ext.weight_sync import LOADER

    rlinf_pangu.register()
    C = _bench_common()
    cfg = example_config(ckpt)
    kwargs = rollout_engine_kwargs(cfg)
    if device == "cpu":
        kwargs.update(CPU_DRY_RUN_ENGINE)
    rank_env = {k: os.environ.pop(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:  # SGLang's own processes must not see this rank's torch.distributed variables
        eng = start_rollout_engine(kwargs)
    finally:
        os.environ.update(rank_env)
    report: dict = {"engine": {k: v for k, v in kwargs.items() if k != "model_path"}}
    try:
        eng.release_memory_occupation()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[str(cfg.actor.model.precision)]
        model, tc, hf_cfg = build_megatron(ckpt, 1, 1, device, dtype if device == "cuda" else torch.float32)
        if device == "cpu":
            gloo_reshard_subgroups()
        reshard = actor_reshard(cfg, tc)
        report["bucket_capacity"] = reshard.bucket_capacity
        report["sync_1"] = colocated_sync(eng, reshard, model)
        before_lp = C.sglang_logprobs(eng, seqs)
        report["initial"] = logprob_gap("initial", before_lp, C.megatron_logprobs(model, seqs, device))
        eng.release_memory_occupation()  # RLinf offloads the rollout before the actor trains
        report["loss"] = C.adam_step(model, step_seqs, lr, device)
        want = C.megatron_logprobs(model, seqs, device)
        report["stale"] = logprob_gap("stale", before_lp, want)
        report["sync_2"] = colocated_sync(eng, reshard, model)
        after_lp = C.sglang_logprobs(eng, seqs)
        report["after"] = logprob_gap("after", after_lp, want)
        reference = post_step_hf(model, hf_cfg)
        C._update(eng, {k: v.to(device) for k, v in reference.items()}, LOADER, flush=True)
        del reference
        floor_lp = C.sglang_logprobs(eng, seqs)
        report["floor"] = logprob_gap("floor", floor_lp, want)
        report["sync_vs_floor"] = logprob_gap("sync_vs_floor", after_lp, floor_lp)
    finally:
        eng.shutdown()
    report["tokens"] = sum(len(s) - 1 for s in seqs)
    report["device"] = device
    return report

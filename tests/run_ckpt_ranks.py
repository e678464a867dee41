"""Rank side of tests/test_export_run.py: RLinf's Megatron actor at TP2 x PP2 on 4 gloo ranks, saved
and resumed through RLinf's own ``MegatronModelManager.save_checkpoint/load_checkpoint`` (with this
project's patches), in the explicit CPU mode (``rlinf_pangu.patches.cpu``, as a CPU run has it).

What RLinf's ``MegatronModelManager.__init__`` + ``setup_model_and_optimizer`` do is done here
with the same calls except Megatron's args, which RLinf builds for bf16/fp16 only: these are
RLinf's own fields (``extract_selected_fields``) in fp32, completed with Megatron's defaults by
the project's patch function. The model, DDP, the distributed optimizer and the LR schedule are
megatron-core's ``setup_model_and_optimizer``; weights start from the HF checkpoint.

One launch does the whole life at this layout:

1. train one GRPO-sized step (cross entropy; the point is moved weights and non-zero Adam moments);
2. ``save_checkpoint`` into a run checkpoint's staging directory, rank 0 commits it
   (``rlinf_pangu.run_checkpoint``: hf_meta, marker with every rank's digest, rename);
3. train a second step (the step after a mid-run save must run: RLinf's save offloads everything);
4. build a fresh actor, ``load_checkpoint`` it from the committed directory (the patched load
   verifies the digest), compare its state with the saved one element by element, train the same
   second step and compare with the uninterrupted actor's.
"""

from __future__ import annotations

from typing import Any

import torch

import megatron_ranks as mr

STEP = 1  # the iteration the checkpoint is saved at


def _snapshot(manager) -> dict[str, torch.Tensor]:
    """Every weight and every optimizer tensor (fp32 main params, Adam moments, step) of this rank."""
    from rlinf_pangu.run_checkpoint import _optimizer_items, _unwrap

    out = {f"w.{i}.{n}": p.detach().clone() for i, c in enumerate(manager.model) for n, p in _unwrap(c).named_parameters()}
    for name, value in _optimizer_items(manager.optimizer):
        if isinstance(value, torch.Tensor):
            out[f"o.{name}"] = value.detach().clone()
    return out


def _megatron_args(cfg) -> None:
    """Megatron's global args as RLinf's ``set_megatron_args`` makes them, in fp32."""
    import rlinf.utils.omega_resolver  # noqa: F401  (${torch.dtype:...})
    from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator, unset_num_microbatches_calculator
    from megatron.training.global_vars import _set_timers, set_args, unset_global_variables
    from rlinf.utils.initialize import extract_selected_fields

    from rlinf_pangu.patches.rlinf import complete_megatron_args

    args = extract_selected_fields(cfg)
    args.consumed_train_samples = args.skipped_train_samples = args.consumed_valid_samples = 0
    args.use_mp_args_from_checkpoint_args = False
    args.params_dtype = "${torch.dtype:float32}"
    args.fp16 = args.bf16 = False
    args.vocab_file = None
    args.iteration = 0
    complete_megatron_args(args)
    unset_global_variables()
    set_args(args)
    _set_timers(args)
    unset_num_microbatches_calculator()
    init_num_microbatches_calculator(rank=torch.distributed.get_rank(), rampup_batch_size=None,
                                     global_batch_size=mr.BATCH, micro_batch_size=mr.MICRO, data_parallel_size=1)


def _actor(cfg, hf_dir: str):
    """A MegatronModelManager holding model, optimizer and LR schedule built as RLinf builds them."""
    from megatron.core.enums import ModelType
    from megatron.training.global_vars import get_args
    from megatron.training.training import setup_model_and_optimizer, unwrap_model
    from rlinf.config import build_transformer_config
    from rlinf.hybrid_engines.megatron.megatron_model_manager import MegatronModelManager

    manager = MegatronModelManager.__new__(MegatronModelManager)
    manager._cfg = cfg
    manager.transformer_config = build_transformer_config(cfg.model)
    manager.mcore_gpt, manager.spec_name = cfg.mcore_gpt, cfg.spec_name
    manager.is_dedicated_critic_model = manager.mbridge = False
    manager.checkpoint_context = {}
    manager.is_running = True
    manager.is_weight_offloaded = manager.is_grad_offloaded = manager.is_optimizer_offloaded = False
    get_args().load = None
    torch.manual_seed(mr.SEED)
    manager.model, manager.optimizer, manager.lr_scheduler = setup_model_and_optimizer(
        model_provider_func=manager.model_provider_func, model_type=ModelType.encoder_or_decoder, checkpointing_context={})
    mr.load_hf_weights(unwrap_model(manager.model), hf_dir)
    return manager


def _train_step(manager, batch) -> float:
    """One optimizer step on ``batch`` through Megatron's pipeline schedule (cross entropy)."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    model = manager.model
    config = get_model_config(model[0])
    config.finalize_model_grads_func = finalize_model_grads
    for chunk in model:
        chunk.zero_grad_buffer()
    manager.optimizer.zero_grad()

    def step(data_iterator, chunk):
        mb = next(data_iterator)
        out = chunk(input_ids=mb["input_ids"], position_ids=mb["position_ids"], attention_mask=None, labels=mb["labels"])

        def loss(o):
            value = o.float().mean()
            return value, {"loss": value.detach().clone()}

        return out, loss

    mbs = [{k: v[i * mr.MICRO:(i + 1) * mr.MICRO] for k, v in batch.items() if k in ("input_ids", "position_ids", "labels")}
           for i in range(mr.BATCH // mr.MICRO)]
    losses = get_forward_backward_func()(
        forward_step_func=step, data_iterator=[iter(list(mbs)) for _ in model] if len(model) > 1 else iter(mbs),
        model=model, num_microbatches=len(mbs), seq_length=mr.SEQ, micro_batch_size=mr.MICRO, forward_only=False)
    ok, _grad_norm, _ = manager.optimizer.step()
    assert ok, "the optimizer step was skipped"
    manager.lr_scheduler.step(increment=1)
    return float(sum(x["loss"] for x in losses) / len(losses)) if losses else float("nan")


def _logits(manager, batch) -> torch.Tensor | None:
    """The full-vocabulary logits of the last pipeline stage (None elsewhere)."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def step(data_iterator, chunk):
        mb = next(data_iterator)
        out = chunk(input_ids=mb["input_ids"], position_ids=mb["position_ids"], attention_mask=None)
        return out, lambda o: (o.sum() * 0, {"logits": tensor_parallel.gather_from_tensor_model_parallel_region(o).detach()})

    model = manager.model
    mbs = [{k: v[i * mr.MICRO:(i + 1) * mr.MICRO] for k, v in batch.items()} for i in range(mr.BATCH // mr.MICRO)]
    with torch.no_grad():
        outs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=[iter(list(mbs)) for _ in model] if len(model) > 1 else iter(mbs),
            model=model, num_microbatches=len(mbs), seq_length=mr.SEQ, micro_batch_size=mr.MICRO, forward_only=True)
    return torch.cat([o["logits"] for o in outs]) if ps.is_pipeline_last_stage(ignore_virtual=True) else None


def _differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]


def save_and_resume(rank: int, world_size: int, hf_dir: str, final: str, tp: int, pp: int) -> dict[str, Any]:
    import os
    from pathlib import Path

    os.environ["RLINF_PANGU_DEVICE"] = "cpu"  # the explicit CPU mode, as a CPU run's actor has it
    import rlinf_pangu

    rlinf_pangu.register(sglang=False)
    from rlinf_pangu.patches import cpu

    cpu.arm()
    import rlinf.hybrid_engines.megatron.megatron_model_manager  # noqa: F401  (arms the CPU redirects)

    cpu.enter_device_mode()
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.training.training import unwrap_model

    from rlinf_pangu import run_checkpoint as rc

    cfg = mr.rlinf_actor_cfg(hf_dir, tp, pp, None)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.optim.use_distributed_optimizer = True
        cfg.megatron.use_hf_ckpt = False
    mr.init_parallel(tp, pp, None)
    tensor_parallel.random.initialize_rng_tracker(use_te_rng_tracker=False)
    tensor_parallel.model_parallel_cuda_manual_seed(mr.SEED)
    _megatron_args(cfg)
    batch = mr.make_batch(mr.hf_model(hf_dir).config.vocab_size)
    second = mr.make_batch(mr.hf_model(hf_dir).config.vocab_size)
    second["input_ids"] = second["input_ids"].flip(0)
    second["labels"] = second["labels"].flip(0)

    final = Path(final)
    a = _actor(cfg, hf_dir)
    loss1 = _train_step(a, batch)
    saved = _snapshot(a)
    logits = _logits(a, batch)
    tmp = rc.partial_dir(final)
    if rank == 0:
        rc.begin(final)
    torch.distributed.barrier()
    digest = a.save_checkpoint(str(tmp / "actor"), STEP)  # RLinf's method, patched: returns the digest
    digests = [None] * world_size
    torch.distributed.all_gather_object(digests, digest)
    if rank == 0:
        (tmp / "data").mkdir()
        torch.save({"note": "no data loader in this harness"}, tmp / "data" / "data.pt")
        rc.copy_hf_meta(hf_dir, tmp / "actor")
        rc.commit(tmp, final, rc.marker_doc(STEP, parallel={"tp": tp, "pp": pp, "vpp": None},
                                           model=rc.model_of(hf_dir), digests={"actor": digests}))
    torch.distributed.barrier()
    after_save_offload = (a.is_weight_offloaded, a.is_grad_offloaded, a.is_optimizer_offloaded)
    loss2 = _train_step(a, second)  # the step after a mid-run save
    continued = _snapshot(a)

    b = _actor(cfg, hf_dir)
    fresh_differs = bool(_differences(saved, _snapshot(b)))  # negative control: a new actor is not the saved one
    b.load_checkpoint(str(final / "actor"))  # RLinf's method, patched: weights-only load + digest check
    loaded = _snapshot(b)
    loaded_digest = rc.state_digest(b)
    resumed_loss2 = _train_step(b, second)
    resumed = _snapshot(b)
    chunks = unwrap_model(a.model)
    return {
        "rank": rank,
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "pp_rank": ps.get_pipeline_model_parallel_rank(),
        "chunks": [{"layers": mr.chunk_layers(c), "first": c.pre_process, "last": c.post_process} for c in chunks],
        "weights": {k[2:]: v for k, v in saved.items() if k.startswith("w.")},
        "logits": logits,
        "losses": (loss1, loss2, resumed_loss2),
        "digest": digest,
        "loaded_digest": loaded_digest,
        "after_save_offloaded": after_save_offload,
        "fresh_differs": fresh_differs,
        "load_differences": _differences(saved, loaded),
        "continue_differences": _differences(continued, resumed),
        "tensors": len(saved),
    }


def greedy_from_rank_file(rank: int, world_size: int, hf_dir: str, rank_file: str, prompt: list[int], new_tokens: int) -> list[int]:
    """The actor's greedy continuation: RLinf's Pangu model (TP1, fp32) holding the tensors of a
    run's rank file, decoding by full forwards (no cache) and argmax."""
    import rlinf_pangu

    rlinf_pangu.register(sglang=False)
    from ckpt_convertor.megatron_io import load_rank_file

    cfg = mr.rlinf_actor_cfg(hf_dir, 1, 1, None)
    mr.init_parallel(1, 1, None)
    (chunk,) = mr.build_rlinf_model(cfg)
    saved = {k: v.float() for k, v in load_rank_file(rank_file)["model"].items() if not k.endswith("_extra_state")}
    missing, unexpected = chunk.load_state_dict(saved, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    chunk.eval()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            x = torch.tensor([ids])
            logits = chunk(input_ids=x, position_ids=torch.arange(len(ids)).unsqueeze(0), attention_mask=None)
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]

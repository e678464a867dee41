"""Rank-side code of the Megatron parity tests (imported by spawned gloo ranks; see harness).

Every model here is built the way RLinf builds it: an RLinf actor/critic config validated by
RLinf's ``validate_megatron_cfg`` and ``validate_model_cfg_by_hf_config`` (with our patches),
``TransformerConfig`` from RLinf's ``build_transformer_config``, and the chunks from
megatron-core's ``get_model(MegatronModelManager.model_provider_func)`` -- the call RLinf's
``setup_model_and_optimizer`` makes. Only ``MegatronModelManager.__init__`` is skipped: it runs
``initialize_megatron``, which insists on bf16/fp16 and on a GPU, and the parity checks need
fp32; the attributes it sets that the provider reads are set here.

Weights come from the HF checkpoint through ``rlinf_pangu.layout.hf_to_megatron_shard``; the
HF reference (transformers' PanguEmbeddedForCausalLM, fp32, eager attention) runs in the same
rank, so each check returns plain numbers.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from compare import Diff, diff, worst

#: batch: 4 sequences of SEQ tokens in 4 micro-batches (the interleaved schedule needs >= PP of them).
SEQ, BATCH, MICRO = 8, 4, 1
RESP = 5  # the last RESP tokens are the "response" of the GRPO/critic checks
SEED = 1234


# --------------------------------------------------------------------------------------
# Inputs and the HF reference
# --------------------------------------------------------------------------------------


def make_batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    labels = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    # response mask with holes, so masked means differ from plain means
    resp_mask = torch.ones(BATCH, RESP, dtype=torch.bool)
    resp_mask[0, -1] = False
    resp_mask[3, -2:] = False
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0])
    return {
        "input_ids": ids,
        "position_ids": torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ).contiguous(),
        "labels": labels,
        "response_mask": resp_mask,
        "rewards": rewards,
        "old_logprob_noise": 0.3 * torch.randn(BATCH, RESP, generator=g),
        "returns": torch.randn(BATCH, RESP, generator=g),
        "prev_values_noise": 0.1 * torch.randn(BATCH, RESP, generator=g),
    }


@functools.cache
def hf_model(ckpt_dir: str):
    import rlinf_pangu
    from transformers import AutoModelForCausalLM

    rlinf_pangu.register(sglang=False)
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@functools.cache
def hf_state_dict(ckpt_dir: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in hf_model(ckpt_dir).state_dict().items()}


def grpo_advantages(batch) -> torch.Tensor:
    """RLinf's own GRPO advantages (groups of 2) for the response tokens."""
    from rlinf.algorithms.registry import calculate_adv_and_returns

    adv, _ = calculate_adv_and_returns(
        adv_type="grpo",
        task_type="reasoning",
        rewards=batch["rewards"],
        loss_mask=batch["response_mask"].float(),
        group_size=2,
    )
    return adv.float()


def _grpo_loss(logprobs, old_logprobs, advantages, mask):
    from rlinf.algorithms.registry import policy_loss
    from rlinf.utils.utils import masked_mean

    loss, _ = policy_loss(
        task_type="reasoning",
        loss_type="actor",
        loss_agg_func=masked_mean,
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        advantages=advantages,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=3.0,
        loss_mask=mask,
    )
    return loss


def _value_loss(values, returns, prev_values, mask):
    from rlinf.algorithms.losses import compute_ppo_critic_loss
    from rlinf.utils.utils import masked_mean

    loss, _ = compute_ppo_critic_loss(
        values=values,
        returns=returns,
        prev_values=prev_values,
        value_clip=0.2,
        huber_delta=10000,
        loss_agg_func=masked_mean,
        loss_mask=mask,
    )
    return loss


def old_logprobs_of(batch, ckpt_dir: str) -> torch.Tensor:
    """'Rollout' logprobs: the HF model's, perturbed so ratios leave 1 and clipping bites."""
    with torch.no_grad():
        logits = hf_model(ckpt_dir)(input_ids=batch["input_ids"]).logits
    return _response_logprobs(logits, batch) + batch["old_logprob_noise"]


def _response_logprobs(logits: torch.Tensor, batch) -> torch.Tensor:
    lp = torch.log_softmax(logits.float(), -1).gather(-1, batch["labels"].unsqueeze(-1)).squeeze(-1)
    return lp[:, -RESP:]


def _micro(batch, i: int) -> dict[str, torch.Tensor]:
    return {k: (v[i * MICRO : (i + 1) * MICRO] if v.dim() and v.shape[0] == BATCH else v) for k, v in batch.items()}


def hf_reference(ckpt_dir: str, batch, objective: str, value_head: torch.Tensor | None = None) -> dict[str, Any]:
    """Loss and every parameter's grad of the HF model for ``objective`` ('ce', 'grpo',
    'value'), the loss taken per micro-batch and averaged, as Megatron's schedule does."""
    model = hf_model(ckpt_dir)
    model.zero_grad(set_to_none=True)
    n = BATCH // MICRO
    total = 0.0
    out: dict[str, Any] = {}
    if objective == "grpo":
        old_lp, adv = old_logprobs_of(batch, ckpt_dir), grpo_advantages(batch)
    if objective == "value":
        head = value_head.clone().requires_grad_(True)
    for i in range(n):
        mb = _micro(batch, i)
        if objective == "value":
            hidden = model.model(input_ids=mb["input_ids"]).last_hidden_state
            values = (hidden @ head.t()).squeeze(-1)
            v = values[:, -RESP - 1 : -1]
            loss = _value_loss(v, mb["returns"], mb["returns"] + mb["prev_values_noise"], mb["response_mask"])
            out.setdefault("values", []).append(values.detach())
        else:
            logits = model(input_ids=mb["input_ids"]).logits
            if objective == "ce":
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), mb["labels"].reshape(-1))
                out.setdefault("logits", []).append(logits.detach())
            else:
                sl = slice(i * MICRO, (i + 1) * MICRO)
                loss = _grpo_loss(_response_logprobs(logits, mb), old_lp[sl], adv[sl], mb["response_mask"])
        (loss / n).backward()
        total += loss.item() / n
    out["loss"] = total
    out["grads"] = {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters()
    }
    for key in ("values", "logits"):
        if key in out:
            out[key] = torch.cat(out[key])
    if objective == "value":
        out["head_grad"] = head.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return out


_REFERENCE: dict[tuple[str, str], dict[str, Any]] = {}


def reference(ckpt_dir: str, batch, objective: str, value_head: torch.Tensor | None = None) -> dict[str, Any]:
    """:func:`hf_reference`, computed once per process and objective (the batch is fixed)."""
    key = (ckpt_dir, objective)
    if key not in _REFERENCE:
        _REFERENCE[key] = hf_reference(ckpt_dir, batch, objective, value_head)
    return _REFERENCE[key]


# --------------------------------------------------------------------------------------
# RLinf's path to a Megatron model
# --------------------------------------------------------------------------------------


def rlinf_actor_cfg(ckpt_dir: str, tp: int, pp: int, vpp: int | None = None, critic: bool = False, **model_overrides):
    """An actor (or critic) config as RLinf's YAML would give, validated by RLinf itself."""
    import rlinf.config as rc
    from omegaconf import OmegaConf

    model = {
        "precision": "fp32",
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "virtual_pipeline_model_parallel_size": vpp,
        "activation": "swiglu",
        "normalization": "rmsnorm",
        "position_embedding_type": "rope",
        "add_bias_linear": False,
        "sequence_parallel": False,
        # kernels that need TE/apex are off on CPU (as on the no-TE GPU runtime)
        "masked_softmax_fusion": False,
        "bias_activation_fusion": False,
        "bias_dropout_fusion": False,
        "gradient_accumulation_fusion": False,
        "apply_rope_fusion": False,
        "persist_layer_norm": False,  # apex-only; megatron-core's torch norm asserts it is off
        "seq_length": SEQ,
        # megatron-core >= 0.17 rejects RLinf's default variable_seq_lengths with the default
        # (allgather) MoE dispatcher even for dense models; RLinf's YAMLs set this
        "moe_token_dispatcher_type": "alltoall",
        **model_overrides,
    }
    cfg = OmegaConf.create(
        {
            "spec_name": "pangu",
            "seed": SEED,
            "micro_batch_size": MICRO,
            "global_batch_size": BATCH,
            "model": model,
            "optim": {"lr": 1e-6},
            "lr_sched": {},
            "megatron": {"use_hf_ckpt": True, "ckpt_convertor": {}},
            "use_critic_model": critic,
        }
    )
    cfg = rc.validate_megatron_cfg(cfg)
    return rc.validate_model_cfg_by_hf_config(cfg, ckpt_dir)


def _set_megatron_args(cfg) -> None:
    """Megatron's global args the way RLinf's ``set_megatron_args`` makes them (its flat
    model/optim/lr_sched/megatron fields), but fp32, which RLinf's own function refuses."""
    import argparse

    from megatron.training.global_vars import _set_timers, set_args, unset_global_variables
    from omegaconf import OmegaConf
    from rlinf.utils.initialize import extract_selected_fields

    args = argparse.Namespace(**OmegaConf.to_container(extract_selected_fields(cfg), resolve=True))
    args.fp16 = args.bf16 = False
    args.params_dtype = torch.float32
    args.create_all_gather_group = False
    args.freeze_all_layers = False
    args.use_megatron_fsdp = False
    unset_global_variables()  # a previous layout's args/timers in this process
    set_args(args)
    _set_timers(args)


def build_rlinf_tc(cfg):
    from rlinf.config import build_transformer_config

    return build_transformer_config(cfg.model)


def build_rlinf_model(cfg) -> list[torch.nn.Module]:
    """Megatron model chunks for this rank, built through RLinf's provider (see module doc)."""
    from megatron.training.training import get_model
    from rlinf.config import build_transformer_config
    from rlinf.hybrid_engines.megatron.megatron_model_manager import MegatronModelManager

    _set_megatron_args(cfg)
    manager = MegatronModelManager.__new__(MegatronModelManager)
    manager._cfg = cfg
    manager.transformer_config = build_transformer_config(cfg.model)
    manager.mcore_gpt = cfg.mcore_gpt
    manager.spec_name = cfg.spec_name
    manager.is_dedicated_critic_model = cfg.get("use_critic_model", False)
    torch.manual_seed(SEED)
    return get_model(manager.model_provider_func, wrap_with_ddp=False)


def init_parallel(tp: int, pp: int, vpp: int | None) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(SEED)


def chunk_layers(chunk) -> list[int]:
    """Global (0-based) layer numbers a model chunk holds."""
    return [layer.layer_number - 1 for layer in chunk.decoder.layers]


def load_hf_weights(chunks, ckpt_dir: str, *, qkv_layout: str = "grouped", value_head: torch.Tensor | None = None) -> None:
    """Fill every chunk from the HF checkpoint via the layout table (strict).

    ``qkv_layout='ungrouped'`` is the negative control: a plain ``cat([q, k, v])`` instead of
    Pangu's per-KV-group interleaving.
    """
    from megatron.core import parallel_state as ps

    from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard

    hf = hf_state_dict(ckpt_dir)
    dims = PanguDims.from_hf_config(hf_model(ckpt_dir).config)
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    for chunk in chunks:
        sd = hf_to_megatron_shard(hf, dims, tp_rank, tp, chunk_layers(chunk), first=chunk.pre_process, last=chunk.post_process)
        if qkv_layout == "ungrouped":
            for name in list(sd):
                if ".linear_qkv." in name:
                    layer = chunk_layers(chunk)[int(name.split(".")[2])]
                    kind = name.rsplit(".", 1)[1]
                    full = torch.cat([hf[f"model.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"], 0)
                    sd[name] = full.chunk(tp, 0)[tp_rank].clone()
        if value_head is not None and chunk.post_process:
            sd["output_layer.weight"] = value_head.clone()
        missing, unexpected = chunk.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        assert not missing and not unexpected, f"load: missing {missing}, unexpected {unexpected}"


# --------------------------------------------------------------------------------------
# Running Megatron's pipeline schedule
# --------------------------------------------------------------------------------------


def _batches(batch):
    return [_micro(batch, i) for i in range(BATCH // MICRO)]


def run_schedule(chunks, batch, forward_only: bool, loss_fn=None) -> list:
    """One pass of Megatron's forward(-backward) schedule; returns the last stage's outputs.

    ``loss_fn(output, micro_batch, index)`` -> scalar; without it the schedule collects the
    raw model outputs (logits / values), one per micro-batch.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def step(data_iterator, model):
        mb = next(data_iterator)
        out = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"], attention_mask=None)
        if loss_fn is None:
            return out, None

        def loss(o):
            value = loss_fn(o, mb, int(mb["index"]))
            # clone: the schedule divides the loss by the micro-batch count in place
            return value, {"loss": value.detach().clone()}

        return out, loss

    mbs = [dict(mb, index=torch.tensor(i)) for i, mb in enumerate(_batches(batch))]
    iters = [iter(list(mbs)) for _ in chunks] if len(chunks) > 1 else iter(mbs)
    for chunk in chunks:
        chunk.zero_grad(set_to_none=True)
    return get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=iters,
        model=chunks,
        num_microbatches=len(mbs),
        seq_length=SEQ,
        micro_batch_size=MICRO,
        forward_only=forward_only,
    )


# --------------------------------------------------------------------------------------
# The checks (one launch of 4 ranks runs them all; tests read the numbers)
# --------------------------------------------------------------------------------------

#: name -> (tp, pp, vpp); the world of 4 ranks makes the rest data parallel (same batch on
#: every replica, no gradient all-reduce: grads are compared per replica).
LAYOUTS: dict[str, tuple[int, int, int | None]] = {
    "tp1": (1, 1, None),
    "tp2": (2, 1, None),
    "pp2": (1, 2, None),
    "tp2pp2": (2, 2, None),
    # Megatron's interleaved schedule needs PP > 2 (with PP = 2 both neighbours are one rank and
    # batched p2p between the same two ranks mismatches) and >= PP micro-batches.
    "pp4vpp2": (1, 4, 2),
}

#: Extra actor.model keys per layout. With VPP, megatron-core's per-step shape exchange
#: (variable_seq_lengths=True, RLinf's default) hangs over gloo p2p on CPU; all sequences here
#: have one length, so the VPP layout sends fixed shapes.
LAYOUT_OVERRIDES: dict[str, dict[str, Any]] = {"pp4vpp2": {"variable_seq_lengths": False}}


#: Gradient groups reported separately (besides "all"): the parameters Pangu adds or lays out
#: differently, so a failure names which one.
GRAD_GROUPS = {"o_proj_bias": ".linear_proj.bias", "qkv_bias": ".linear_qkv.bias", "lm_head": "output_layer.weight"}


def grad_group_diffs(pairs: Iterable[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, Diff]:
    """``(name, Megatron grad, expected grad)`` -> per group (and ``"all"``) the worst comparison
    of its parameters. Aggregated with :func:`compare.worst`: one NaN gradient makes its groups
    non-finite (a running ``max(0.0, d)`` drops it: ``max(0.0, nan)`` is 0.0)."""
    per: dict[str, list[Diff]] = {}
    for name, got, want in pairs:
        d = diff(f"grad {name}", got, want)
        per.setdefault("all", []).append(d)
        for group, suffix in GRAD_GROUPS.items():
            if name.endswith(suffix):
                per.setdefault(group, []).append(d)
    return {group: worst(ds, name=f"grad[{group}]") for group, ds in per.items()}


def worst_reported(ranks: list[dict], check: str, key: str) -> Diff:
    """``ranks[*][check][key]`` (a :class:`compare.Diff` from every rank that reports it) as one,
    NaN-safe, the rank named in the report."""
    found = [(i, r[check][key]) for i, r in enumerate(ranks) if key in r[check]]
    assert found, f"no rank reported {check}.{key}"
    return worst([d.labelled(f"rank {i}") for i, d in found], name=f"{check}.{key}")


def worst_grad(ranks: list[dict], check: str, group: str) -> Diff:
    """The worst gradient comparison of ``group`` over every rank that holds one."""
    found = [(i, r[check]["grad_diff"][group]) for i, r in enumerate(ranks) if group in r[check]["grad_diff"]]
    assert found, f"no rank holds a {group} parameter in {check}"
    return worst([d.labelled(f"rank {i}") for i, d in found], name=f"{check}.grad[{group}]")


def _is_last_stage() -> bool:
    from megatron.core import parallel_state as ps

    return ps.is_pipeline_last_stage(ignore_virtual=True)


def _gather_tp(t: torch.Tensor) -> torch.Tensor:
    from megatron.core import tensor_parallel

    return tensor_parallel.gather_from_tensor_model_parallel_region(t)


def _grad_diffs(chunks, hf_grads: dict[str, torch.Tensor], ckpt_dir: str, skip: tuple[str, ...] = ()) -> dict[str, Diff]:
    """Megatron grad vs HF grad per parameter group (:func:`grad_group_diffs`), the HF grads
    mapped to this rank's shards by the same layout table (so TP splits, QKV grouping and the
    replicated o_proj bias are all part of what is checked)."""
    from megatron.core import parallel_state as ps

    from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard

    dims = PanguDims.from_hf_config(hf_model(ckpt_dir).config)
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pairs = []
    for chunk in chunks:
        expected = hf_to_megatron_shard(hf_grads, dims, tp_rank, tp, chunk_layers(chunk), first=chunk.pre_process, last=chunk.post_process)
        for name, p in chunk.named_parameters():
            if name in skip:
                continue
            assert p.grad is not None, f"no grad for {name}"
            pairs.append((f"[global layers {chunk_layers(chunk)}] {name}", p.grad, expected[name]))
    return grad_group_diffs(pairs)


def check_layout(ckpt_dir: str, name: str, batch) -> dict[str, Any]:
    """Logits, CE loss and every gradient of one layout against HF (+ the negative control at tp2)."""
    tp, pp, vpp = LAYOUTS[name]
    cfg = rlinf_actor_cfg(ckpt_dir, tp, pp, vpp, **LAYOUT_OVERRIDES.get(name, {}))
    init_parallel(tp, pp, vpp)
    chunks = build_rlinf_model(cfg)
    load_hf_weights(chunks, ckpt_dir)
    ref = reference(ckpt_dir, batch, "ce")
    res: dict[str, Any] = {"chunks": len(chunks), "layers": [chunk_layers(c) for c in chunks]}

    outs = run_schedule(chunks, batch, forward_only=True)
    if _is_last_stage():
        res["logits_diff"] = diff("logits", torch.cat([_gather_tp(o) for o in outs]), ref["logits"])

    def ce(logits, mb, i):
        from megatron.core import tensor_parallel

        return tensor_parallel.vocab_parallel_cross_entropy(logits.float().contiguous(), mb["labels"]).mean()

    losses = run_schedule(chunks, batch, forward_only=False, loss_fn=ce)
    if _is_last_stage():
        res["loss_diff"] = diff("ce loss", torch.tensor(sum(l["loss"].item() for l in losses) / len(losses)), torch.tensor(ref["loss"]))
    res["grad_diff"] = _grad_diffs(chunks, ref["grads"], ckpt_dir)

    if name == "tp1":  # why get_specs is patched: upstream's, with process groups up, and no TE
        from rlinf.hybrid_engines.megatron import megatron_model_manager as mm

        try:
            mm.get_specs.__rlinf_pangu_original__("local_gpt", build_rlinf_tc(cfg), False)
            res["upstream_get_specs"] = "ok"
        except Exception as e:  # noqa: BLE001 - the type and message are the result
            res["upstream_get_specs"] = f"{type(e).__name__}: {e}"

    if name == "tp2":  # negative control: the same check with the un-grouped QKV layout
        load_hf_weights(chunks, ckpt_dir, qkv_layout="ungrouped")
        outs = run_schedule(chunks, batch, forward_only=True)
        res["ungrouped_logits_diff"] = diff("logits (ungrouped qkv)", torch.cat([_gather_tp(o) for o in outs]), ref["logits"])
    return res


def check_grpo(ckpt_dir: str, batch) -> dict[str, Any]:
    """One GRPO step (RLinf's policy loss on vocab-parallel logprobs) through the TP2xPP2 schedule."""
    from rlinf.utils.distributed import vocab_parallel_log_probs_from_logits

    tp, pp, vpp = LAYOUTS["tp2pp2"]
    cfg = rlinf_actor_cfg(ckpt_dir, tp, pp, vpp)
    init_parallel(tp, pp, vpp)
    chunks = build_rlinf_model(cfg)
    load_hf_weights(chunks, ckpt_dir)
    ref = reference(ckpt_dir, batch, "grpo")
    old_lp, adv = old_logprobs_of(batch, ckpt_dir), grpo_advantages(batch)

    def grpo(logits, mb, i):
        lp = vocab_parallel_log_probs_from_logits(logits.float().contiguous(), mb["labels"])[:, -RESP:]
        sl = slice(i * MICRO, (i + 1) * MICRO)
        return _grpo_loss(lp.contiguous(), old_lp[sl], adv[sl], mb["response_mask"])

    losses = run_schedule(chunks, batch, forward_only=False, loss_fn=grpo)
    res: dict[str, Any] = {"grad_diff": _grad_diffs(chunks, ref["grads"], ckpt_dir)}
    if _is_last_stage():
        res["loss"] = sum(l["loss"].item() for l in losses) / len(losses)
        res["hf_loss"] = ref["loss"]
        res["loss_diff"] = diff("loss", torch.tensor(res["loss"]), torch.tensor(ref["loss"]))
    return res


def check_critic(ckpt_dir: str, batch) -> dict[str, Any]:
    """The critic variant (value head) at TP2xPP2: values per token and one value-loss step."""
    tp, pp, vpp = LAYOUTS["tp2pp2"]
    cfg = rlinf_actor_cfg(ckpt_dir, tp, pp, vpp, critic=True)
    init_parallel(tp, pp, vpp)
    chunks = build_rlinf_model(cfg)
    hidden = hf_model(ckpt_dir).config.hidden_size
    head = 0.05 * torch.randn(1, hidden, generator=torch.Generator().manual_seed(11))
    load_hf_weights(chunks, ckpt_dir, value_head=head)
    ref = reference(ckpt_dir, batch, "value", head)
    res: dict[str, Any] = {}
    if _is_last_stage():
        res["value_head"] = type(chunks[-1].output_layer).__module__ + "." + type(chunks[-1].output_layer).__name__

    outs = run_schedule(chunks, batch, forward_only=True)
    if _is_last_stage():
        values = torch.cat(outs)  # [BATCH, SEQ, 1]: one value per token, replicated over TP
        res["values_shape"] = tuple(values.shape)
        res["values_diff"] = diff("values", values[..., 0], ref["values"])

    def value_loss(out, mb, i):
        v = out[..., 0][:, -RESP - 1 : -1]
        return _value_loss(v, mb["returns"], mb["returns"] + mb["prev_values_noise"], mb["response_mask"])

    losses = run_schedule(chunks, batch, forward_only=False, loss_fn=value_loss)
    res["grad_diff"] = _grad_diffs(chunks, ref["grads"], ckpt_dir, skip=("output_layer.weight",))
    if _is_last_stage():
        res["loss"] = sum(l["loss"].item() for l in losses) / len(losses)
        res["hf_loss"] = ref["loss"]
        res["loss_diff"] = diff("loss", torch.tensor(res["loss"]), torch.tensor(ref["loss"]))
        res["value_head_grad_diff"] = diff("value head grad", chunks[-1].output_layer.weight.grad, ref["head_grad"])
    return res


def _progress(rank: int, name: str, seconds: float) -> None:
    if rank == 0:
        import sys

        print(f"[megatron parity] {name} done in {seconds:.1f} s", file=sys.stderr, flush=True)


def all_checks(rank: int, world_size: int, ckpt_dir: str) -> dict[str, Any]:
    """Everything the parity tests read, in one launch (imports and start-up dominate on CPU)."""
    import time

    import rlinf_pangu

    rlinf_pangu.register(sglang=False)
    batch = make_batch(hf_model(ckpt_dir).config.vocab_size)
    out: dict[str, Any] = {"seconds": {}}
    for name in LAYOUTS:
        t = time.monotonic()
        out[name] = check_layout(ckpt_dir, name, batch)
        out["seconds"][name] = time.monotonic() - t
        _progress(rank, name, out["seconds"][name])
    for name, fn in (("grpo", check_grpo), ("critic", check_critic)):
        t = time.monotonic()
        out[name] = fn(ckpt_dir, batch)
        out["seconds"][name] = time.monotonic() - t
        _progress(rank, name, out["seconds"][name])
    return out

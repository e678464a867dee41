"""Shared pieces of the FSDP-actor tests (tests/test_fsdp_*.py).

Everything that runs inside a spawned gloo rank is a module-level function here (picklable). The
FSDP side is RLinf's own ``FSDPModelManager`` (the base of its ``FSDPActor``) built from the tiny
CPU example's actor config, in the explicit CPU mode (``RLINF_PANGU_DEVICE=cpu``: the same
redirects ``python -m rlinf.train`` uses there); the reference is the plain HF model, unwrapped,
in the same rank.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CPU_EXAMPLE = ROOT / "examples" / "math" / "pangu-tiny-grpo-fsdp-cpu.yaml"


def fsdp_cfg(ckpt: str | Path, overrides: list[str] = ()):
    """The tiny FSDP CPU example composed, checked and resolved the way the driver does it."""
    from rlinf_pangu import config as pc

    cfg = pc.compose(CPU_EXAMPLE, [f"rollout.model.model_path={ckpt}", *overrides])
    pc.check_known_keys(cfg)
    return pc.resolve_rlinf(cfg)


def padded_batch(lengths: list[tuple[int, int]], seed: int, width: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A batch laid out like RLinf's actor batch: prompts left-padded to ``width[0]``, responses
    right-padded to ``width[1]``; position ids count valid tokens only."""
    g = torch.Generator().manual_seed(seed)
    prompt_w, resp_w = width
    n = len(lengths)
    ids = torch.zeros(n, prompt_w + resp_w, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(lengths):
        toks = torch.randint(3, 150000, (p + r,), generator=g)
        ids[i, prompt_w - p : prompt_w + r] = toks
        mask[i, prompt_w - p : prompt_w + r] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) for every position (fp32)."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    return lp.gather(-1, ids[:, 1:, None])[..., 0]


def _valid_next(mask: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is a valid (non-pad) token of the same sequence."""
    return (mask[:, :-1] * mask[:, 1:]).bool()


def _loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token-mean negative log-likelihood of the valid tokens (a stand-in for the policy loss:
    any differentiable function of the log-probs exercises the same backward)."""
    out = model(**batch, use_cache=False)
    lp = token_logprobs(out.logits, batch["input_ids"])
    valid = _valid_next(batch["attention_mask"])
    return -(lp * valid).sum() / valid.sum()


def _full_state(mgr) -> dict[str, torch.Tensor]:
    sd = mgr.get_model_state_dict(cpu_offload=True, full_state_dict=True)
    return {k: v.detach().clone() for k, v in sd.items()}


def sync_buckets(mgr) -> list[dict[str, torch.Tensor]]:
    """What RLinf's ``FSDPActor.sync_model_to_rollout`` sends: its own bucket split of the sharded
    state dict, each DTensor gathered whole (``full_tensor``), under the HF names."""
    from torch.distributed.tensor import DTensor

    state = mgr.get_model_state_dict(cpu_offload=False, full_state_dict=False)
    buckets = mgr.divide_model_to_bucket(state)
    return [{k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in b.items()} for b in buckets]


def fsdp_parity_rank(rank: int, world: int, ckpt: str, out_dir: str, probe: list[int], overrides: list[str]) -> dict:
    """RLinf's FSDP2 actor model against the plain HF model, on this rank:

    * logits of a padded batch (every rank the same batch), and of each sequence alone;
    * one optimizer step through RLinf's own ``optimizer_step`` (its grad-norm clipping and
      AdamW), each rank training on its half of the batch, against the same step on the plain
      model over the whole batch (FSDP averages the ranks' gradients: the loss is the mean of
      the two halves' losses); clipping is made to bite (``actor.optim.clip_grad`` below the
      gradient norm);
    * rank 0 writes the sync buckets after the step and the probe sequence's log-probs before and
      after it to ``out_dir`` for the SGLang half of the test (pytest process).
    """
    os.environ["RLINF_PANGU_DEVICE"] = "cpu"
    import rlinf_pangu

    rlinf_pangu.register()
    from rlinf.hybrid_engines.fsdp.fsdp_model_manager import FSDPModelManager
    from transformers import AutoModelForCausalLM

    cfg = fsdp_cfg(ckpt, overrides)
    mgr = FSDPModelManager(cfg.actor, world, rank)
    mgr.setup_model_and_optimizer()
    ref = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="sdpa")

    out: dict = {"rank": rank, "wrapped": type(mgr.model).__name__, "attn": ref.config._attn_implementation}
    batch = padded_batch([(5, 4), (9, 2), (2, 6), (7, 7)], seed=5, width=(10, 8))
    mgr.model.eval()
    ref.eval()
    with torch.no_grad():
        got = mgr.model(**batch, use_cache=False).logits
        want = ref(**batch, use_cache=False).logits
        mask = batch["attention_mask"].bool()
        out["logits"] = {"got": got[mask], "want": want[mask]}
        alone = []
        for i in range(batch["input_ids"].shape[0]):
            row = batch["input_ids"][i][mask[i]][None]
            alone.append(mgr.model(input_ids=row, use_cache=False).logits[0])
        out["alone"] = {"got": got[mask], "want": torch.cat(alone)}
        probe_ids = torch.tensor([probe])
        lp_before = token_logprobs(mgr.model(input_ids=probe_ids, use_cache=False).logits, probe_ids)[0]

    # --- one optimizer step: RLinf's FSDP path (this rank's half) vs the plain model (whole batch)
    half = {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}
    mgr.model.train()
    mgr.optimizer.zero_grad()
    _loss(mgr.model, half).backward()
    grad_norm, _ = mgr.optimizer_step()

    ref.train()
    ref_opt = torch.optim.AdamW(
        ref.parameters(), lr=cfg.actor.optim.lr, betas=(cfg.actor.optim.adam_beta1, cfg.actor.optim.adam_beta2),
        eps=cfg.actor.optim.adam_eps, weight_decay=cfg.actor.optim.weight_decay,
    )
    _adam_warmup(ref_opt)  # RLinf's build_optimizer takes one zero-gradient step at lr 0 (its state then exists)
    halves = [{k: v[r * 2 : r * 2 + 2] for k, v in batch.items()} for r in range(world)]
    (sum(_loss(ref, h) for h in halves) / world).backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.actor.optim.clip_grad)
    ref_opt.step()
    out["grad_norm"] = {"fsdp": float(grad_norm), "ref": float(ref_norm), "clip": float(cfg.actor.optim.clip_grad)}

    after = _full_state(mgr)
    ref_sd = dict(ref.named_parameters())
    out["params_after"] = {
        "got": {k: v for k, v in after.items() if k in ref_sd},
        "want": {k: ref_sd[k].detach().clone() for k in after if k in ref_sd},
        "start": _start_values(ckpt, after),
    }
    mgr.model.eval()
    with torch.no_grad():
        lp_after = token_logprobs(mgr.model(input_ids=probe_ids, use_cache=False).logits, probe_ids)[0]
    buckets = sync_buckets(mgr)
    if rank == 0:
        torch.save({"buckets": buckets, "lp_before": lp_before, "lp_after": lp_after}, Path(out_dir) / "fsdp_sync.pt")
    out["n_buckets"] = len(buckets)
    out["bucket_names"] = sorted(k for b in buckets for k in b)
    return out


def _adam_warmup(opt: torch.optim.Optimizer) -> None:
    saved = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 0.0
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    for g, lr in zip(opt.param_groups, saved):
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)


def _start_values(ckpt: str, names) -> dict[str, torch.Tensor]:
    from rlinf_pangu.hf.checkpoint import load_tensors

    start = load_tensors(ckpt)
    return {k: start[k].float() for k in names if k in start}

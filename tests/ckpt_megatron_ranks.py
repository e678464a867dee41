"""Rank side of test_ckpt_megatron_load: the converted checkpoint goes through Megatron's own
``load_checkpoint`` (what RLinf's ``setup_model_and_optimizer`` calls with
``megatron.load = ckpt_convertor.save_path``) into the Pangu model built by RLinf's provider,
and the model's logits are compared with the HF model's.

The model is built with NaN weights first: Megatron's loader silently falls back to a
non-strict load when the names do not match (the way RLinf users end up with garbage, RLinf
#228), so "every parameter is finite and equals the converter's shard" is checked explicitly.
"""

from __future__ import annotations

from typing import Any

import torch

import megatron_ranks as mr
from compare import diff


def _load_through_megatron(hf_dir: str, mg_dir: str, tp: int, pp: int, vpp: int | None) -> tuple[list, dict[str, Any]]:
    from megatron.core import parallel_state as ps
    from megatron.training.checkpointing import load_checkpoint
    from omegaconf import open_dict

    from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard

    cfg = mr.rlinf_actor_cfg(hf_dir, tp, pp, vpp)
    with open_dict(cfg):  # what MegatronModelManager.__init__ does when use_hf_ckpt is on
        cfg.megatron.load = mg_dir
    mr.init_parallel(tp, pp, vpp)
    chunks = mr.build_rlinf_model(cfg)
    with torch.no_grad():
        for chunk in chunks:
            for p in chunk.parameters():
                p.fill_(float("nan"))
    iteration, _ = load_checkpoint(chunks, None, None, strict=True)

    hf = mr.hf_state_dict(hf_dir)
    dims = PanguDims.from_hf_config(mr.hf_model(hf_dir).config)
    tp_rank = ps.get_tensor_model_parallel_rank()
    wrong, not_loaded = [], []
    for chunk in chunks:
        want = hf_to_megatron_shard(hf, dims, tp_rank, tp, mr.chunk_layers(chunk), first=chunk.pre_process, last=chunk.post_process)
        for name, p in chunk.named_parameters():
            if not torch.isfinite(p).all():
                not_loaded.append(name)
            elif not torch.equal(p.detach(), want[name].to(p.dtype)):
                wrong.append(name)
    return chunks, {"iteration": iteration, "not_loaded": not_loaded, "wrong": wrong}


def load_and_compare(rank: int, world_size: int, hf_dirs: dict[str, str], cases: dict[str, tuple]) -> dict[str, Any]:
    """``cases``: name -> (hf key, Megatron dir, tp, pp, vpp). Returns per case the load report
    and, on the last pipeline stage, max |logits - HF logits|."""
    import time

    import rlinf_pangu

    rlinf_pangu.register(sglang=False)
    out: dict[str, Any] = {}
    for name, (hf_key, mg_dir, tp, pp, vpp) in cases.items():
        t0 = time.monotonic()
        hf_dir = hf_dirs[hf_key]
        chunks, report = _load_through_megatron(hf_dir, mg_dir, tp, pp, vpp)
        batch = mr.make_batch(mr.hf_model(hf_dir).config.vocab_size)
        ref = mr.reference(hf_dir, batch, "ce")
        outs = mr.run_schedule(chunks, batch, forward_only=True)
        if mr._is_last_stage():
            report["logits_diff"] = diff(f"{name} logits", torch.cat([mr._gather_tp(o) for o in outs]), ref["logits"])
        report["seconds"] = time.monotonic() - t0
        out[name] = report
    return out

"""Shared pieces of the GPU sync/SGLang scripts (benchmarks/sync.py, sglang_decode.py, post_sync_parity.py).

Each script runs on one GPU (``--device cuda``, the default) or, for a dry run of its logic with
tiny shapes on a CPU host, ``--device cpu``. The GPU path uses SGLang's triton attention and the
pytorch sampler (recipes/gpu/README.md); nothing CPU-specific runs there. Megatron runs as a
single process (TP1, PP1) with torch.distributed initialised for world size 1, and the weight sync
is RLinf's own ``MegatronCoreWeightReshard`` with Pangu's convertor, loaded into SGLang the way
RLinf's rollout does (presharded ``load_weights`` per bucket, cache flushed after the last one).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The numerical checks' helpers live with the tests (tests/compare.py, sync_testlib's post-sync
# judge and tests/independent_layout.py): a benchmark's verdict is the tests' verdict.
if str(REPO / "tests") not in sys.path:
    sys.path.insert(1, str(REPO / "tests"))

# SGLang's GPU runtime (tvm-ffi) must not use torch's C DLPack exchange on this stack.
os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")

import torch  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def register() -> None:
    import rlinf_pangu

    rlinf_pangu.register()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def load_hf_state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF checkpoint dir (sharded safetensors), minus RoPE buffers."""
    from rlinf_pangu.hf.checkpoint import load_tensors

    return load_tensors(ckpt)


def hf_config(ckpt: str | Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(ckpt))


# --------------------------------------------------------------------------------------
# SGLang
# --------------------------------------------------------------------------------------


def engine(model_path: str | Path, device: str, dtype: str, **overrides: Any):
    """An ``sgl.Engine`` with the settings that work on the GPU host (or CPU for a dry run)."""
    import sglang as sgl

    kw: dict[str, Any] = dict(
        model_path=str(model_path), dtype=dtype, sampling_backend="pytorch", skip_tokenizer_init=True,
        log_level="warning", random_seed=0, custom_weight_loader=[LOADER],
    )
    if device == "cuda":
        kw.update(attention_backend="triton", mem_fraction_static=0.4, disable_prefill_cuda_graph=True)
    else:  # dry run
        kw.update(device="cpu", attention_backend="torch_native", disable_cuda_graph=True,
                  mem_fraction_static=0.5, max_total_tokens=4096)
    kw.update(overrides)
    return sgl.Engine(**kw)


#: SGLang custom weight loader that loads like RLinf's rollout (rlinf_pangu.sglang_ext.weight_sync.LOADER).
LOADER = "rlinf_pangu.sglang_ext.weight_sync.load_presharded_weights"


def push_buckets(eng, buckets: Iterator[dict[str, torch.Tensor]]) -> int:
    """Load HF-named buckets into SGLang like RLinf's rollout (presharded, flush after the last)."""
    n = 0
    pending = None
    for bucket in buckets:
        if pending is not None:
            _update(eng, pending, LOADER, flush=False)
            n += 1
        pending = bucket
    if pending is not None:
        _update(eng, pending, LOADER, flush=True)
        n += 1
    return n


def _update(eng, bucket: dict[str, torch.Tensor], loader: str, flush: bool) -> None:
    ok, msg = eng.update_weights_from_tensor(list(bucket.items()), load_format=loader, flush_cache=flush)[:2]
    if not ok:
        raise RuntimeError(f"SGLang refused the weight update: {msg}")


def sglang_logprobs(eng, seqs: list[list[int]]) -> list[torch.Tensor]:
    """SGLang's log-probabilities of ``seq[1:]`` for each sequence (prefill with logprobs)."""
    outs = eng.generate(input_ids=seqs, sampling_params={"max_new_tokens": 1, "temperature": 0},
                        return_logprob=True, logprob_start_len=0)
    return [torch.tensor([v for v, _, _ in o["meta_info"]["input_token_logprobs"][1:]], dtype=torch.float64) for o in outs]


# --------------------------------------------------------------------------------------
# Megatron (one process, TP1/PP1)
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_dry_run_redirects() -> None:
    """Dry run on a CPU host only: megatron-core allocates on torch.cuda.current_device() and
    forks the CUDA RNG. Never reached with --device cuda."""
    from megatron.core.tensor_parallel import random as mcore_random
    from torch.overrides import TorchFunctionMode

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda s, *a, **k: torch.set_rng_state(s)
    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda s, *a, **k: torch.set_rng_state(s)

    class CudaToCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if "cuda" in str(kwargs.get("device", "")):
                kwargs["device"] = "cpu"
            if func is torch.Tensor.cuda:
                return args[0]
            return func(*args, **kwargs)

    CudaToCpu().__enter__()


def init_megatron(device: str) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if device == "cpu":
        _cpu_dry_run_redirects()
    else:
        torch.cuda.set_device(0)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    if device == "cpu":
        _gloo_groups()
    ps.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)


def _gloo_groups() -> None:
    """Dry run only: RLinf's reshard asks for NCCL subgroups."""
    from megatron.core import parallel_state as ps

    original = ps.create_group
    ps.create_group = lambda ranks=None, timeout=None, backend=None, *a, **k: original(ranks, timeout, "gloo", *a, **k)


def build_megatron(hf_cfg, dtype: torch.dtype, device: str, hf_state: dict[str, torch.Tensor] | None = None):
    """Pangu GPTModel (local spec, TP1) on ``device``; with ``hf_state`` it holds those weights."""
    from megatron.core.models.gpt import GPTModel

    from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard
    from rlinf_pangu.megatron.config import gpt_model_kwargs, pangu_transformer_config
    from rlinf_pangu.megatron.spec import get_pangu_spec

    tc = pangu_transformer_config(hf_cfg, tp=1, pp=1, dtype=dtype, use_cpu_initialization=(device == "cpu"))
    model = GPTModel(config=tc, transformer_layer_spec=get_pangu_spec("pangu_local", tc, False), **gpt_model_kwargs(hf_cfg))
    model = model.to(device)
    if hf_state is not None:
        shard = hf_to_megatron_shard(hf_state, PanguDims.from_hf_config(hf_cfg), 0, 1)
        missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in shard.items()}, strict=False)
        missing = [k for k in missing if "_extra_state" not in k]
        if missing or unexpected:
            raise RuntimeError(f"Megatron load: missing {missing}, unexpected {unexpected}")
    return model, tc


#: ``--transforms`` of the sync benchmarks: what Pangu ships, the same without packing, RLinf's own.
TRANSFORMS = ("pangu", "pangu-tensors", "rlinf")


def rlinf_sync_buckets(model, tc, rollout_tp: int = 1, transforms: str = "pangu", source: "Tp2Source | None" = None,
                       **reshard_kw: Any) -> Iterator[dict[str, torch.Tensor]]:
    """RLinf's sync on this process: divide_model_to_bucket, then gather_and_reshard_model
    (reshard + Pangu's convertor) per bucket, yielding what RLinf would send.

    ``"pangu"`` is what Pangu ships: the splits as views, each tensor copied once into one packed
    buffer per bucket (``rlinf_pangu.packed_bucket``; SGLang's Pangu class unpacks it), behind the
    TP reshard that does not copy (the pairing the actor's rollout-sync setup makes).
    ``"pangu-tensors"``: the same copy into a new tensor per HF name (one CUDA IPC handle each).
    ``"rlinf"`` is the comparison point: the same rules executed by RLinf's own ``TransformFunc``s
    (``BaseConvertor.convert``) behind the copying TP reshard, i.e. a tensor copied two or three times.
    Each convertor is built explicitly, so the variant does not depend on the registry's default.

    ``source``: a TP2-sharded actor on this one GPU (:class:`Tp2Source`, whose rank-0 shards are
    bucketed as RLinf buckets a TP2 rank's model, ``tc`` at TP 2); its TP gather is
    :func:`local_tp_gather`, the same copies as the all-gather, without a second GPU.
    """
    import functools

    from rlinf.utils.convertor.utils import BaseConvertor
    from rlinf.utils.resharding.mcore_weight_reshard import MegatronCoreWeightReshard
    from rlinf.utils.resharding.reshard_config import ReshardConfig

    from resharding.convertor import PanguConvertor
    from resharding.reshard import tp_reshard_fn_pangu

    if transforms not in TRANSFORMS:
        raise ValueError(f"transforms must be one of {TRANSFORMS}, not {transforms!r}")
    copy = transforms == "rlinf"  # RLinf's own reshard copies; Pangu's convertor makes the one copy
    if source is None:
        reshard_kw["tp_reshard_fn"] = functools.partial(tp_reshard_fn_pangu, copy=copy)
    else:
        reshard_kw["tp_reshard_fn"] = functools.partial(local_tp_gather, peer=source.peer, copy=copy)
    holder: dict[str, Any] = {}
    reshard_kw["convert_fn"] = lambda sd: holder["convert"](sd)
    cfg = ReshardConfig(model_type="pangu", model_config=tc, reshard_tp_size=rollout_tp, **reshard_kw)
    reshard = MegatronCoreWeightReshard(cfg)
    if source is not None:  # the one "TP subgroup" of a TP2 source on a world of one process
        reshard.tp_subgroups.setdefault(tuple(range(reshard.merge_factor)), None)
    convertor = PanguConvertor(cfg, strict=True, packed=transforms == "pangu")
    holder["convert"] = functools.partial(BaseConvertor.convert, convertor) if transforms == "rlinf" else convertor.convert
    for bucket in reshard.divide_model_to_bucket([model if source is None else source]):
        yield reshard.gather_and_reshard_model(bucket, 0)


class Tp2Source:
    """A TP2 actor's weights as RLinf's reshard receives them, both shards resident on one GPU.

    RLinf's sync on a TP2 actor buckets each rank's own shards and all-gathers every split tensor
    over the two ranks before the convertor. Here both ranks' shards are copies on the one GPU:
    rank 0's are what RLinf buckets (:meth:`state_dict`), rank 1's are what the gather fetches
    (``peer``); replicated tensors (norms, the o_proj bias) are the model's own, as each rank holds
    them. :meth:`refresh` re-splits after the weights change (before each timed round, untimed).
    """

    def __init__(self, model, tc):
        import copy

        self.model = model
        self.tc = copy.copy(tc)
        self.tc.tensor_model_parallel_size = 2
        self.shards: list[dict[str, torch.Tensor]] = [{}, {}]
        self.refresh()

    def refresh(self) -> None:
        from rlinf_pangu.layout import mapping_for_megatron_name, split_tp

        with torch.no_grad():
            for name, t in self.model.state_dict().items():
                if "_extra_state" in name:
                    continue
                if mapping_for_megatron_name(name)[0].tp_dim is None:
                    self.shards[0][name] = self.shards[1][name] = t
                    continue
                for r, part in enumerate(split_tp(name, t, 2)):
                    held = self.shards[r].get(name)
                    if held is None:
                        self.shards[r][name] = part.contiguous().clone()
                    else:
                        held.copy_(part)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shards[0])

    @property
    def peer(self) -> dict[str, torch.Tensor]:
        return self.shards[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for r in (0, 1) for n, t in self.shards[r].items()
                   if r == 0 or t is not self.shards[0][n])


def local_tp_gather(state: dict[str, torch.Tensor], merge_factor: int, tp_group, *, peer: dict[str, torch.Tensor],
                    copy: bool) -> dict[str, torch.Tensor]:
    """``resharding.reshard.tp_reshard_fn_pangu`` for a :class:`Tp2Source` to rollout TP 1, with the
    same copies: a split tensor is gathered into one new buffer (the all-gather's output; along dim
    1 then one more copy, as ``_gather_cat`` transposes), a replicated one is passed on (cloned
    when ``copy``, as RLinf's copying reshard does)."""
    from rlinf_pangu.layout import mapping_for_megatron_name

    assert merge_factor == 2, merge_factor
    out: dict[str, torch.Tensor] = {}
    for name, mine in state.items():
        dim = mapping_for_megatron_name(name)[0].tp_dim
        if dim is None:
            out[name] = mine.clone() if copy else mine
            continue
        src = mine.contiguous()
        buf = torch.empty((2 * src.shape[0], *src.shape[1:]), dtype=src.dtype, device=src.device)
        buf[: src.shape[0]].copy_(src)
        buf[src.shape[0]:].copy_(peer[name])
        out[name] = buf if dim == 0 else torch.cat(buf.chunk(2, 0), dim)
    return out


def fingerprint(buckets: Iterator[dict[str, torch.Tensor]]) -> dict[str, tuple[int, int]]:
    """Per HF tensor (packed buckets unpacked): (element count, an exact integer checksum of its
    bits), to compare two syncs of a 7B without holding either."""
    from rlinf_pangu.packed_bucket import expand

    out: dict[str, tuple[int, int]] = {}
    for bucket in buckets:
        for name, t in expand(bucket.items()):
            bits = t.contiguous().view(-1).view(torch.uint8)
            total, chunk = 0, 2**26
            for start in range(0, bits.numel(), chunk):
                part = bits[start : start + chunk].to(torch.int64)
                weights = torch.arange(start, start + part.numel(), device=part.device, dtype=torch.int64) % 65521 + 1
                total += int((part * weights).sum())
            out[name] = (t.numel(), total)
        del bucket
    return out


def megatron_logprobs(model, seqs: list[list[int]], device: str, fp32_lm_head: bool = False) -> list[torch.Tensor]:
    """Megatron's log-probabilities of ``seq[1:]`` (fp32 log-softmax of its logits).

    ``fp32_lm_head``: logits from the final (normed) hidden states and the output layer in fp32,
    as SGLang's ``enable_fp32_lm_head`` computes them; otherwise the output layer's own dtype.
    """
    captured: list[torch.Tensor] = []
    hook = model.decoder.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
    out = []
    try:
        with torch.no_grad():
            for s in seqs:
                ids = torch.tensor([s], device=device)
                pos = torch.arange(len(s), device=device).unsqueeze(0)
                captured.clear()
                logits = model(input_ids=ids, position_ids=pos, attention_mask=None)[0].float()
                if fp32_lm_head:  # decoder output is [seq, batch, hidden], final norm applied
                    head = model.output_layer.weight  # None when tied: the embedding is the head
                    if head is None:
                        head = model.shared_embedding_or_output_weight()
                    logits = captured[-1][:, 0].float() @ head.float().T
                lp = torch.log_softmax(logits, -1)[:-1].gather(1, ids[0, 1:, None])[:, 0]
                out.append(lp.double().cpu())
    finally:
        hook.remove()
    return out


def adam_step(model, seqs: list[list[int]], lr: float, device: str) -> float:
    """One optimizer step on Megatron's own per-token loss over ``seqs``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    total = 0.0
    for s in seqs:
        ids = torch.tensor([s[:-1]], device=device)
        labels = torch.tensor([s[1:]], device=device)
        pos = torch.arange(ids.shape[1], device=device).unsqueeze(0)
        loss = model(input_ids=ids, position_ids=pos, attention_mask=None, labels=labels).float().mean() / len(seqs)
        loss.backward()
        total += float(loss)
    opt.step()
    opt.zero_grad(set_to_none=True)
    del opt
    return total


def logprob_gap(name: str, a: list[torch.Tensor], b: list[torch.Tensor]):
    """``a`` against ``b`` per token (:func:`compare.logprob_gap`: worst token, mean, mean exp|d|;
    a non-finite log-prob makes it non-finite)."""
    from compare import logprob_gap as gap

    return gap(name, list(a), list(b))


def push_reference(eng, model, hf_cfg, device: str, per_call_bytes: int = 2**30) -> None:
    """The actor's current weights into SGLang by a path that shares nothing with the sync: the
    HF tensors of tests/independent_layout.py (merged element by element from the Megatron state),
    pushed by HF name a few layers at a time (a 7B's second copy never sits whole on the GPU)."""
    import independent_layout as I

    from rlinf_pangu.sglang_ext.weight_sync import LOADER

    shape = I.Shape.of(hf_cfg.to_dict())
    state = {k: v.detach() for k, v in model.state_dict().items() if "_extra_state" not in k}
    groups: list[dict[str, torch.Tensor]] = [{k: v for k, v in state.items() if not k.startswith("decoder.layers.")}]
    for i in range(shape.layers):
        prefix = f"decoder.layers.{i}."
        groups.append({"decoder.layers.0." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    pending: dict[str, torch.Tensor] = {}
    for gi, group in enumerate(groups):
        pending.update(I.megatron_to_hf([group], shape, layer_offset=gi - 1))
        last = gi == len(groups) - 1
        if last or sum(t.numel() * t.element_size() for t in pending.values()) >= per_call_bytes:
            _update(eng, {k: v.to(device) for k, v in pending.items()}, LOADER, flush=last)
            pending = {}


def random_tokens(n_seqs: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n_seqs, length), generator=g).tolist()


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def imported_distributions() -> list[str]:
    """Distributions whose top-level modules this process imported (what the GPU host must have)."""
    import importlib.metadata as md

    pkgs = md.packages_distributions()
    found = set()
    for name, mod in list(sys.modules.items()):
        if "." in name or not (getattr(mod, "__file__", None) or getattr(mod, "__path__", None)):
            continue  # builtins; namespace packages (megatron) have a __path__ only
        for dist in pkgs.get(name, []):
            with contextlib.suppress(md.PackageNotFoundError):
                found.add(f"{dist}=={md.version(dist)}")
    return sorted(found, key=str.lower)


def write_result(out_dir: str | Path, name: str, result: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "device": _device_name(), "torch": torch.__version__, "imported": imported_distributions()}
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    log(f"wrote {path}")
    return path


def _device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"

"""GPU with Transformer Engine: Pangu's TE spec against the HF reference and the local spec.

What RLinf users run is the TE path (``actor.megatron.transformer_impl: transformer_engine``,
RLinf's default): TE's fused norm+linear, cuDNN attention, and RLinf's packed (THD) forward. Here
both specs are built the way RLinf builds them (``tests/megatron_ranks.py``: RLinf's validated
config and its ``model_provider_func``, the YAML's transformer_impl in Megatron's args), loaded
with the same weights from one factory checkpoint (fp32, official 1B shapes, 3 layers, biases and
norm weights away from 0/1), and run in bf16 on one GPU rank. The reference is transformers'
model in fp32 (TF32 off) on the same inputs.

What must hold, each judged on the worst element, non-finite values failing:

* logits, the CE loss and *every* parameter gradient of the TE model are as close to the fp32
  reference as the local spec's, within K (below): ``|TE - HF| <= K * max(|local - HF|, floor)``
  per tensor, both spreads measured here on the same inputs;
* the o_proj bias is applied exactly once: TE's row-parallel ``linear_proj`` returns it unadded
  (megatron adds it once, after the TP all-reduce: adding it inside the GEMM is what would count
  it once per TP rank), the model matches HF (which adds it once) and a model with the bias
  doubled does not (negative control); its gradient is there and matches HF's;
* packed and unpacked forwards agree: RLinf's own ``custom_forward`` (which packs the batch into
  THD with ``preprocess_packed_seqs``) on a batch of mixed lengths, left and right padded as
  RLinf's are, against each sequence run alone without padding; a pack whose ``cu_seqlens`` merge
  the sequences (negative control) does not;
* RLinf builds TE attention for ``transformer_impl: transformer_engine`` and local attention for
  ``local``, packs only the TE model, and logs the choice.

K = 3. Both bf16 paths start from the same bf16 weights, so the weights' own rounding is common
to both; what differs is where each rounds activations: TE fuses RMSNorm into the following GEMM,
keeps attention scores in fp32 inside cuDNN's fused kernel (the local path writes them to bf16
before its fp32 softmax), multiplies bf16 probabilities with V, and recomputes attention in its
backward, all with other GEMM tilings. Those are errors of the same size as the local path's,
smaller in attention; but the *worst* element of two such error fields differs between tensors
by up to ~2x by chance (the max of ~1e5-1e8 samples of a similar spread). K = 3 covers that, and
stays an order of magnitude below what the bugs this guards against do (a bias twice, a norm
weight lost, RoPE or the causal mask wrong move logits by 0.1-1 against a bf16 spread of ~1e-2;
the bias control checks that in the same run). ``floor = 2**-9 * max|reference|`` (half a bf16
step of the reference's largest value) keeps a tensor that the local path happens to reproduce
almost exactly from demanding more than bf16 can store. Packed vs unpacked is held to the local
path's logits spread (K = 1): it is the same model and weights, only the attention kernel's layout
differs.

Writes ``te_parity.json`` (device, commit, TE version, every number) to ``$RLINF_PANGU_GPU_OUT``
when set. Without a GPU or without transformer_engine it skips. ``python tests/test_te_gpu.py
--dry-run`` runs the same rank code on the CPU with the local spec in both slots (bf16, tiny
shapes, packing skipped): a check of the plumbing before device time is spent, not of TE.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from compare import Diff, check, diff, worst

REPO = Path(__file__).resolve().parents[1]
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not HAVE_TE, reason="needs Transformer Engine (scripts/build_wheelhouse.py carries it)"),
]

K = 3.0
PACK_K = 1.0
#: the parity batch: 4 full-length sequences (R.BATCH rows, what megatron_ranks' HF reference takes)
SEQ = 256
LAYERS = 3
#: the packed batch, RLinf's layout: (left padding, valid tokens, right padding) per row of MIXED_WIDTH
MIXED_WIDTH = 256
MIXED = [(0, 256, 0), (40, 150, 66), (100, 77, 79), (0, 200, 56)]


# --------------------------------------------------------------------------------------
# Rank side (one NCCL rank on GPU 0; or a gloo rank on the CPU for --dry-run)
# --------------------------------------------------------------------------------------


def _te_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Local-spec names -> TE-spec names (TE fuses the norms into the next linear: layout.NORM_ALIASES)."""
    from rlinf_pangu.layout import NORM_ALIASES

    pats = [(re.compile(re.escape(local).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$"), te) for local, te in NORM_ALIASES.items()]
    out = {}
    for name, t in sd.items():
        for pat, te in pats:
            m = pat.match(name)
            if m:
                name = te.format(i=m.group("i"))
                break
        out[name] = t
    return out


def _expected(model, tensors: dict[str, torch.Tensor], dims, te: bool) -> dict[str, torch.Tensor]:
    """HF-named tensors (weights or grads) -> this model's Megatron names, via the layout table."""
    from rlinf_pangu.layout import hf_to_megatron_shard

    import megatron_ranks as R

    sd = hf_to_megatron_shard(tensors, dims, 0, 1, R.chunk_layers(model), first=True, last=True)
    return _te_names(sd) if te else sd


def _load(model, ckpt: str, dims, te: bool) -> None:
    import megatron_ranks as R

    sd = _expected(model, R.hf_state_dict(ckpt), dims, te)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    assert not missing and not unexpected, f"load: missing {missing}, unexpected {unexpected}"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _build(ckpt: str, impl: str, dims, dry_run: bool):
    """A Pangu model as RLinf builds it, ``impl`` in Megatron's args, the checkpoint's weights."""
    from omegaconf import open_dict

    import megatron_ranks as R
    from rlinf_pangu.megatron.spec import packs_sequences

    cfg = R.rlinf_actor_cfg(ckpt, 1, 1, precision="bf16", seq_length=SEQ)
    with open_dict(cfg):
        cfg.megatron.transformer_impl = impl
    model = R.build_rlinf_model(cfg)[0]
    te = packs_sequences(model)
    _load(model, ckpt, dims, te)
    return model, te


def _fwd_bwd(model, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    from megatron.core import tensor_parallel

    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None)
    loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float().contiguous(), batch["labels"]).mean()
    loss.backward()
    grads = {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    return logits.detach().float(), loss.detach().float(), grads


def _spreads(name: str, got: dict, ref: torch.Tensor) -> dict:
    """``got`` = {"local": tensor, "te": tensor}: both against the reference and each other."""
    return {
        "local_vs_hf": diff(f"{name} local vs HF", got["local"], ref),
        "te_vs_hf": diff(f"{name} TE vs HF", got["te"], ref),
        "te_vs_local": diff(f"{name} TE vs local", got["te"], got["local"]),
        "ref_absmax": float(ref.detach().abs().max()) if ref.numel() else 0.0,
    }


def _mixed_batch(vocab: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(17)
    ids = torch.randint(3, vocab, (len(MIXED), MIXED_WIDTH), generator=g)
    mask = torch.zeros(len(MIXED), MIXED_WIDTH, dtype=torch.bool)
    for i, (left, n, _right) in enumerate(MIXED):
        mask[i, left : left + n] = True
    ids = ids.masked_fill(~mask, 0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # as RLinf builds them for a left-padded batch
    return ids.to(device), mask.to(device), pos.to(device)


def _packed_checks(model, vocab: int, device) -> dict:
    """RLinf's packed forward vs each sequence alone, and the merged-pack control."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from rlinf.hybrid_engines.megatron.megatron_model_manager import MegatronModelManager
    from rlinf.hybrid_engines.megatron.utils import preprocess_packed_seqs

    ids, mask, pos = _mixed_batch(vocab, device)
    forward = MegatronModelManager.custom_forward  # RLinf's, through the packing patch
    upstream = getattr(forward, "__rlinf_pangu_original__", forward)
    out: dict = {}
    with torch.no_grad():
        packed = forward(model, ids, mask, pos, sequence_parallel=False).float()
        out["patch_passes_te_through"] = bool(torch.equal(packed, upstream(model, ids, mask, pos, sequence_parallel=False).float()))
        alone = []
        for i in range(len(MIXED)):
            sel = mask[i]
            n = int(sel.sum())
            one = model(input_ids=ids[i : i + 1, sel], position_ids=torch.arange(n, device=device)[None], attention_mask=None)
            alone.append(one[0].float())
        out["packed_vs_alone"] = worst([diff(f"row {i} packed vs alone", packed[i, mask[i]], a) for i, a in enumerate(alone)],
                                       name="logits, RLinf's packed forward vs each sequence alone")
        # control: the same pack, its cu_seqlens merged into one sequence (tokens see other sequences)
        packed_ids, params = preprocess_packed_seqs(ids, mask, pre_process=True)
        total = packed_ids.shape[1]
        cu = torch.tensor([0, total], dtype=torch.int32, device=device)
        merged = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                                 cu_seqlens_kv_padded=cu, max_seqlen_q=total, max_seqlen_kv=total)
        wrong = model(input_ids=packed_ids, position_ids=None, attention_mask=None, packed_seq_params=merged)[0].float()
        bounds = params.cu_seqlens_q.tolist()
        out["merged_pack_control"] = worst([diff(f"row {i} merged pack vs alone", wrong[bounds[i] : bounds[i + 1]], a)
                                            for i, a in enumerate(alone)], name="logits, one merged pack vs alone")
        out["packed_tokens"] = total
    return out


def _bias_checks(te_model, hf_logits: torch.Tensor, batch) -> dict:
    """TE's linear_proj returns its bias unadded; doubling it is visible (negative control)."""
    import torch.nn.functional as F

    out: dict = {"layers": []}
    with torch.no_grad():
        for layer in te_model.decoder.layers:
            proj = layer.self_attention.linear_proj
            x = torch.randn(16, 2, proj.weight.shape[1], dtype=proj.weight.dtype, device=proj.weight.device,
                            generator=torch.Generator(device=proj.weight.device).manual_seed(5))
            y, bias = proj(x)
            plain = F.linear(x, proj.weight)
            out["layers"].append({
                "class": type(proj).__name__,
                "returns_its_bias": bias is not None and bool(torch.equal(bias, proj.bias)),
                "output_vs_x_at_w": diff("linear_proj(x) vs x @ W^T", y, plain),
                "output_vs_x_at_w_plus_b": diff("linear_proj(x) vs x @ W^T + b", y, plain + proj.bias),
                "bias_absmax": float(proj.bias.abs().max()),
                "out_absmax": float(plain.abs().max()),
            })
        for layer in te_model.decoder.layers:
            layer.self_attention.linear_proj.bias.mul_(2)  # exact in bf16, undone below
        doubled = te_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None).float()
        for layer in te_model.decoder.layers:
            layer.self_attention.linear_proj.bias.div_(2)
        out["bias_doubled_vs_hf"] = diff("logits with the o_proj bias doubled vs HF", doubled, hf_logits)
    return out


def te_parity_rank(rank: int, world_size: int, ckpt: str, dry_run: bool = False) -> dict:
    import megatron_ranks as R
    import rlinf_pangu
    from rlinf_pangu.layout import PanguDims
    from rlinf_pangu.megatron.spec import packs_sequences

    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    rlinf_pangu.register(sglang=False)
    lines = _Lines()
    spec_log = logging.getLogger("rlinf_pangu.megatron.spec")
    spec_log.setLevel(logging.INFO)
    spec_log.addHandler(lines)
    device = torch.device("cpu") if dry_run else torch.device("cuda", torch.cuda.current_device())
    seq = 32 if dry_run else SEQ

    hf = R.hf_model(ckpt).to(device)
    dims = PanguDims.from_hf_config(hf.config)
    vocab = hf.config.vocab_size
    g = torch.Generator().manual_seed(7)
    batch = {
        "input_ids": torch.randint(3, vocab, (R.BATCH, seq), generator=g).to(device),
        "labels": torch.randint(3, vocab, (R.BATCH, seq), generator=g).to(device),
        "position_ids": torch.arange(seq, device=device).unsqueeze(0).expand(R.BATCH, seq).contiguous(),
    }
    ref = R.hf_reference(ckpt, batch, "ce")  # fp32; per-sequence means averaged = the batch mean here
    R.init_parallel(1, 1, None)
    res: dict = {"dry_run": dry_run, "seq": seq, "batch": R.BATCH, "layers": dims.num_hidden_layers}
    models, got = {}, {"logits": {}, "loss": {}, "grads": {}}
    for slot, impl in (("local", "local"), ("te", "local" if dry_run else "transformer_engine")):
        model, te = _build(ckpt, impl, dims, dry_run)
        models[slot] = model
        res[f"{slot}_attention"] = type(model.decoder.layers[0].self_attention.core_attention).__name__
        res[f"{slot}_packs"] = te
        logits, loss, grads = _fwd_bwd(model, batch)
        got["logits"][slot], got["loss"][slot], got["grads"][slot] = logits, loss, grads
        res.setdefault("missing_grads", {})[slot] = sorted(n for n, g_ in grads.items() if g_ is None)
        res[f"{slot}_expected_grads"] = _expected(model, ref["grads"], dims, te)  # moved to CPU below
    res["spec_log"] = lines.lines
    res["logits"] = _spreads("logits", got["logits"], ref["logits"])
    res["loss"] = _spreads("loss", got["loss"], torch.tensor(ref["loss"], device=device))
    res["loss_values"] = {"hf": ref["loss"], **{k: float(v) for k, v in got["loss"].items()}}
    grads = {}
    local_expected, te_expected = res.pop("local_expected_grads"), res.pop("te_expected_grads")
    for name, local_grad in got["grads"]["local"].items():
        te_name = next(iter(_te_names({name: None})))  # the same parameter in the TE model
        want, te_grad = local_expected[name], got["grads"]["te"].get(te_name)
        if local_grad is None or te_grad is None:
            continue  # reported in missing_grads
        grads[name] = _spreads(f"grad {name}", {"local": local_grad, "te": te_grad}, want)
        assert torch.equal(te_expected[te_name], want)  # one HF gradient, two spellings
    res["grads"] = grads
    res["bias"] = _bias_checks(models["te"], ref["logits"], batch)
    res["o_proj_bias_grad_absmax"] = {
        n: float(g_.abs().max()) for n, g_ in got["grads"]["te"].items() if n.endswith("linear_proj.bias") and g_ is not None
    }
    if packs_sequences(models["te"]):
        res["packed"] = _packed_checks(models["te"], vocab, device)
    else:
        res["packed"] = {"skipped": "the model has no TE attention (dry run)"}
    sys.path.insert(0, str(REPO / "benchmarks"))
    from megatron_step import provenance

    res["provenance"] = provenance()  # here TE is imported: the cuDNN it loaded is known
    return res


# --------------------------------------------------------------------------------------
# Test side
# --------------------------------------------------------------------------------------


def make_parity_checkpoint(root: Path) -> Path:
    from rlinf_pangu.make_checkpoint import make_checkpoint

    return make_checkpoint(root / "pangu-1b-3l", preset_name="1b", dtype="fp32", seed=3, num_hidden_layers=LAYERS,
                           overwrite=True)


def tolerance(spread: dict, k: float = K) -> float:
    local = spread["local_vs_hf"]
    floor = 2.0**-9 * spread["ref_absmax"]
    return k * max(local.max_abs, floor) if local.finite else float("nan")


def judged(spread: dict, k: float = K) -> dict:
    """The JSON record of one tensor: both spreads, the tolerance and the verdict."""
    tol = tolerance(spread, k)
    te = spread["te_vs_hf"]
    ok = te.finite and spread["local_vs_hf"].finite and te.max_abs <= tol
    return {"local_vs_hf": spread["local_vs_hf"].as_dict(), "te_vs_hf": te.as_dict(),
            "te_vs_local": spread["te_vs_local"].as_dict(), "ref_absmax": spread["ref_absmax"], "k": k,
            "tolerance": tol, "te_over_local": te.max_abs / max(spread["local_vs_hf"].max_abs, 1e-30), "pass": ok}


def write_record(res: dict, out_dir: str | None) -> Path | None:
    if not out_dir:
        return None
    sys.path.insert(0, str(REPO / "benchmarks"))
    from megatron_step import provenance

    grads = {n: judged(s) for n, s in res["grads"].items()}
    record = {
        "what": "Pangu TE spec vs HF (fp32) and vs the local spec, bf16, one GPU (tests/test_te_gpu.py)",
        **provenance(), **res.get("provenance", {}),
        "k": K, "pack_k": PACK_K, "seq": res["seq"], "batch": res["batch"], "layers": res["layers"],
        "attention": {"local": res["local_attention"], "te": res["te_attention"]},
        "packs": {"local": res["local_packs"], "te": res["te_packs"]},
        "spec_log": res["spec_log"],
        "logits": judged(res["logits"]), "loss": judged(res["loss"]), "loss_values": res["loss_values"],
        "grads_worst_te_over_local": max((g["te_over_local"] for g in grads.values()), default=None),
        "grads_all_pass": all(g["pass"] for g in grads.values()),
        "grads": grads,
        "bias": {"layers": [{k: (v.as_dict() if isinstance(v, Diff) else v) for k, v in layer.items()}
                            for layer in res["bias"]["layers"]],
                 "bias_doubled_vs_hf": res["bias"]["bias_doubled_vs_hf"].as_dict(),
                 "o_proj_bias_grad_absmax": res["o_proj_bias_grad_absmax"]},
        "packed": {k: (v.as_dict() if isinstance(v, Diff) else v) for k, v in res["packed"].items()},
        "missing_grads": res["missing_grads"],
    }
    path = Path(out_dir) / "te_parity.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))
    return path


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    from harness import run_ranks

    ckpt = make_parity_checkpoint(tmp_path_factory.mktemp("te-parity"))
    res = run_ranks(te_parity_rank, 1, str(ckpt), gpus=True, timeout=1500)[0]
    path = write_record(res, os.environ.get("RLINF_PANGU_GPU_OUT"))
    for key in ("logits", "loss"):
        print(f"[te parity] {key}: local {res[key]['local_vs_hf']}; TE {res[key]['te_vs_hf']}; tol {tolerance(res[key]):.3e}")
    print(f"[te parity] packed: {res['packed']}; record: {path}")
    return res


def test_rlinf_builds_te_attention_for_transformer_engine_and_local_for_local(result):
    assert result["te_attention"] == "TEDotProductAttention" and result["te_packs"] is True
    assert result["local_attention"] == "DotProductAttention" and result["local_packs"] is False
    assert any(line.startswith("Pangu Megatron spec: Transformer Engine, sequences packed") for line in result["spec_log"])
    assert any(line.startswith("Pangu Megatron spec: local") for line in result["spec_log"])


def test_the_local_spread_is_bf16_noise_not_a_broken_reference(result):
    """The yardstick itself: local bf16 within a few percent of the fp32 logits' scale (a wrong
    reference or load would be O(1)); the fp32 CPU parity tests pin the local spec exactly."""
    d = result["logits"]["local_vs_hf"]
    check(d, 0.05 * result["logits"]["ref_absmax"])


def test_te_logits_within_k_times_the_local_spread(result):
    check(result["logits"]["te_vs_hf"], tolerance(result["logits"]))


def test_te_loss_within_k_times_the_local_spread(result):
    check(result["loss"]["te_vs_hf"], tolerance(result["loss"]))


def test_every_te_gradient_within_k_times_the_local_spread(result):
    assert not result["missing_grads"]["te"] and not result["missing_grads"]["local"], result["missing_grads"]
    assert result["grads"], "no gradient compared"
    failures = [f"{n}: {s['te_vs_hf']} > tol {tolerance(s):.3e} (local {s['local_vs_hf'].max_abs:.3e})"
                for n, s in result["grads"].items()
                if not (s["te_vs_hf"].finite and s["local_vs_hf"].finite and s["te_vs_hf"].max_abs <= tolerance(s))]
    assert not failures, "\n".join(failures)


def test_te_linear_proj_returns_its_bias_for_megatron_to_add_once(result):
    for i, layer in enumerate(result["bias"]["layers"]):
        assert layer["returns_its_bias"], f"layer {i}: {layer['class']} did not return its bias"
        # the same bf16 GEMM without a bias: within one bf16 step (2**-7 relative) of the output's
        # largest value (another GEMM algorithm may round differently); with the bias inside, the
        # difference would be the bias itself, >= 0.5 of its largest value (checked next)
        check(layer["output_vs_x_at_w"], 2.0**-7 * layer["out_absmax"])
        assert layer["output_vs_x_at_w_plus_b"].max_abs > 0.5 * layer["bias_absmax"], layer


def test_o_proj_bias_gradient_is_there_and_matches_hf(result):
    bias_grads = {n: s for n, s in result["grads"].items() if n.endswith("linear_proj.bias")}
    assert len(bias_grads) == result["layers"], sorted(bias_grads)
    for n, s in bias_grads.items():
        check(s["te_vs_hf"], tolerance(s))
        assert s["ref_absmax"] > 0
    assert all(v > 0 for v in result["o_proj_bias_grad_absmax"].values()), result["o_proj_bias_grad_absmax"]


def test_negative_control_a_doubled_bias_fails_the_logits_check(result):
    d = result["bias"]["bias_doubled_vs_hf"]
    assert d.finite and d.max_abs > 2 * tolerance(result["logits"]), (d, tolerance(result["logits"]))


def test_rlinf_packed_forward_equals_each_sequence_alone(result):
    assert result["packed"]["patch_passes_te_through"], "the packing patch changed RLinf's forward for a TE model"
    check(result["packed"]["packed_vs_alone"], tolerance(result["logits"], PACK_K))


def test_negative_control_a_merged_pack_is_caught(result):
    d = result["packed"]["merged_pack_control"]
    assert d.finite and d.max_abs > 3 * tolerance(result["logits"], PACK_K), d


# --------------------------------------------------------------------------------------
# CPU dry run of the rank code (no TE: the local spec in both slots)
# --------------------------------------------------------------------------------------

_ONE_CUDNN = """
import json, torch
from rlinf_pangu.patches import PATCHES, apply_patch
from rlinf_pangu.patches.transformer_engine import TORCH_CUDNN
probe = PATCHES[TORCH_CUDNN].applies()
apply_patch(TORCH_CUDNN)
import transformer_engine.pytorch  # noqa: F401
from transformer_engine.pytorch.utils import get_cudnn_version
from rlinf_pangu.patches.transformer_engine import mapped_cudnn_files
v = torch.backends.cudnn.version()  # raises "cuDNN version incompatibility" if TE loaded another cuDNN
print(json.dumps({"probe": probe, "te": list(get_cudnn_version()), "torch": [v // 10000, v // 100 % 100, v % 100],
                  "mapped": mapped_cudnn_files()}))
"""


def test_te_and_torch_load_one_cudnn_in_a_fresh_process():
    """The patch transformer_engine.cudnn:torch's: without it TE loaded the toolkit's cuDNN 9.14 and torch
    (built against 9.19) refused its own (docs/runs/gpu-h100-2026-12-07-te). A fresh interpreter with no
    CUDNN_HOME/CUDNN_PATH and torch's cuDNN off LD_LIBRARY_PATH, as a user's shell has, so the patch works in
    the process that applies it (where LD_LIBRARY_PATH no longer counts; docs/runs/gpu-h100-2026-12-07-te2:
    CUDNN_HOME alone failed there). The probe must still see TE's loader prefer the toolkit, and every cuDNN
    file mapped must be torch's."""
    import subprocess

    from rlinf_pangu.patches.transformer_engine import torch_cudnn_home

    lib = str(torch_cudnn_home() / "lib")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDNN_HOME", "CUDNN_PATH")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d and d != lib)
    out = subprocess.run([sys.executable, "-c", _ONE_CUDNN], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["probe"], "TE's cuDNN loader changed: re-read rlinf_pangu/patches/transformer_engine.py's why"
    assert seen["te"] == seen["torch"], seen
    assert seen["mapped"] and all(os.path.dirname(f) == lib for f in seen["mapped"]), seen["mapped"]


_NO_PATCH = """
import json, torch
import transformer_engine.pytorch  # noqa: F401
from transformer_engine.pytorch.utils import get_cudnn_version
try:
    v = torch.backends.cudnn.version()
    torch_seen = [v // 10000, v // 100 % 100, v % 100]
except RuntimeError as e:
    torch_seen = str(e)
print(json.dumps({"te": list(get_cudnn_version()), "torch": torch_seen}))
"""


def test_negative_control_without_the_patch_te_takes_another_cudnn_where_the_toolkit_has_one():
    """Where the machine's toolkit carries a cuDNN other than torch's (the H100 image: 9.14 vs 9.19), a fresh
    process without the patch (no CUDNN_HOME/CUDNN_PATH, torch's cuDNN off LD_LIBRARY_PATH) must show the defect: TE on
    another cuDNN, or torch refusing its own. Skipped where the toolkit has none or the same one."""
    import subprocess

    from rlinf_pangu.patches.transformer_engine import torch_cudnn_home
    from rlinf_pangu.startup.children import BOOT_DIR

    def without(var: str, entry: str) -> str:
        return os.pathsep.join(d for d in os.environ.get(var, "").split(os.pathsep) if d and d != entry)

    env = {k: v for k, v in os.environ.items() if k not in ("CUDNN_HOME", "CUDNN_PATH")}
    # what the patch added to LD_LIBRARY_PATH, and the child start-up hook that would arm it, taken out
    env["LD_LIBRARY_PATH"] = without("LD_LIBRARY_PATH", str(torch_cudnn_home() / "lib"))
    env["PYTHONPATH"] = without("PYTHONPATH", BOOT_DIR)
    out = subprocess.run([sys.executable, "-c", _NO_PATCH], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    torch_built = torch.backends.cudnn.version()
    if seen["te"] == [torch_built // 10000, torch_built // 100 % 100, torch_built % 100]:
        pytest.skip(f"TE finds torch's cuDNN here even without the patch ({seen})")
    assert seen["te"] != seen["torch"], seen


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="CPU dry run of the TE parity rank code (local spec twice)")
    ap.add_argument("--dry-run", action="store_true", required=True)
    ap.add_argument("--out", default=None, help="write te_parity.json here")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from harness import run_ranks
    from rlinf_pangu.make_checkpoint import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "tiny", preset_name="tiny", dtype="fp32", seed=3, num_hidden_layers=2)
        res = run_ranks(te_parity_rank, 1, str(ckpt), True, timeout=1200)[0]
    print("logits", res["logits"]["local_vs_hf"], "|", res["logits"]["te_vs_hf"])
    print("loss", res["loss_values"], "grads compared:", len(res["grads"]), "missing:", res["missing_grads"])
    print("bias:", [(layer["returns_its_bias"], str(layer["output_vs_x_at_w"])) for layer in res["bias"]["layers"]])
    print("bias doubled:", res["bias"]["bias_doubled_vs_hf"], "packed:", res["packed"], "log:", res["spec_log"])
    print("record:", write_record(res, a.out))

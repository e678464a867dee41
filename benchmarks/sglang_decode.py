"""Benchmark: SGLang decode throughput of the Pangu class against SGLang's own Llama class, on the
same 1B-shaped weights, in the same run.

    python benchmarks/sglang_decode.py --out $OUT                               # one GPU
    python benchmarks/sglang_decode.py --device cpu --preset tiny --layers 2 --batch 4 --new 8 --prompt 16 --rounds 1  # dry run

One factory checkpoint (openPangu-Embedded-1B shapes: tied embeddings, q/k/v/o bias; bf16) is
served twice: as ``PanguEmbeddedForCausalLM`` (``rlinf_pangu.sglang_ext``, the official config)
and as SGLang's ``LlamaForCausalLM`` (a second directory with the same safetensors files and a
Llama config.json with ``attention_bias: true``). Engines alternate (Pangu, Llama, Pangu, Llama
...), each warmed up, then: a batch of ``--batch`` fresh prompts decoding ``--new`` tokens
(``ignore_eos``), minus the same batch's prefill + first token, gives decode tokens/s. Both
classes must produce the same greedy tokens (same weights, same kernels). Goal: Pangu / Llama >= 0.98.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import _sync_common as C

GOAL = 0.98


def _llama_dir(pangu: Path) -> Path:
    """The same weight files under a config SGLang's own Llama class loads."""
    d = pangu.parent / (pangu.name + "_as_llama")
    d.mkdir(exist_ok=True)
    for f in pangu.iterdir():
        if f.name.endswith(".safetensors") or f.name == "model.safetensors.index.json":
            target = d / f.name
            if not target.exists():
                target.symlink_to(f.resolve())
    cfg = json.loads((pangu / "config.json").read_text())
    cfg.pop("auto_map", None)
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=True, mlp_bias=False)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.get("rope_theta")}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def _run(eng, prompts: list[list[int]], new: int, vocab: int) -> dict:
    sp = {"max_new_tokens": new, "temperature": 0, "ignore_eos": True}
    one = {"max_new_tokens": 1, "temperature": 0, "ignore_eos": True}
    eng.generate(input_ids=prompts, sampling_params=sp)  # warm-up (compiles, graphs)
    full, first = [], []
    for i in range(3):  # fresh prompts each time: no radix-cache hits
        ps = [[(t + 7 * i + 1) % vocab for t in p] for p in prompts]
        t0 = time.perf_counter()
        out = eng.generate(input_ids=ps, sampling_params=sp)
        full.append(time.perf_counter() - t0)
        assert all(len(o["output_ids"]) == new for o in out)
        ps = [[(t + 7 * i + 3) % vocab for t in p] for p in prompts]
        t0 = time.perf_counter()
        eng.generate(input_ids=ps, sampling_params=one)
        first.append(time.perf_counter() - t0)
    f, s = statistics.median(full), statistics.median(first)
    greedy = eng.generate(input_ids=prompts[:4], sampling_params=sp)
    return {
        "t_full_s": full, "t_prefill_first_token_s": first,
        "decode_tok_per_s": len(prompts) * (new - 1) / (f - s),
        "e2e_tok_per_s": len(prompts) * new / f,
        "greedy": [o["output_ids"] for o in greedy],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="1b", choices=["tiny", "1b", "7b"])
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="each round serves Pangu then Llama")
    ap.add_argument("--model-path", default=None, help="an existing Pangu HF dir (default: a factory checkpoint)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_results"))
    a = ap.parse_args()

    C.register()
    pangu = Path(a.model_path) if a.model_path else None
    if pangu is None:
        from rlinf_pangu.make_checkpoint import make_checkpoint

        work = Path(a.work or tempfile.mkdtemp(prefix="decode_bench_"))
        overrides = {"num_hidden_layers": a.layers} if a.layers else {}
        pangu = make_checkpoint(work / f"pangu_{a.preset}", preset_name=a.preset, dtype="bf16", seed=0, overwrite=True, **overrides)
    llama = _llama_dir(pangu)
    vocab = C.hf_config(pangu).vocab_size
    prompts = C.random_tokens(a.batch, a.prompt, vocab, seed=5)
    extra = {"max_running_requests": a.batch}
    if a.device == "cuda":
        extra.update(cuda_graph_max_bs_decode=a.batch)

    arms = [("pangu", pangu), ("llama", llama)]
    note = None
    if a.device == "cpu":
        # SGLang's own Llama needs vllm's rope op on a CPU host without its CPU kernels (the Pangu
        # class applies the CPU-only patch itself); the dry run checks the Llama dir's config only.
        from transformers import AutoConfig

        lc, pc = AutoConfig.from_pretrained(str(llama)), C.hf_config(pangu)
        assert lc.model_type == "llama" and lc.attention_bias and lc.tie_word_embeddings == pc.tie_word_embeddings
        assert (lc.hidden_size, lc.num_hidden_layers, lc.vocab_size) == (pc.hidden_size, pc.num_hidden_layers, pc.vocab_size)
        arms, note = [("pangu", pangu), ("llama", pangu)], "dry run: the llama arm is served by the Pangu class"
    runs: dict[str, list[dict]] = {"pangu": [], "llama": []}
    for r in range(a.rounds):
        for name, path in arms:
            t0 = time.perf_counter()
            eng = C.engine(path, a.device, "bfloat16", **extra)
            start_s = time.perf_counter() - t0
            try:
                res = _run(eng, prompts, a.new, vocab)
            finally:
                eng.shutdown()
            res["engine_start_s"] = start_s
            runs[name].append(res)
            C.log(f"round {r} {name}: decode {res['decode_tok_per_s']:.1f} tok/s (engine start {start_s:.0f} s)")

    med = {k: statistics.median(x["decode_tok_per_s"] for x in v) for k, v in runs.items()}
    ratio = med["pangu"] / med["llama"]
    same = all(p["greedy"] == q["greedy"] for p in runs["pangu"] for q in runs["llama"])
    result = {
        "what": "SGLang decode tokens/s: PanguEmbeddedForCausalLM vs SGLang's LlamaForCausalLM, same weights",
        "preset": a.preset, "layers": C.hf_config(pangu).num_hidden_layers, "batch": a.batch,
        "prompt": a.prompt, "new": a.new, "runs": runs, "median_decode_tok_per_s": med,
        "ratio": ratio, "goal": GOAL, "same_greedy_tokens": same, "pass": ratio >= GOAL and same,
        "note": note,
    }
    C.write_result(a.out, f"sglang_decode_{a.preset}_{a.device}", result)
    print(("PASS" if result["pass"] else "FAIL") + f": Pangu {med['pangu']:.1f} / Llama {med['llama']:.1f} tok/s = {ratio:.3f} (goal >= {GOAL}); same greedy tokens: {same}", flush=True)


if __name__ == "__main__":
    main()

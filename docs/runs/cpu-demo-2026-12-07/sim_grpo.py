"""The stand-in used to choose the CPU demo's task and settings (README.md beside this file): GRPO's
update on the HF tiny Pangu in one process, fp32, one-token answers sampled at temperature 1, group-
normalised advantages, AdamW(betas 0.9/0.95, wd 0.01), grad clip 1.0, one minibatch per step (so the
PPO ratio is 1 and the clip inactive, as in the demo). Not RLinf: a quick sweep tool (~3 min a config
on the shared host), kept as the record of how the table was made.
  python docs/runs/cpu-demo-2026-12-07/sim_grpo.py --seed 0 --task rep-8 --steps 16 --grid "lr=2e-4,prompts=5,group=16"
"""
import argparse, json, math, random, shutil, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import rlinf_pangu
rlinf_pangu.register_transformers()
from transformers import AutoModelForCausalLM, AutoTokenizer
from rlinf_pangu.make_checkpoint import make_checkpoint
from rlinf_pangu.demo.answer_prior import apply_answer_prior, digit_token_ids

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
p.add_argument("--lr", type=float, default=2e-4)
p.add_argument("--strength", type=float, default=12.0)
p.add_argument("--steps", type=int, default=16)
p.add_argument("--prompts", type=int, default=4)
p.add_argument("--group", type=int, default=8)
p.add_argument("--temp", type=float, default=1.0)
p.add_argument("--task", default="arith")
p.add_argument("--chat", type=int, default=1)
p.add_argument("--wd", type=float, default=0.01)
p.add_argument("--freeze", default="")
p.add_argument("--data-seed", type=int, default=1234)
p.add_argument("--grid", default="")
a = p.parse_args()

torch.manual_seed(a.seed); random.seed(a.seed)
base = Path(f"/tmp/rlinf-pangu-sim/ckpt-s{a.seed}")
if not base.exists():
    make_checkpoint(base, "tiny", seed=a.seed, dtype="fp32")

def items(task):
    out = []
    if task == "arith":
        for s, f in (("+", lambda x, y: x + y), ("-", lambda x, y: x - y), ("*", lambda x, y: x * y)):
            for x in range(10):
                for y in range(10):
                    r = f(x, y)
                    if 0 <= r <= 9: out.append((f"{x}{s}{y}=", r))
    elif task == "copy":
        out = [(f"{d}", d) for d in range(10)]
    elif task.startswith("copy-"):  # copy-N: N-digit strings, answer = last digit
        n = int(task.split("-")[1]); rng = random.Random(0)
        out = []
        for i in range(200):
            ds = [rng.randrange(10) for _ in range(n)]
            out.append((" ".join(map(str, ds)), ds[-1]))
    elif task.startswith("rep-"):  # rep-N: the digit repeated N times, answer = the digit
        n = int(task.split("-")[1])
        out = [(" ".join([str(d)] * n), d) for d in range(10)]
    elif task == "add1":
        out = [(f"{d}+1=", d + 1) for d in range(9)]
    return out

data = items(a.task)
tok = AutoTokenizer.from_pretrained(base)
def render(q):
    if a.chat:
        return tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
    return q
texts = [render(q) for q, _ in data]
ck = Path(f"/tmp/rlinf-pangu-sim/work-{a.seed}-{time.time_ns()}")
shutil.copytree(base, ck)
apply_answer_prior(ck, a.strength, texts[:32])
model0 = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32)
shutil.rmtree(ck)
import copy
digits = digit_token_ids(tok)
enc = [tok(t).input_ids for t in texts]
print("prompt lens", min(map(len, enc)), max(map(len, enc)), "n", len(data), file=sys.stderr)
def run(a):
    global model
    model = copy.deepcopy(model0); model.train(); torch.manual_seed(a.seed)
    params = [pp for n, pp in model.named_parameters() if not any(f and f in n for f in a.freeze.split(","))]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=a.wd)

    global last_logits
    def last_logits(idx):
        # left-pad batch
        L = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), L), 0, dtype=torch.long); att = torch.zeros((len(idx), L), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, L - len(enc[i]):] = torch.tensor(enc[i]); att[r, L - len(enc[i]):] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=att, position_ids=pos)
        return out.logits[:, -1].float()

    global eval_all
    @torch.no_grad()
    def eval_all():
        lg = last_logits(list(range(len(data)))) / a.temp
        pr = lg.softmax(-1)
        ok = torch.tensor([pr[i, digits[data[i][1]]] for i in range(len(data))])
        return float(ok.mean()), float(pr[:, digits].sum(-1).mean())

    order = list(range(len(data)))
    rng = random.Random(a.data_seed)
    rng.shuffle(order); cur = 0
    hist = []
    for step in range(1, a.steps + 1):
        if cur + a.prompts > len(order):
            rng.shuffle(order); cur = 0
        idx = order[cur:cur + a.prompts]; cur += a.prompts
        lg = last_logits(idx) / a.temp
        logp = lg.log_softmax(-1)
        with torch.no_grad():
            samp = torch.multinomial(logp.exp(), a.group, replacement=True)  # [P, G]
            rew = torch.tensor([[1.0 if int(t) == digits[data[i][1]] else 0.0 for t in row] for i, row in zip(idx, samp)])
            adv = (rew - rew.mean(1, keepdim=True)) / (rew.std(1, keepdim=True) + 1e-6)
        lp = logp.gather(1, samp)
        loss = -(adv * lp).mean()
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ev, dm = eval_all()
        hist.append(float(rew.mean()))
        print(f"step {step:3d} reward {rew.mean():.3f} expected(all) {ev:.3f} digit_mass {dm:.3f}", file=sys.stderr)
    f3 = sum(hist[:3]) / 3; l3 = sum(hist[-3:]) / 3
    print(json.dumps({"args": vars(a), "first3": f3, "last3": l3, "delta": l3 - f3, "final_expected": ev}))

import copy as _c
if a.grid:
    for spec in a.grid.split(";"):
        b = _c.copy(a)
        for kv in spec.split(","):
            k, v = kv.split("=")
            setattr(b, k, type(getattr(a, k))(v))
        run(b)
else:
    run(a)

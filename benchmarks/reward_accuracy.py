"""Benchmark: how right the ``pangu_math`` reward is, and how fast it grades, next to RLinf and Math-Verify.

    .venv/bin/python benchmarks/reward_accuracy.py --math-verify-python /tmp/mv-venv/bin/python

On the labelled set (tests/data/math_answers.jsonl, made by tests/data/make_math_answers.py) it
grades every completion with:

* ``pangu_math``: what each of the reward's pool workers runs per answer
  (``math_grade.grade`` on ``reward.answer_for_grading``: the answer after the thinking);
* RLinf's stock ``math`` reward on this stack: its verifier's per-answer job
  (``verify_math_solution`` on the whole completion), with the Lark ``latex2sympy`` the
  ``latex2sympy2`` patch installs;
* the same with the raising stand-in this project installed before issue 19 (no LaTeX parser);
* Hugging Face's Math-Verify, on the same answer text ``pangu_math`` grades and on the whole
  completion. It needs ANTLR 4.13 (omegaconf pins 4.9), so it runs in its own virtualenv, as a
  child process (benchmarks/_math_verify_runner.py), given with ``--math-verify-python``:

      $(pyenv root)/versions/3.12*/bin/python -m venv /tmp/mv-venv && /tmp/mv-venv/bin/pip install math-verify

It reports accuracy, false positives (and how many of them are hard negatives), false negatives,
and throughput: answers per CPU second of one process pinned to one core (``--core``), the cost the
reward worker pays per answer on each of its pool's cores, and answers per wall second. Every
grader runs in this one invocation, each after the parse cache is emptied; the host is shared, so
compare the rows of one run, and run it more than once before quoting a throughput.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO / "tests" / "data" / "math_answers.jsonl"
RUNNER = REPO / "benchmarks" / "_math_verify_runner.py"


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(rows: list[dict], verdicts: list[bool]) -> dict:
    fp = [r for r, v in zip(rows, verdicts) if v and not r["correct"]]
    fn = [r for r, v in zip(rows, verdicts) if not v and r["correct"]]
    return {
        "accuracy": 1 - (len(fp) + len(fn)) / len(rows), "right": len(rows) - len(fp) - len(fn), "total": len(rows),
        "fp": len(fp), "fp_hard": sum(r["hard"] for r in fp), "fn": len(fn),
        "misses": [{"id": r["id"], "kind": "FP" if r in fp else "FN", "category": r["category"],
                    "reference": r["reference"], "value": r.get("value", r.get("note"))} for r in fp + fn],
    }


def timed(grade_one: Callable[[dict], bool], rows: list[dict]) -> tuple[list[bool], float, float, dict]:
    """Verdicts, CPU seconds, wall seconds and CPU seconds per answer source (gsm8k, aime, math) of
    grading ``rows`` one after another in this process."""
    verdicts, by_source = [], {}
    w0 = time.perf_counter()
    for r in rows:
        c0 = time.process_time()
        verdicts.append(bool(grade_one(r)))
        by_source[r["source"]] = by_source.get(r["source"], 0.0) + time.process_time() - c0
    return verdicts, sum(by_source.values()), time.perf_counter() - w0, by_source


def in_process_graders() -> dict[str, Callable[[dict], bool]]:
    from rlinf_pangu import math_grade
    from rlinf_pangu.reward import answer_for_grading

    verify = math_grade.rlinf_verifier()  # RLinf's verifier with the latex2sympy2 patch, as register() leaves it
    lark_latex2sympy = verify.latex2sympy

    def standin(*args, **kwargs):
        raise NotImplementedError("stand-in")

    def pangu(r: dict) -> bool:
        answer = answer_for_grading(r["completion"])
        return answer is not None and math_grade._grade_job(answer, [r["reference"]])

    def rlinf_with(parser) -> Callable[[dict], bool]:
        def grade(r: dict) -> bool:
            verify.latex2sympy = parser  # the name RLinf's symbolic_equal looks up at call time
            return verify.verify_math_solution(r["completion"], r["reference"])

        return grade

    return {
        "pangu_math": pangu,
        "RLinf math (this stack: Lark latex2sympy)": rlinf_with(lark_latex2sympy),
        "RLinf math (stand-in latex2sympy, before issue 19)": rlinf_with(standin),
    }


def math_verify(python: str, rows: list[dict], whole: bool) -> tuple[list[bool], float, float, str]:
    from rlinf_pangu.reward import answer_for_grading

    pairs = [[r["completion"] if whole else (answer_for_grading(r["completion"]) or ""), r["reference"]] for r in rows]
    p = subprocess.run([python, str(RUNNER)], input=json.dumps({"pairs": pairs}), capture_output=True, text=True,
                       timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"Math-Verify runner failed ({python}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout)
    return out["verdicts"], out["cpu_seconds"], out["seconds"], out["version"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--math-verify-python", help="python of a virtualenv with math-verify installed")
    ap.add_argument("--core", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    ap.add_argument("--misses", action="store_true", help="list every wrongly graded row per grader")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})  # children (Math-Verify's runner) inherit it
    rows = load(args.data)
    load1 = os.getloadavg()[0]

    from rlinf_pangu import math_grade

    results = {}
    for name, grade_one in in_process_graders().items():
        math_grade._parse_rewritten.cache_clear()
        verdicts, cpu, wall, by_source = timed(grade_one, rows)
        results[name] = {**score(rows, verdicts), "per_cpu_s": len(rows) / cpu, "per_wall_s": len(rows) / wall,
                         "per_cpu_s_by_source": {k: sum(r["source"] == k for r in rows) / v for k, v in by_source.items()}}
    if args.math_verify_python:
        for whole in (False, True):
            verdicts, cpu, wall, version = math_verify(args.math_verify_python, rows, whole)
            name = f"Math-Verify {version} ({'whole completion' if whole else 'answer after [unused17]'})"
            results[name] = {**score(rows, verdicts), "per_cpu_s": len(rows) / cpu, "per_wall_s": len(rows) / wall}

    hard = sum(r["hard"] for r in rows)
    print(f"{len(rows)} labelled completions ({sum(r['correct'] for r in rows)} correct, {hard} hard negatives); "
          f"one process pinned to core {core}; load average {load1:.1f} at start")
    print("| grader | accuracy | right | FP (hard) | FN | answers / CPU s | answers / wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['accuracy']:.1f}% | {r['right']}/{r['total']} | {r['fp']} ({r['fp_hard']}) | "
              f"{r['fn']} | {r['per_cpu_s']:.1f} | {r['per_wall_s']:.1f} |")
    print("\nanswers / CPU s by the source of the answer forms (GSM8K and AIME: numbers; MATH: LaTeX):")
    for name, r in results.items():
        if "per_cpu_s_by_source" in r:
            print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["per_cpu_s_by_source"].items())))
    if args.misses:
        for name, r in results.items():
            print(f"\n{name}:")
            for m in r["misses"]:
                print(f"  {m['kind']} #{m['id']} {m['category']}: {m['value']!r} vs {m['reference']!r}")
    if args.json:
        args.json.write_text(json.dumps({"rows": len(rows), "core": core, "load": load1, "results": results}, indent=1))


if __name__ == "__main__":
    main()

"""Grades (answer, reference) pairs with Hugging Face's Math-Verify; run by benchmarks/reward_accuracy.py.

Why a separate script: Math-Verify's parser needs ANTLR 4.13 while hydra/omegaconf pin 4.9, so it
cannot live in the project's environment. reward_accuracy.py runs this file with the Python of a
separate virtualenv that has ``math-verify`` installed, and talks JSON over stdin/stdout. It uses
only the standard library and math_verify.

stdin: {"pairs": [[answer_text, reference], ...]}
stdout: {"verdicts": [bool, ...], "seconds": float (wall), "cpu_seconds": float, "version": str}
"""

from __future__ import annotations

import json
import sys
import time


def gold_text(reference: str) -> str:
    """A bare reference (``\\frac{1}{2}``) in math delimiters, as Math-Verify's LaTeX extraction expects."""
    return reference if ("$" in reference or "\\boxed" in reference) else f"${reference}$"


def main() -> None:
    from importlib.metadata import version

    from math_verify import parse, verify

    pairs = json.load(sys.stdin)["pairs"]
    verdicts = []
    c0, t0 = time.process_time(), time.perf_counter()
    for answer, reference in pairs:  # the reference is parsed per pair, as a reward worker does
        verdicts.append(bool(verify(parse(gold_text(reference)), parse(answer))))
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    json.dump({"verdicts": verdicts, "seconds": seconds, "cpu_seconds": cpu_seconds, "version": version("math-verify")},
              sys.stdout)


if __name__ == "__main__":
    main()

"""Datasets bundled with the package, and the generators of the synthetic sets.

``arith_train.jsonl`` is what ``configs/data/arith-tiny.yaml`` trains on: every ``a+b``, ``a-b`` and
``a*b`` over single digits whose result is a single digit (0-9), as chat messages with the answer as a
string. Why so easy: the embedded demo starts from a *random* tiny model; a verifiable answer that is
one token, with a short response budget, is the only kind such a model can stumble on often enough for
GRPO to have a signal.

``digit_echo.jsonl`` is what ``configs/data/digit-echo.yaml`` (the CPU demo) trains on: the user turn
is a digit from 1 to 9 written :data:`ECHO_REPEAT` times ("7 7 7 7 7 7 7 7") and the right answer
is that digit. Nine questions whose answer is in the context: a random model that learns from a few
hundred samples can tie each question to its answer, where 152 arithmetic facts, each seen once in
~35 steps, leave it only the answers' frequencies to learn. Why repeated: a random model's attention
is spread about evenly over the context, so a digit written once carries ~1/12 of what reaches the
answer position; written eight times it fills a third of the context, and GRPO learnt the task about
twice as fast (docs/runs/cpu-demo-2026-12-07). Why not 0: the factory's small vocabulary has no
"▁0" piece, so "0 0 0 ..." takes 27 tokens where the others take 19, and every step would pay for
the longest prompt.

The files are generated (``python -m rlinf_pangu.data``); a test checks that the shipped copies equal
the generators' output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

DATA_DIR = Path(__file__).resolve().parent
ARITH_TRAIN = "arith_train.jsonl"
ECHO_TRAIN = "digit_echo.jsonl"
ECHO_REPEAT = 8


def data_path(name: str) -> Path:
    """Absolute path of a bundled dataset; a clear error for an unknown name."""
    p = DATA_DIR / name
    if not p.is_file():
        known = sorted(f.name for f in DATA_DIR.glob("*.jsonl"))
        raise FileNotFoundError(f"no bundled dataset {name!r} in {DATA_DIR}; bundled: {known}")
    return p


def arith_items() -> Iterator[dict]:
    """Every single-digit ``a op b`` with a single-digit result, in a fixed order."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for sym, fn in ops.items():
        for a in range(10):
            for b in range(10):
                r = fn(a, b)
                if 0 <= r <= 9:
                    yield {
                        "prompt": [{"role": "user", "content": f"{a}{sym}{b}="}],
                        "answer": str(r),
                    }


def echo_items(repeat: int = ECHO_REPEAT) -> Iterator[dict]:
    """Each digit 1-9, written ``repeat`` times, as the question; the digit as the answer."""
    for d in range(1, 10):
        yield {"prompt": [{"role": "user", "content": " ".join([str(d)] * repeat)}], "answer": str(d)}


def _render(items: Iterator[dict]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def render_arith() -> str:
    return _render(arith_items())


def render_echo() -> str:
    return _render(echo_items())


#: Bundled file -> its generator.
GENERATED = {ARITH_TRAIN: render_arith, ECHO_TRAIN: render_echo}


def main() -> None:
    for name, render in GENERATED.items():
        (DATA_DIR / name).write_text(render())
        print(DATA_DIR / name)


if __name__ == "__main__":
    main()

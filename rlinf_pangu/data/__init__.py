"""Datasets bundled with the package, and the generator of the synthetic arithmetic set.

``arith_train.jsonl`` is what ``configs/data/arith-tiny.yaml`` trains on: every ``a+b``, ``a-b`` and
``a*b`` over single digits whose result is a single digit (0-9), as chat messages with the answer as a
string. Why so easy: the embedded demo starts from a *random* tiny model; a verifiable answer that is
one token, with a short response budget, is the only kind such a model can stumble on often enough for
GRPO to have a signal. The file is generated (``python -m rlinf_pangu.data``) and a test checks that the
shipped copy equals the generator's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

DATA_DIR = Path(__file__).resolve().parent
ARITH_TRAIN = "arith_train.jsonl"


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


def render_arith() -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in arith_items())


def main() -> None:
    (DATA_DIR / ARITH_TRAIN).write_text(render_arith())
    print(DATA_DIR / ARITH_TRAIN)


if __name__ == "__main__":
    main()

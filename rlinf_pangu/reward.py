"""A math reward for openPangu-Embedded that grades only the answer after the thinking.

Why: a Pangu completion is ``[unused16] thinking [unused17] answer [unused10]``. RLinf's ``math``
reward grades the whole text, so a number that appears anywhere in the thinking can earn the
reward. This one splits the completion with :func:`rlinf_pangu.chat.split_thinking` and grades only
the answer, with :func:`rlinf_pangu.math_grade.grade`: a real LaTeX parser (sympy's Lark backend)
under RLinf's own math verifier, plus the number/interval/tuple/choice readings RLinf's verifier
gets wrong. Unfinished thinking earns nothing; an answer with no final-answer marker
(``\\boxed{}``, "the answer is", "Answer:", ...) is graded as a whole (it is already the part after
the thinking). Answers are graded in worker processes under a time limit (``GradingPool``).

Selected with ``reward.reward_type: pangu_math``; registered in RLinf's rule-based reward registry
by ``rlinf_pangu.register()`` (in every reward worker, through RLinf's ``RLINF_EXT_MODULE`` hook).
Optional ``reward`` keys: ``grader_workers`` (processes; default: this worker's cores, at most 32)
and ``grader_timeout_s`` (per answer; default 10, RLinf's own).

Building the reward fails, with the reason, when the LaTeX parser or RLinf's verifier with it is
unusable (``math_grade.ParserUnavailable``, ``check_rlinf_verifier``): the reward worker stops at
start rather than grade a third of the correct answers wrong for a whole run.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Sequence

from .chat import split_thinking

#: ``reward.reward_type`` of this reward.
REWARD_TYPE = "pangu_math"


def answer_for_grading(completion: str) -> str | None:
    """The text the grader should grade, or None when the completion has no answer.

    An answer without a final-answer marker is wrapped in ``\\boxed{}`` so that any grader that
    looks for one (RLinf's extractor, Math-Verify) grades it whole, as this one does.
    """
    parts = split_thinking(completion)
    if not parts.finished_thinking or not parts.answer:
        return None
    from .math_grade import marked_answer

    answer = parts.answer
    if marked_answer(answer) is None:
        answer = "\\boxed{" + answer + "}"
    return answer


class PanguMathReward:
    """RLinf rule-based reward (``get_reward(responses, references)``) on the answer part only."""

    def __init__(self, config: Any):
        get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
        self.scale = float(get("reward_scale", 1.0))
        self.min_val = float(get("reward_min_val", 0.0))
        self.max_val = float(get("reward_max_val", 1.0))
        from . import math_grade  # raises ParserUnavailable (lark missing or broken): the worker stops here

        math_grade.check_rlinf_verifier()
        workers = get("grader_workers", None)
        self.pool = math_grade.GradingPool(None if workers is None else int(workers),
                                           float(get("grader_timeout_s", 10.0)))

    def grade(self, responses: Sequence[str], references: Sequence[Any]) -> list[bool]:
        return self.pool.grade([answer_for_grading(r) for r in responses], list(references))

    def get_reward(self, response: Sequence[str], reference: Sequence[Any], **kwargs: Any) -> list[float]:
        rewards = [(self.max_val if ok else self.min_val) * self.scale for ok in self.grade(response, reference)]
        _log_samples(response, reference, rewards)
        return rewards


#: When set (the entry point sets it to the run folder), graded samples are appended to
#: ``reward_samples.jsonl`` there: what was graded, the answer part, the reward.
SAMPLES_ENV = "RLINF_PANGU_REWARD_SAMPLES"
_LOCK = threading.Lock()


def _log_samples(responses: Sequence[str], references: Sequence[Any], rewards: Sequence[float]) -> None:
    path = os.environ.get(SAMPLES_ENV)
    if not path:
        return
    with _LOCK, open(path, "a") as f:
        for text, ref, r in zip(responses, references, rewards):
            parts = split_thinking(text)
            rec = {"completion": text, "answer": parts.answer, "finished_thinking": parts.finished_thinking,
                   "reference": list(ref) if isinstance(ref, (list, tuple)) else ref, "reward": r}
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")


def register(rewards_module: Any | None = None) -> None:
    """Add ``pangu_math`` to RLinf's reward registry (idempotent)."""
    if rewards_module is None:
        import rlinf.algorithms.rewards as rewards_module
    if REWARD_TYPE not in rewards_module.reward_registry:
        rewards_module.register_reward(REWARD_TYPE, PanguMathReward)

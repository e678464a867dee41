"""A math reward for openPangu-Embedded that grades only the answer after the thinking.

Why: a Pangu completion is ``[unused16] thinking [unused17] answer [unused10]``. RLinf's ``math``
reward grades the whole text, so a number that appears anywhere in the thinking can earn the
reward. This one splits the completion with :func:`rlinf_pangu.chat.split_thinking` and hands only
the answer to RLinf's own math verifier (``math_verify_call``): unfinished thinking earns nothing,
and an answer with no final-answer marker (``\\boxed{}``, "the answer is", ...) is graded as a whole
(it is already the part after the thinking).

Selected with ``reward.reward_type: pangu_math``; registered in RLinf's rule-based reward registry
by ``rlinf_pangu.register()`` (in every reward worker, through RLinf's ``RLINF_EXT_MODULE`` hook).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Sequence

from .chat import split_thinking

#: ``reward.reward_type`` of this reward.
REWARD_TYPE = "pangu_math"
#: Phrases RLinf's answer extractor looks for; an answer without one is graded as a whole.
_ANSWER_MARKERS = ("boxed", "he answer is", "final answer is", "答案是")


def answer_for_grading(completion: str) -> str | None:
    """The text RLinf's verifier should grade, or None when the completion has no answer."""
    parts = split_thinking(completion)
    if not parts.finished_thinking or not parts.answer:
        return None
    answer = parts.answer
    if not any(m in answer for m in _ANSWER_MARKERS):
        answer = "\\boxed{" + answer + "}"
    return answer


class PanguMathReward:
    """RLinf rule-based reward (``get_reward(responses, references)``) on the answer part only."""

    def __init__(self, config: Any):
        get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
        self.scale = float(get("reward_scale", 1.0))
        self.min_val = float(get("reward_min_val", 0.0))
        self.max_val = float(get("reward_max_val", 1.0))

    def grade(self, responses: Sequence[str], references: Sequence[Any]) -> list[bool]:
        from rlinf.algorithms.rewards.math.math_verifier.verify import math_verify_call

        answers = [answer_for_grading(r) for r in responses]
        todo = [i for i, a in enumerate(answers) if a is not None]
        verdict = [False] * len(responses)
        if todo:
            results = math_verify_call([answers[i] for i in todo], [references[i] for i in todo])
            for i, ok in zip(todo, results):
                verdict[i] = bool(ok)
        return verdict

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

"""The one comparison helper for every numerical check in tests/ and benchmarks/.

Why one helper: a check must be able to fail. The ad-hoc comparisons it replaces had three blind
spots that a green run could not rule out:

* **NaN passes.** Python's ``max(0.0, nan)`` is ``0.0`` (``nan > 0.0`` is False), so a running
  max over parameter groups, or ``max()`` over ranks, dropped a NaN gradient whenever it was not
  first. Here any non-finite value on either side makes the comparison non-finite, the report
  names the tensor and the first bad element, and every aggregation keeps it.
* **inf compares equal to inf.** ``torch.allclose``/``assert_close`` treat equal infinities as
  equal; ``inf - inf`` is NaN. Here a non-finite value fails whether or not both sides share it.
* **The mean hides one bad element.** One token's log-prob off by 0.5 among 24 moves
  ``mean |d|`` by 0.02. Every report carries the worst element (where, and both values) next to
  the mean, and :func:`check` / :func:`check_against_floor` judge the worst element too.

Where it lives: the checks are the tests' business, so the module is in ``tests/``; the GPU
benchmarks (``benchmarks/_sync_common.py``) put ``tests/`` on ``sys.path`` and import it, so a
benchmark's verdict and the tests' verdict cannot drift apart. It imports only torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch

__all__ = ["Diff", "diff", "logprob_gap", "worst", "worst_value", "check", "check_against_floor", "CheckFailed"]


class CheckFailed(AssertionError):
    """A numerical check failed; the message names the tensor, the worst element and the mean."""


@dataclass(frozen=True)
class Diff:
    """``got`` against ``want`` for one named tensor (or an aggregate of several, see :func:`worst`).

    ``max_abs`` and ``mean_abs`` are ``nan`` as soon as any element on either side is non-finite;
    ``non_finite`` then says which side, how many, and where the first one is. ``mean_exp``
    (``mean exp(|d|)``, the post-sync log-prob figure) is filled by :func:`logprob_gap` only.
    """

    name: str
    max_abs: float
    mean_abs: float
    n: int
    worst_at: str = ""  # "name[i, j]: got x, want y"
    non_finite: tuple[str, ...] = ()
    mean_exp: float | None = None
    parts: int = 1  # how many comparisons this one aggregates

    @property
    def finite(self) -> bool:
        return not self.non_finite and math.isfinite(self.max_abs) and math.isfinite(self.mean_abs)

    def __str__(self) -> str:
        if not self.finite:
            return f"{self.name}: NON-FINITE: " + "; ".join(self.non_finite or ("max/mean not finite",))
        s = f"{self.name}: max |diff| {self.max_abs:.3e}"
        if self.worst_at:
            s += f" at {self.worst_at}"
        s += f", mean |diff| {self.mean_abs:.3e}"
        if self.mean_exp is not None:
            s += f", mean exp|diff| {self.mean_exp:.6f}"
        return s + f" over {self.n} element(s)" + (f" in {self.parts} tensors" if self.parts > 1 else "")

    def labelled(self, prefix: str) -> "Diff":
        """The same comparison with ``prefix`` (e.g. ``"rank 2"``) in front of every name it reports."""
        return replace(self, name=f"{prefix} {self.name}", worst_at=f"{prefix} {self.worst_at}" if self.worst_at else "",
                       non_finite=tuple(f"{prefix} {p}" for p in self.non_finite))

    def as_dict(self) -> dict:
        """Plain JSON-able numbers (non-finite written as strings, which JSON has no literal for)."""

        def num(x):
            return x if x is None or math.isfinite(x) else str(x)

        return {"max_abs": num(self.max_abs), "mean_abs": num(self.mean_abs), "mean_exp": num(self.mean_exp),
                "n": self.n, "worst_at": self.worst_at, "non_finite": list(self.non_finite), "finite": self.finite}


def _index(flat_index: int, shape: Sequence[int]) -> list[int]:
    idx = []
    for size in reversed(shape):
        idx.append(flat_index % size if size else 0)
        flat_index //= size if size else 1
    return idx[::-1]


def _non_finite(side: str, t: torch.Tensor) -> str | None:
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    first = int(bad.reshape(-1).nonzero()[0])
    n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return (f"{side} has {n_nan} NaN and {n_inf} inf of {t.numel()} "
            f"(first at {_index(first, t.shape)}: {t.reshape(-1)[first].item()})")


def diff(name: str, got: torch.Tensor, want: torch.Tensor) -> Diff:
    """Compare two tensors elementwise in float64 (shapes must match; the message names ``name``)."""
    if tuple(got.shape) != tuple(want.shape):
        raise CheckFailed(f"{name}: shape {tuple(got.shape)} vs expected {tuple(want.shape)}")
    a, b = got.detach().to("cpu", torch.float64), want.detach().to("cpu", torch.float64)
    problems = tuple(p for p in (_non_finite("got", a), _non_finite("expected", b)) if p)
    n = a.numel()
    if problems:
        return Diff(name, math.nan, math.nan, n, non_finite=tuple(f"{name}: {p}" for p in problems))
    if n == 0:
        return Diff(name, 0.0, 0.0, 0)
    d = (a - b).abs().reshape(-1)
    i = int(d.argmax())
    where = f"{name}{_index(i, a.shape)}: got {a.reshape(-1)[i].item():.6g}, want {b.reshape(-1)[i].item():.6g}"
    return Diff(name, float(d[i]), float(d.mean()), n, worst_at=where)


def logprob_gap(name: str, got: torch.Tensor | Sequence[torch.Tensor], want: torch.Tensor | Sequence[torch.Tensor]) -> Diff:
    """Per-token log-prob comparison (sequences concatenated; index = position in that order):
    the worst token, mean |dlogp| and mean exp(|dlogp|)."""
    if not isinstance(got, torch.Tensor):
        got, want = torch.cat([g.reshape(-1) for g in got]), torch.cat([w.reshape(-1) for w in want])
    d = diff(name, got.reshape(-1), want.reshape(-1))
    if not d.finite or d.n == 0:
        return d
    mean_exp = float((got.reshape(-1).double().cpu() - want.reshape(-1).double().cpu()).abs().exp().mean())
    return replace(d, mean_exp=mean_exp)


def worst_value(values: Iterable[float]) -> float:
    """``max`` of plain numbers that keeps a NaN (Python's ``max`` drops one unless it comes first)."""
    out = -math.inf
    seen = False
    for v in values:
        seen = True
        v = float(v)
        if math.isnan(v):
            return math.nan
        out = v if v > out else out
    if not seen:
        raise ValueError("worst_value() of nothing: no check reported a value")
    return out


def worst(diffs: Iterable[Diff], name: str | None = None) -> Diff:
    """Several comparisons as one (over tensors, groups or ranks): the worst element of all, the
    element-weighted mean, and every non-finite report. A single NaN anywhere makes it non-finite."""
    diffs = list(diffs)
    if not diffs:
        raise ValueError(f"{name or 'worst()'}: nothing to aggregate (no rank/tensor reported)")
    n = sum(d.n for d in diffs)
    non_finite = tuple(p for d in diffs for p in d.non_finite)
    if any(not d.finite for d in diffs):
        non_finite = non_finite or tuple(f"{d.name}: max/mean not finite" for d in diffs if not d.finite)
        return Diff(name or diffs[0].name, math.nan, math.nan, n, non_finite=non_finite, parts=sum(d.parts for d in diffs))
    top = max(diffs, key=lambda d: d.max_abs)
    mean = sum(d.mean_abs * d.n for d in diffs) / n if n else 0.0
    mean_exp = None
    if all(d.mean_exp is not None for d in diffs) and n:
        mean_exp = sum(d.mean_exp * d.n for d in diffs) / n
    return Diff(name or top.name, top.max_abs, mean, n, worst_at=top.worst_at, mean_exp=mean_exp,
                parts=sum(d.parts for d in diffs))


def check(d: Diff, max_abs: float, mean_abs: float | None = None) -> Diff:
    """Fail unless every value is finite, the worst element is within ``max_abs`` and (if given)
    the mean within ``mean_abs``. Returns ``d`` for chaining."""
    problems = []
    if not d.finite:
        problems.append("non-finite values")
    else:
        if not d.max_abs <= max_abs:
            problems.append(f"worst element {d.max_abs:.3e} > {max_abs:.1e}")
        if mean_abs is not None and not d.mean_abs <= mean_abs:
            problems.append(f"mean {d.mean_abs:.3e} > {mean_abs:.1e}")
    if problems:
        raise CheckFailed(f"{', '.join(problems)} -- {d}")
    return d


def check_against_floor(after: Diff, floor: Diff, mean_exp_margin: float, worst_margin: float,
                        ceiling: tuple[float, float] | None = None) -> list[str]:
    """Problems (empty: passed) of a log-prob comparison judged against its floor, measured on the
    same weights by an independent load: non-finite on either side fails; the mean exp(|d|) may
    exceed the floor's by ``mean_exp_margin`` and the worst token the floor's worst by
    ``worst_margin``. ``ceiling`` = (mean_exp, worst) bounds the floor itself, so a floor that is
    as wrong as what it judges cannot pass it."""
    problems = [f"non-finite: {d}" for d in (after, floor) if not d.finite]
    if problems:
        return problems
    if not after.mean_exp <= floor.mean_exp + mean_exp_margin:
        problems.append(f"mean exp|d| {after.mean_exp:.6f} > floor {floor.mean_exp:.6f} + {mean_exp_margin:g}")
    if not after.max_abs <= floor.max_abs + worst_margin:
        problems.append(f"worst token {after.max_abs:.4f} ({after.worst_at}) > floor's worst {floor.max_abs:.4f} + {worst_margin:g}")
    if ceiling is not None:
        if not floor.mean_exp <= ceiling[0]:
            problems.append(f"the floor itself: mean exp|d| {floor.mean_exp:.6f} > {ceiling[0]}")
        if not floor.max_abs <= ceiling[1]:
            problems.append(f"the floor itself: worst token {floor.max_abs:.4f} > {ceiling[1]}")
    return problems

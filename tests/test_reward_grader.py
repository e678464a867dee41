"""rlinf_pangu.math_grade: the LaTeX parser under RLinf's verifier, the answer readings, failing loudly.

The labelled set (test_reward_accuracy.py) judges the grader as a whole; these tests pin each
reading down with the input that needs it, and check that a missing or broken parser stops the
reward at start instead of grading without one.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
import sympy

from harness import fresh_env
from rlinf_pangu import math_grade as g

pi, E, I, x, y = sympy.pi, sympy.E, sympy.I, sympy.Symbol("x"), sympy.Symbol("y")


@pytest.mark.parametrize(
    "latex, value",
    [
        (r"\frac{1}{2}", sympy.Rational(1, 2)),
        (r"0.75", sympy.Rational(3, 4)),  # decimals exact, as latex2sympy2 returned them
        (r"2\pi", 2 * pi),  # the Lark grammar has no \pi
        (r"\pi r^2", pi * sympy.Symbol("r") ** 2),
        (r"\pir^2", pi * sympy.Symbol("r") ** 2),  # what RLinf's strip_string leaves of "\pi r^2"
        (r"3\frac{1}{2}", sympy.Rational(7, 2)),  # a mixed number, not 3 * 1/2
        (r"3 \frac12", sympy.Rational(7, 2)),
        (r"x^2y", x**2 * y),  # implicit products the grammar rejects
        (r"\sqrt{2}x", sympy.sqrt(2) * x),
        (r"\frac12\sqrt2", sympy.sqrt(2) / 2),
        (r"(2)\sqrt{3}", 2 * sympy.sqrt(3)),
        (r"x(x+2)", x * (x + 2)),  # a product, not x applied to x+2
        (r"\sin x", sympy.sin(x)),
        (r"\log_2 8", 3),
        (r"\sqrt 3", sympy.sqrt(3)),
        (r"1{,}000", 1000),
        (r"1\,200", 1200),  # a thin-space separator, not 1 * 200
        (r"50\%", sympy.Rational(1, 2)),
        (r"30^\circ", 30),
        (r"e^{i\pi}", -1),
        (r"3+4i", 3 + 4 * I),
        (r"\emptyset", sympy.S.EmptySet),
    ],
)
def test_latex2sympy_reads(latex, value):
    assert sympy.simplify(g.latex2sympy(latex) - value) == 0 if value is not sympy.S.EmptySet else (
        g.latex2sympy(latex) == value)


def test_latex2sympy_reads_matrices_and_relations():
    assert g.latex2sympy(r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}") == sympy.Matrix([[1], [-2]])
    assert g.latex2sympy(r"y = 3 + 2x") == sympy.Eq(y, 2 * x + 3)


def test_latex2sympy_substitutes_variable_values_like_latex2sympy2():
    assert g.latex2sympy("x^2 + 1", {"x": 3}) == 10


def test_latex2sympy_raises_quietly_on_what_it_cannot_read(caplog):
    # RLinf's try-chain calls it on its own rewritings; the grader warns about the answer instead
    with caplog.at_level(logging.WARNING, logger="rlinf_pangu.math_grade"):
        with pytest.raises(g.LatexParseError):
            g.latex2sympy(r"\weird{3}")
    assert caplog.records == []


@pytest.mark.parametrize(
    "text, value, percent",
    [
        ("1,200", 1200, False), ("\\$1,250.50", None, False), ("1{,}000{,}000", 10**6, False), ("18 eggs", 18, False),
        ("45 miles per hour", 45, False), ("033", 33, False), ("-\\frac{2}{3}", g.Fraction(-2, 3), False),
        ("\\frac{-2}{3}", g.Fraction(-2, 3), False), ("3\\frac{1}{2}", g.Fraction(7, 2), False),
        ("3 1/2", g.Fraction(7, 2), False), (".5", g.Fraction(1, 2), False), ("25\\%", 25, True),
        ("25 percent", 25, True), ("1.2 \\times 10^{3}", 1200, False), ("10^6", 10**6, False),
        ("0.\\overline{3}", g.Fraction(1, 3), False), ("eighteen", 18, False),
    ],
)
def test_read_number(text, value, percent):
    if value is None:  # currency is removed by clean() first
        text, value = g.clean(text), g.Fraction(2501, 2)
    n = g.read_number(text)
    assert n is not None and n.value == value and n.percent == percent


@pytest.mark.parametrize("text", ["2x", "2 x", "2ab", "\\sqrt{2}", "4\\pi", "(1, 2)", "Monday"])
def test_not_a_plain_number(text):
    assert g.read_number(text) is None


@pytest.mark.parametrize(
    "pred, ref, same",
    [
        ("123457", "123456", False),  # RLinf: equal within a relative 1e-4
        ("0.72", "72", False),  # RLinf: equal up to a factor 100
        ("25\\%", "25", True),  # GSM8K stores a percent without its sign
        ("20\\%", "0.2", True),
        ("0.2", "20", False),
        ("(1,5)", "[1, 5)", False),  # RLinf: intervals compared without their brackets
        ("(3,\\infty)\\cup(-\\infty,-3)", "(-\\infty,-3)\\cup(3,\\infty)", True),
        ("(-3, 2)", "(2, -3)", False),  # a point is ordered
        ("3, 2, 1", "1, 2, 3", True),  # "all solutions" are not
        ("\\{1,2,3\\}", "1, 2, 3", True),
        ("x=-2, x=5", "-2, 5", True),
        ("\\frac{3}{2}", "3\\frac{1}{2}", False),
        ("\\textbf{(C)}", "\\text{(C)}", True),
        ("2^{10} = 1024", "1024", True),
        ("2x+3", "y = 2x + 3", True),
        ("(x+1)^2", "x^2+2x+1", True),
        ("x(x+2)", "x^2+2x", True),
        ("2 a^{2} b", "2a^2b", True),  # RLinf's unit stripping would drop the lone "a"
        ("\\sqrt{50}", "5\\sqrt{2}", True),
        ("-\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt{2}}{2}", False),
        ("\\u22127".encode().decode("unicode_escape"), "-7", True),
        ("Tuesday", "\\text{Monday}", False),
        ("x \\le 2", "x < 2", False),  # RLinf: compares |lhs - rhs| only
        ("x \\le 2", "(-\\infty, 2]", True),
        ("1 < x \\le 3", "(1, 3]", True),
        ("y \\ge x", "x \\le y", True),
        ("x+y \\le 3", "x + y < 3", False),
        ("7.2e3", "72", False),  # RLinf: a number 100x off passes
        ("7200 m", "72", False),  # ... also once its unit stripping left a bare number
        ("72 m", "72", True),
        ("\\{1,1,2\\}", "\\{1,2\\}", True),
        ("2^3", "1", False),  # plain sympy parsing reads 2^3 as 2 XOR 3
        ("I think the answer might be 5 or 6", "5", False),
        ("2a^2b", "B", False),  # RLinf: any lone letter B in the answer picks choice B
        ("(B) 12 apples", "B", True),
    ],
)
def test_equivalent(pred, ref, same):
    assert g.equivalent(pred, ref) is same


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so \\boxed{3} then \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("The answer is $(1, 2)$.", "$(1, 2)$."),
        ("Adding them.\n\n**Final answer:** 18", "18"),
        ("#### 72", "72"),
        ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
        ("just 42", None),
    ],
)
def test_marked_answer(text, answer):
    assert g.marked_answer(text) == answer


def test_an_unreadable_answer_is_warned_about_once_with_the_input(caplog):
    with caplog.at_level(logging.WARNING, logger="rlinf_pangu.math_grade"):
        for _ in range(3):
            assert g.grade("\\boxed{\\weird{3}}", ["5"]) is False
    hits = [r for r in caplog.records if "\\weird{3}" in r.getMessage()]
    assert len(hits) == 1 and hits[0].levelno == logging.WARNING


def test_grade_takes_any_of_several_references():
    assert g.grade("\\boxed{0.5}", ["\\frac{1}{3}", "\\frac{1}{2}"]) is True
    assert g.grade(None, ["5"]) is False and g.grade("  ", ["5"]) is False


# --- the pool ------------------------------------------------------------------------------------


def _slow_grade(answer, references):
    if answer == "slow":
        time.sleep(30)
    return answer == references[0]


def test_pool_grades_an_answer_past_its_time_limit_wrong_and_recovers(monkeypatch, caplog):
    monkeypatch.setattr(g, "grade", _slow_grade)  # forked workers inherit the stand-in
    pool = g.GradingPool(workers=2, timeout_s=1.0)
    try:
        with caplog.at_level(logging.WARNING, logger="rlinf_pangu.math_grade"):
            t0 = time.monotonic()
            assert pool.grade(["slow", "7", None], [["slow"], ["7"], ["7"]]) == [False, True, False]
            assert time.monotonic() - t0 < 15  # the 30 s answer was abandoned
        assert any("slow" in r.getMessage() for r in caplog.records)
        assert pool.grade(["7"], [["7"]]) == [True]  # a fresh pool after the stuck one was killed
    finally:
        pool.close()


def test_pool_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 answers but 1 references"):
        g.GradingPool(workers=0).grade(["1", "2"], [["1"]])


# --- failing loudly ----------------------------------------------------------------------------

BUILD_REWARD = (
    "import rlinf_pangu; rlinf_pangu.register()\n"
    "from rlinf.algorithms.rewards import get_rule_based_reward_class\n"
    "get_rule_based_reward_class('pangu_math')({'reward_min_val': 0.0})\n"
    "print('built')\n"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=fresh_env())


@pytest.mark.parametrize(
    "breakage",
    [
        "import sys; sys.modules['lark'] = None\n",  # not installed
        "import sys, types; sys.modules['lark'] = types.ModuleType('lark')\n",  # installed but broken
    ],
    ids=["lark-missing", "lark-broken"],
)
def test_a_missing_or_broken_parser_stops_the_reward_worker_at_start(breakage):
    p = _run(breakage + BUILD_REWARD)
    assert p.returncode != 0 and "built" not in p.stdout
    assert "ParserUnavailable" in p.stderr and "lark" in p.stderr and "constraints.txt" in p.stderr, p.stderr[-2000:]


def test_a_verifier_without_a_working_latex2sympy_stops_the_reward_at_start():
    # what the old stand-in did: latex2sympy2 imports, latex2sympy raises
    standin = (
        "import sys, types\n"
        "m = types.ModuleType('latex2sympy2')\n"
        "def latex2sympy(*a, **k): raise NotImplementedError('stand-in')\n"
        "m.latex2sympy = latex2sympy; sys.modules['latex2sympy2'] = m\n"
        "from rlinf_pangu.reward import PanguMathReward\n"
        "PanguMathReward({})\n"
        "print('built')\n"
    )
    p = _run(standin)
    assert p.returncode != 0 and "built" not in p.stdout
    assert "no working LaTeX parser" in p.stderr and "stand-in" in p.stderr, p.stderr[-2000:]


def test_the_patch_gives_rlinfs_verifier_the_lark_parser():
    p = _run(
        "import rlinf_pangu; rlinf_pangu.register()\n"
        "from rlinf.algorithms.rewards.math.math_verifier import verify\n"
        "from rlinf_pangu import math_grade\n"
        "assert verify.latex2sympy is math_grade.latex2sympy\n"
        # \\frac{1}{2} against 0.5 is what the stand-in graded wrong
        "print(verify.math_verify_call(['\\\\boxed{\\\\frac{1}{2}}', '\\\\boxed{2\\\\sqrt{3}}', '\\\\boxed{\\\\frac{1}{3}}'],"
        " [['0.5'], ['\\\\sqrt{12}'], ['0.5']]))\n"
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "[True, True, False]"


# --- properties over generated values -----------------------------------------------------------
# The labelled set holds hand-picked values; these check the same readings on values nobody picked.

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

INTEGER_FORMS = [
    lambda n: f"{n:,}", lambda n: f"{n:,}".replace(",", "{,}"), lambda n: f"\\${n:,}" if n >= 0 else f"-\\${-n:,}",
    lambda n: f"{n} dollars", lambda n: f"{n}.00", lambda n: f"{n}\\text{{ cm}}", lambda n: str(n),
]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(-10**7, 10**7), form=st.sampled_from(INTEGER_FORMS),
       slip=st.sampled_from([1, -1, 9, 10]), scale=st.sampled_from([10, 100]))
def test_an_integer_in_any_form_equals_itself_and_nothing_close(n, form, slip, scale):
    assert g.equivalent(form(n), str(n))
    assert not g.equivalent(form(n + slip), str(n))
    assert n == 0 or not g.equivalent(form(n * scale), str(n))


@settings(max_examples=150, deadline=None)
@given(p=st.integers(1, 500), q=st.integers(2, 60), k=st.integers(2, 9), negative=st.booleans())
def test_a_fraction_equals_its_other_spellings_and_not_its_misreadings(p, q, k, negative):
    f = g.Fraction(p, q)
    sign = "-" if negative else ""
    ref = f"{sign}\\frac{{{f.numerator}}}{{{f.denominator}}}"
    assert g.equivalent(f"{sign}\\frac{{{k * f.numerator}}}{{{k * f.denominator}}}", ref)
    assert g.equivalent(f"{sign}{f.numerator}/{f.denominator}", ref)
    assert not g.equivalent(f"{'' if negative else '-'}\\frac{{{f.numerator}}}{{{f.denominator}}}", ref)  # sign
    if f.denominator in (2, 4, 5, 8, 10, 20, 25, 40, 50):  # a finite decimal
        assert g.equivalent(f"{sign}{float(f)!r}", ref)
    whole, rest = divmod(f.numerator, f.denominator)
    if whole and rest:  # the mixed number, and the product a careless reading of it gives
        assert g.equivalent(f"{sign}{whole}\\frac{{{rest}}}{{{f.denominator}}}", ref)
        product = g.Fraction(whole * rest, f.denominator)
        assert product == f or not g.equivalent(f"{sign}\\frac{{{product.numerator}}}{{{product.denominator}}}",
                                                f"{sign}{whole}\\frac{{{rest}}}{{{f.denominator}}}")


@settings(max_examples=12, deadline=None)  # these go through the LaTeX parser (~50 ms a distinct input)
@given(k=st.integers(2, 9), m=st.sampled_from([2, 3, 5, 6, 7, 10, 11]))
def test_a_radical_equals_its_unsimplified_form_and_not_a_neighbour(k, m):
    ref = f"{k}\\sqrt{{{m}}}"
    assert g.equivalent(f"\\sqrt{{{k * k * m}}}", ref)
    assert not g.equivalent(f"\\sqrt{{{k * k * m + 1}}}", ref)
    assert not g.equivalent(f"-{k}\\sqrt{{{m}}}", ref)


@settings(max_examples=100, deadline=None)
@given(a=st.integers(-50, 50), b=st.integers(-50, 50), lo=st.sampled_from("(["), hi=st.sampled_from(")]"))
def test_points_are_ordered_and_intervals_keep_their_brackets(a, b, lo, hi):
    assert g.equivalent(f"({a}, {b})", f"({a},{b})")
    assert a == b or not g.equivalent(f"({b}, {a})", f"({a}, {b})")
    interval = f"{lo}{min(a, b)}, {max(a, b) + 1}{hi}"
    assert g.equivalent(interval.replace(", ", ","), interval)
    other = ("[" if lo == "(" else "(") + interval[1:]
    assert not g.equivalent(other, interval)  # one bracket changed: another interval
    assert g.equivalent(f"{b}, {a}", f"{a}, {b}")  # "all solutions": any order


def test_pool_grades_a_repeated_final_answer_once(monkeypatch):
    calls = []

    def counting(answer, references):
        calls.append(answer)
        return g.final_answer(answer) == references[0]

    monkeypatch.setattr(g, "grade", counting)
    pool = g.GradingPool(workers=0)
    answers = ["so \\boxed{7}", "hence \\boxed{7}", "\\boxed{8}", None, "\\boxed{7}"]
    assert pool.grade(answers, [["7"], ["7"], ["7"], ["7"], ["8"]]) == [True, True, False, False, False]
    assert len(calls) == 3  # (7, [7]) once, (8, [7]), (7, [8])

"""Builds tests/data/math_answers.jsonl: labelled (completion, reference, correct?) triples.

Why: the math reward is the training signal, so its grader is judged on a fixed labelled set in
the forms MATH, GSM8K and AIME answers take, written into Pangu completions
(``[unused16] thinking [unused17] answer [unused10]``). Every case below was written by hand from
the answer formats (no benchmark file was read or copied); the script only multiplies each
answer value by presentation (``\\boxed{}``, "the answer is", bare, ...) and thinking context,
deterministically, so the file is reproducible: ``python tests/data/make_math_answers.py``
rewrites it, and tests/test_reward_accuracy.py checks the committed file equals its output.

The labels follow these conventions (what a math teacher grading the final answer would accept):

1. Same value is correct: units, currency signs, thousands separators (``1,200``, ``1{,}200``,
   ``1\\,200``), ``^\\circ``/"degrees", ``\\text{}`` wrappers, trailing zeros and leading zeros
   (AIME's ``033``) do not matter.
2. Percent: an answer is correct if it equals the reference with a ``%`` read either as /100 or as
   a decoration (GSM8K stores percents without the sign: ``20\\%`` is right for ``20``, and
   ``20\\%`` is right for ``0.2``); with no ``%`` on either side the numbers must be equal
   (``0.2`` is wrong for ``20``).
3. Numbers are compared exactly: ``123457`` is wrong for ``123456`` and ``0.74`` for ``3/4``.
   (No approximation of an irrational reference is in the set; whether ``3.46`` earns
   ``2\\sqrt{3}`` is a policy choice, not a grading one.)
4. A mixed number ``3\\frac{1}{2}`` is 7/2, never 3/2.
5. Tuples and points are ordered; intervals must match endpoints and bracket types; sets and
   "all solutions separated by commas" lists are unordered, and a braced set equals a comma list
   of the same elements. ``y = 2x + 3`` equals ``2x + 3`` (a named function or line).
6. Multiple choice: the letter, with or without parentheses, ``\\text{}`` or ``\\textbf{}``.
7. Only the text after the last ``[unused17]`` (up to ``[unused10]``) is the answer: a
   completion that opened its thinking and never closed it has no answer (wrong, whatever it
   says); a completion with no thinking markers at all (fast mode) is all answer.
8. Within the answer: the last ``\\boxed{}``, else what follows "the answer is", else the whole
   answer text (which then holds only the value).

Hard negatives (``hard: true``) are wrong answers a lenient grader is likely to pass: close
numbers, wrong sign, a scale slip (``0.72`` for ``72``), an improper fraction for a mixed number,
a wrong bracket on an interval, swapped tuple entries, the right value only inside the thinking
or in an unfinished thinking.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("math_answers.jsonl")

# --------------------------------------------------------------------------------------------
# Answer values: (reference, source, [(answer value, correct?, hard negative?), ...]).
# T/F: correct or wrong; H: a hard negative (always wrong).
# --------------------------------------------------------------------------------------------
T, F, H = "T", "F", "H"

CASES: dict[str, list[tuple[str, str, list[tuple[str, str]]]]] = {
    "integer_separators_units": [
        ("1200", "gsm8k", [
            ("1200", T), ("1,200", T), ("\\$1,200", T), ("1200 dollars", T), ("\\$1200.00", T),
            ("1{,}200", T), ("1\\,200", T), ("1,200\\text{ dollars}", T),
            ("1,201", H), ("1100", F), ("12000", H), ("-1200", H), ("120", H),
        ]),
        ("18", "gsm8k", [
            ("18", T), ("18 eggs", T), ("\\$18", T), ("18.00", T), ("18.0", T), ("eighteen", T),
            ("\\text{18 eggs}", T),
            ("17", H), ("19", H), ("1.8", H), ("180", F), ("-18", H),
        ]),
        ("72", "gsm8k", [
            ("72", T), ("72 cupcakes", T), ("72\\text{ cupcakes}", T), ("72.0", T),
            ("0.72", H), ("7200", H), ("73", H), ("27", F),
        ]),
        ("1000000", "gsm8k", [
            ("1,000,000", T), ("1000000", T), ("10^6", T), ("1{,}000{,}000", T), ("1 \\times 10^{6}", T),
            ("1,000,001", H), ("999,999", H), ("100,000", H),
        ]),
        ("123456", "gsm8k", [
            ("123,456", T), ("123456", T),
            ("123457", H), ("123,455", H), ("123465", H),
        ]),
        ("3", "gsm8k", [
            ("3 hours", T), ("3\\text{ hours}", T), ("3 \\mathrm{hours}", T), ("3.", T),
            ("4 hours", F), ("-3", H), ("0.3", H),
        ]),
        ("45", "gsm8k", [
            ("45 km/h", T), ("45\\text{ km/h}", T), ("45 miles per hour", T),
            ("54", F), ("44", H), ("4.5", H),
        ]),
        ("5", "gsm8k", [
            ("5 cm", T), ("5\\text{ cm}", T), ("5\\,\\mathrm{cm}", T), ("five", T),
            ("6 cm", F), ("5.5", H), ("-5", H),
        ]),
        ("1250.5", "gsm8k", [
            ("\\$1,250.50", T), ("1250.50", T), ("1{,}250.5", T),
            ("1250.05", H), ("1250", H), ("125.05", F),
        ]),
        ("0", "gsm8k", [
            ("0", T), ("0.0", T), ("\\$0", T),
            ("1", F), ("10", F),
        ]),
        ("-7", "math", [
            ("-7", T), ("- 7", T), ("-7.0", T),
            ("7", H), ("-6", H), ("-17", F),
        ]),
    ],
    "aime_integer": [
        ("33", "aime", [("33", T), ("033", T), ("33.0", T), ("34", H), ("330", H), ("3", F)]),
        ("5", "aime", [("5", T), ("005", T), ("50", H), ("500", F), ("6", H)]),
        ("250", "aime", [("250", T), ("250.0", T), ("205", H), ("25", H), ("251", H)]),
        ("999", "aime", [("999", T), ("998", H), ("99", F)]),
        ("120", "aime", [("120", T), ("5!", T), ("\\binom{10}{3}", T), ("121", H), ("720", F)]),
        ("1024", "aime", [("2^{10}", T), ("1024", T), ("2^{10} = 1024", T), ("1023", H), ("2^{11}", F)]),
        ("3", "aime", [("\\log_2 8", T), ("3", T), ("\\log_2 9", F)]),
    ],
    "fraction_mixed": [
        ("\\frac{3}{4}", "math", [
            ("\\frac{3}{4}", T), ("3/4", T), ("\\dfrac{3}{4}", T), ("\\tfrac34", T), ("0.75", T), ("\\frac{6}{8}", T),
            ("\\frac{4}{3}", F), ("-\\frac{3}{4}", H), ("0.74", H), ("\\frac{3}{5}", F), ("34", H),
        ]),
        ("\\frac{7}{2}", "math", [
            ("3\\frac{1}{2}", T), ("3 \\frac12", T), ("3.5", T), ("7/2", T), ("\\frac{14}{4}", T),
            ("\\frac{3}{2}", H), ("\\frac{2}{7}", F), ("3.4", H),
        ]),
        ("3\\frac{1}{2}", "math", [
            ("\\frac{7}{2}", T), ("3.5", T), ("3\\tfrac{1}{2}", T),
            ("\\frac{3}{2}", H), ("1.5", H),
        ]),
        ("2\\frac{1}{4}", "gsm8k", [
            ("2.25", T), ("\\frac{9}{4}", T), ("9/4", T),
            ("\\frac{1}{2}", H), ("2.5", F),
        ]),
        ("-\\frac{2}{3}", "math", [
            ("-\\frac{2}{3}", T), ("\\frac{-2}{3}", T), ("-2/3", T), ("\\frac{2}{-3}", T), ("-\\dfrac{4}{6}", T),
            ("\\frac{2}{3}", H), ("-\\frac{3}{2}", F), ("-0.67", H),
        ]),
        ("\\frac{1}{6}", "math", [
            ("\\frac{1}{6}", T), ("\\frac16", T), ("1/6", T), ("\\frac{2}{12}", T),
            ("\\frac{1}{5}", H), ("6", F), ("-\\frac16", H),
        ]),
        ("\\frac{5}{12}", "math", [
            ("\\frac{5}{12}", T), ("\\frac{10}{24}", T), ("5/12", T),
            ("\\frac{7}{12}", F), ("\\frac{5}{11}", H), ("0.41", H),
        ]),
    ],
    "decimal": [
        ("0.5", "gsm8k", [
            ("0.5", T), ("\\frac12", T), (".5", T), ("0.50", T), ("1/2", T),
            ("0.05", H), ("5", H), ("-0.5", H), ("0.51", H),
        ]),
        ("2.25", "math", [
            ("2.25", T), ("\\frac{9}{4}", T), ("2\\frac14", T), ("2.250", T),
            ("2.24", H), ("2.52", F), ("225", H),
        ]),
        ("0.125", "math", [
            ("\\frac18", T), ("0.125", T), ("1/8", T),
            ("0.0125", H), ("0.126", H), ("8", F),
        ]),
        ("1.5", "gsm8k", [
            ("1.5", T), ("\\frac32", T), ("1\\frac12", T), ("1.50", T),
            ("150", H), ("15", H), ("1.05", H),
        ]),
        ("3.6", "gsm8k", [
            ("3.6", T), ("\\frac{18}{5}", T), ("3.60", T),
            ("3.06", H), ("36", H), ("6.3", F),
        ]),
        ("1200", "math", [("1.2 \\times 10^{3}", T), ("1.2\\times10^3", T), ("1.2 \\times 10^{4}", H)]),
    ],
    "radical": [
        ("2\\sqrt{3}", "math", [
            ("2\\sqrt{3}", T), ("\\sqrt{12}", T), ("2 \\sqrt 3", T), ("2\\sqrt3", T), ("\\sqrt{3} \\cdot 2", T),
            ("2 \\times \\sqrt{3}", T), ("\\frac{6}{\\sqrt{3}}", T),
            ("3\\sqrt{2}", F), ("\\sqrt{6}", F), ("2\\sqrt{2}", H), ("-2\\sqrt{3}", H), ("\\sqrt{13}", H),
        ]),
        ("\\frac{\\sqrt{2}}{2}", "math", [
            ("\\frac{\\sqrt{2}}{2}", T), ("\\frac{1}{\\sqrt{2}}", T), ("\\frac{\\sqrt2}{2}", T), ("\\sqrt{2}/2", T),
            ("\\frac{1}{2}\\sqrt{2}", T),
            ("\\sqrt{2}", F), ("\\frac{\\sqrt{3}}{2}", H), ("-\\frac{\\sqrt{2}}{2}", H),
        ]),
        ("5\\sqrt{2}", "math", [
            ("\\sqrt{50}", T), ("5\\sqrt2", T), ("5 \\sqrt{2}", T),
            ("\\sqrt{52}", H), ("5\\sqrt{3}", H), ("2\\sqrt{5}", F),
        ]),
        ("\\sqrt[3]{2}", "math", [
            ("\\sqrt[3]{2}", T), ("2^{1/3}", T), ("2^{\\frac{1}{3}}", T),
            ("\\sqrt{2}", H), ("\\sqrt[3]{3}", F),
        ]),
        ("\\frac{1+\\sqrt{5}}{2}", "math", [
            ("\\frac{1+\\sqrt{5}}{2}", T), ("\\frac{\\sqrt5+1}{2}", T), ("\\frac12+\\frac{\\sqrt5}{2}", T),
            ("\\frac{1-\\sqrt{5}}{2}", H), ("\\frac{1+\\sqrt{3}}{2}", H), ("1+\\sqrt{5}", F),
        ]),
        ("3\\sqrt{3}-1", "math", [
            ("-1+3\\sqrt{3}", T), ("\\sqrt{27}-1", T),
            ("1-3\\sqrt{3}", H), ("3\\sqrt{3}+1", H),
        ]),
    ],
    "pi": [
        ("4\\pi", "math", [
            ("4\\pi", T), ("4 \\pi", T), ("\\pi \\cdot 4", T), ("4\\pi\\text{ cm}^2", T), ("\\frac{8\\pi}{2}", T),
            ("4", H), ("2\\pi", F), ("8\\pi", H), ("-4\\pi", H), ("16\\pi", F),
        ]),
        ("\\frac{\\pi}{3}", "math", [
            ("\\frac{\\pi}{3}", T), ("\\frac{1}{3}\\pi", T), ("\\pi/3", T), ("\\frac13\\pi", T),
            ("\\frac{\\pi}{6}", F), ("\\frac{2\\pi}{3}", H), ("\\frac{3}{\\pi}", H),
        ]),
        ("25\\pi", "math", [("25\\pi", T), ("\\pi \\times 25", T), ("25 \\pi", T), ("25", H), ("24\\pi", H)]),
        ("2\\pi-4", "math", [
            ("2\\pi-4", T), ("-4+2\\pi", T), ("2(\\pi-2)", T),
            ("4-2\\pi", H), ("2\\pi+4", H), ("2\\pi", F),
        ]),
        ("\\frac{32\\pi}{3}", "math", [
            ("\\frac{32}{3}\\pi", T), ("\\frac{32\\pi}{3}", T), ("32\\pi/3", T),
            ("\\frac{32\\pi}{9}", F), ("\\frac{23\\pi}{3}", H),
        ]),
        ("\\pi^2", "math", [("\\pi^2", T), ("\\pi\\cdot\\pi", T), ("2\\pi", H), ("\\pi", F)]),
    ],
    "interval": [
        ("(-\\infty, 2]", "math", [
            ("(-\\infty, 2]", T), ("(-\\infty,2]", T), ("\\left(-\\infty, 2\\right]", T), ("x \\in (-\\infty, 2]", T),
            ("(-\\infty, 2)", H), ("[2, \\infty)", F), ("(-\\infty, -2]", H), ("x \\le 2", T), ("x < 2", H),
        ]),
        ("[1, 5)", "math", [
            ("[1,5)", T), ("\\left[1, 5\\right)", T),
            ("(1,5)", H), ("[1,5]", H), ("(1,5]", H), ("[1,6)", H), ("1 \\le x < 5", T), ("1 < x < 5", H),
        ]),
        ("(-\\infty,-3)\\cup(3,\\infty)", "math", [
            ("(-\\infty, -3) \\cup (3, \\infty)", T), ("(3,\\infty)\\cup(-\\infty,-3)", T),
            ("(-\\infty,-3]\\cup[3,\\infty)", H), ("(-3,3)", F), ("(-\\infty,3)\\cup(3,\\infty)", H),
        ]),
        ("[0, 1]", "math", [("[0,1]", T), ("[0, 1]", T), ("(0,1)", H), ("[0,2]", F), ("[-1,1]", H)]),
        ("\\left( \\frac{1}{2}, 4 \\right]", "math", [
            ("(\\frac12, 4]", T), ("(0.5, 4]", T), ("\\left(\\dfrac{1}{2},4\\right]", T),
            ("[\\frac12, 4]", H), ("(\\frac12, 4)", H), ("(2, 4]", F),
        ]),
    ],
    "tuple_set": [
        ("(2, -3)", "math", [
            ("(2,-3)", T), ("\\left(2, -3\\right)", T), ("(2, -3)", T),
            ("(-3, 2)", H), ("(2,3)", H), ("(-2,-3)", H), ("(2,-3,0)", F),
        ]),
        ("\\left(1, \\frac{1}{2}\\right)", "math", [
            ("(1, 0.5)", T), ("(1,1/2)", T), ("\\left( 1, \\frac12 \\right)", T),
            ("(\\frac12, 1)", H), ("(1, 2)", F),
        ]),
        ("(3, 4, 5)", "math", [("(3,4,5)", T), ("(3, 4, 5)", T), ("(3,5,4)", H), ("(3,4,6)", H)]),
        ("1, 2, 3", "math", [
            ("1, 2, 3", T), ("3, 2, 1", T), ("\\{1,2,3\\}", T), ("2,3,1", T),
            ("1, 2", F), ("1, 2, 4", H), ("1, 2, 3, 4", F),
        ]),
        ("\\{-1, 4\\}", "math", [
            ("\\{-1,4\\}", T), ("4, -1", T), ("-1, 4", T), ("\\{4, -1\\}", T),
            ("\\{1,4\\}", H), ("-1", F), ("\\{-1, -4\\}", H),
        ]),
        ("-2, 5", "math", [
            ("5, -2", T), ("-2,5", T), ("x=-2, x=5", T),
            ("2, -5", H), ("-2, 6", H),
        ]),
        ("\\frac{1}{2}, -3", "math", [
            ("-3, \\frac12", T), ("0.5, -3", T), ("\\frac12,-3", T),
            ("\\frac12, 3", H), ("2, -3", F),
        ]),
        ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", "math", [
            ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", T), ("\\begin{pmatrix}1\\\\-2\\end{pmatrix}", T),
            ("\\begin{pmatrix} -2 \\\\ 1 \\end{pmatrix}", H), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", H),
        ]),
    ],
    "polynomial": [
        ("x^2+2x+1", "math", [
            ("x^2+2x+1", T), ("(x+1)^2", T), ("1+2x+x^2", T), ("x^2 + 2x + 1", T), ("x^{2}+2x+1", T),
            ("x^2+2x-1", H), ("(x-1)^2", H), ("x^2+x+1", F),
        ]),
        ("(x-2)(x+3)", "math", [
            ("(x-2)(x+3)", T), ("x^2+x-6", T), ("(x+3)(x-2)", T),
            ("(x+2)(x-3)", H), ("x^2-x-6", H), ("(x-2)(x+2)", F),
        ]),
        ("3x^3-5x+2", "math", [
            ("3x^3-5x+2", T), ("2-5x+3x^3", T), ("3x^{3} - 5x + 2", T),
            ("3x^3+5x+2", H), ("3x^3-5x-2", H), ("3x^2-5x+2", F),
        ]),
        ("y = 2x + 3", "math", [
            ("y=2x+3", T), ("2x+3", T), ("y = 3 + 2x", T),
            ("y=3x+2", F), ("y=2x-3", H),
        ]),
        ("\\frac{x+1}{x-1}", "math", [
            ("\\frac{x+1}{x-1}", T), ("\\frac{1+x}{x-1}", T), ("(x+1)/(x-1)", T),
            ("\\frac{x-1}{x+1}", H), ("\\frac{x+1}{1-x}", H),
        ]),
        ("2a^2b", "math", [("2a^2b", T), ("2ba^2", T), ("2 a^{2} b", T), ("2ab^2", H), ("2a^2b^2", F)]),
    ],
    "degree_percent": [
        ("30", "math", [
            ("30^\\circ", T), ("30^{\\circ}", T), ("30 degrees", T), ("30°", T), ("30", T),
            ("60^\\circ", F), ("-30^\\circ", H), ("31^\\circ", H),
        ]),
        ("45^\\circ", "math", [("45", T), ("45°", T), ("45^{\\circ}", T), ("135^\\circ", F), ("44^\\circ", H)]),
        ("25", "gsm8k", [
            ("25\\%", T), ("25 \\%", T), ("25 percent", T), ("25%", T),
            ("0.25", H), ("26\\%", H), ("2.5\\%", H), ("2500", H),
        ]),
        ("12.5\\%", "math", [("12.5\\%", T), ("12.5", T), ("0.125", T), ("1.25\\%", H), ("125", H)]),
        ("0.2", "gsm8k", [("20\\%", T), ("0.2", T), ("\\frac{1}{5}", T), ("2\\%", H), ("20", H)]),
        ("40", "gsm8k", [("40\\%", T), ("40", T), ("0.4", H), ("4", H), ("400", H)]),
    ],
    "more_forms": [
        ("18", "gsm8k", [
            ("#### 18", T), ("\u221218", H), ("**18**", T), ("18\\text{ dollars}", T), ("\\$18.00", T),
            (": 18", T), ("x = 18", T), ("#### 81", F),
        ]),
        ("-7", "math", [("\u22127", T), ("\u22126", H), ("\u2212 7", T)]),
        ("2\\sqrt{3}", "math", [("2\u221a3", T), ("\u221a12", T), ("3\u221a2", F)]),
        ("4\\pi", "math", [("4\u03c0", T), ("2\u03c0", F)]),
        ("\\frac{1}{3}", "math", [
            ("0.\\overline{3}", T), ("\\frac{2}{6}", T), ("3^{-1}", T),
            ("0.333", H), ("0.\\overline{6}", F), ("\\frac{1}{3}\\pi", H),
        ]),
        ("\\frac{\\sqrt{3}}{3}", "math", [("\\frac{1}{\\sqrt{3}}", T), ("\\sqrt{3}/3", T), ("\\frac{\\sqrt{3}}{2}", H), ("\\sqrt{3}", F)]),
        ("\\sqrt{6}", "math", [("\\sqrt{2}\\cdot\\sqrt{3}", T), ("\\sqrt{2}\\sqrt{3}", T), ("\\sqrt{5}", H), ("6", F)]),
        ("\\frac{\\pi}{2}", "math", [("0.5\\pi", T), ("\\frac{1}{2}\\pi", T), ("\\pi/2", T), ("2\\pi", F), ("\\frac{\\pi}{4}", H)]),
        ("x^2+2x", "math", [("x(x+2)", T), ("x^2 + 2 x", T), ("x(x-2)", H), ("x^2+2", F)]),
        ("1-x^2", "math", [("-x^2+1", T), ("(1-x)(1+x)", T), ("x^2-1", H), ("1+x^2", H)]),
        ("3x+3", "math", [("3(x+1)", T), ("3 (x + 1)", T), ("3(x-1)", H)]),
        ("\\frac{1}{x}", "math", [("x^{-1}", T), ("1/x", T), ("x", F), ("-\\frac{1}{x}", H)]),
        ("300000000", "gsm8k", [
            ("3 \\times 10^8", T), ("3.0\\times 10^{8}", T), ("300,000,000", T),
            ("3 \\times 10^{9}", H), ("30,000,000", H),
        ]),
        ("80", "aime", [("080", T), ("80.00", T), ("\\text{80}", T), ("08", H), ("800", H)]),
        ("\\frac{1}{2}", "math", [("50\\%", T), ("0.5", T), ("2^{-1}", T), ("5\\%", H), ("50", H)]),
        ("0.5", "gsm8k", [("\\$0.50", T), ("\\$5.00", H)]),
        ("(-\\infty, \\infty)", "math", [("(-\\infty,\\infty)", T), ("\\mathbb{R}", T), ("[0, \\infty)", F)]),
        ("\\{\\frac{1}{2}, 2\\}", "math", [("2, \\frac12", T), ("\\{0.5, 2\\}", T), ("\\{\\frac12, -2\\}", H), ("2", F)]),
        ("(0, 0)", "math", [("(0,0)", T), ("\\left(0, 0\\right)", T), ("(0, 1)", H), ("0", F)]),
        ("E", "math", [("\\textbf{(E)}", T), ("(E)", T), ("\\mathrm{(E)}", T), ("(D)", F)]),
    ],
    "text_choice": [
        ("B", "math", [
            ("B", T), ("(B)", T), ("\\text{(B)}", T), ("\\textbf{(B)}", T), ("\\text{B}", T),
            ("C", F), ("(A)", F), ("\\text{(D)}", F),
        ]),
        ("\\text{(C)}", "math", [("C", T), ("(C)", T), ("\\textbf{(C)} ", T), ("(E)", F), ("B", F)]),
        ("\\text{Monday}", "math", [("Monday", T), ("\\text{Monday}", T), ("\\text{monday}", T), ("Tuesday", F)]),
        ("\\text{odd}", "math", [("odd", T), ("\\text{odd}", T), ("\\text{even}", F), ("even", F)]),
        ("\\text{Yes}", "math", [("Yes", T), ("\\text{yes}", T), ("No", F)]),
    ],
}

# --------------------------------------------------------------------------------------------
# How a value is written in the answer part (X is the value).
# --------------------------------------------------------------------------------------------
PRESENTATIONS = [
    "\\boxed{X}",
    "The answer is X.",
    "The answer is $X$.",
    "So the final answer is $\\boxed{X}$.",
    "Putting it together, we get \\[\\boxed{X}\\]",
    "X",
    "$X$",
    "Final Answer: The final answer is $X$. I hope it is correct.",
    "We found 2 candidates and checked both of them.\n\nTherefore the answer is \\boxed{X}.",
    "**Answer:** $\\boxed{X}$",
]
THINKING = [
    "Let me work through this step by step. First I set up the equation, then solve it.",
    "We need 3 quantities. Try 12 first: that fails. Then 7, 9 ... let me recheck the arithmetic.",
    "Hmm, the problem asks for the final value. Compute carefully: 2 + 2 = 4, times 5 is 20.",
]


def _completion(value: str, i: int) -> tuple[str, str]:
    """The i-th presentation of ``value`` in a Pangu completion; returns (completion, how)."""
    pres = PRESENTATIONS[i % len(PRESENTATIONS)]
    if value.startswith("####"):  # GSM8K's own final-answer line: never wrapped in another marker
        pres = "X"
    answer = pres.replace("X", value)
    mode = i % 3  # thinking closed / fast mode (no markers) / thinking closed, EOS and a tail
    think = THINKING[i % len(THINKING)]
    if mode == 0:
        return f"[unused16]{think}[unused17]{answer}[unused10]", "thinking"
    if mode == 1:
        return answer, "fast"
    return f"[unused16]{think}\n[unused17]\n{answer}[unused10] 42 ignored tail", "thinking+tail"


def value_rows() -> list[dict]:
    rows, i = [], 0
    for category, cases in CASES.items():
        for reference, source, answers in cases:
            for value, kind in answers:
                completion, how = _completion(value, i)
                rows.append({
                    "category": category, "source": source, "completion": completion, "reference": reference,
                    "correct": kind == T, "hard": kind == H, "form": how, "value": value,
                })
                i += 1
    return rows


# --------------------------------------------------------------------------------------------
# Thinking-aware cases: where the answer sits relative to [unused16] / [unused17].
# (completion, reference, correct?, hard?, note)
# --------------------------------------------------------------------------------------------
THINKING_CASES = [
    ("[unused16]So the total is 72, i.e. \\boxed{72}.[unused17]The answer is 70.[unused10]", "72", False, True,
     "right number boxed in the thinking, wrong one after"),
    ("[unused16]x = 18 works.[unused17]\\boxed{16}[unused10]", "18", False, True, "right in thinking, wrong after"),
    ("[unused16]The answer is \\frac{3}{4}.[unused17]The answer is $\\frac{4}{3}$.[unused10]", "\\frac{3}{4}", False,
     True, "right fraction in thinking, inverted after"),
    ("[unused16]I get 2\\sqrt{3}, so \\boxed{2\\sqrt{3}}[unused17]\\boxed{3\\sqrt{2}}[unused10]", "2\\sqrt{3}", False,
     True, "right radical in thinking, wrong after"),
    ("[unused16]It is (2,-3).[unused17]So the point is $\\boxed{(-3,2)}$.[unused10]", "(2, -3)", False, True,
     "right point in thinking, swapped after"),
    ("[unused16]the answer is 33[unused17]34[unused10]", "33", False, True, "right in thinking, bare wrong after"),
    ("[unused16]Let me compute: 1200 dollars. \\boxed{1200}", "1200", False, True,
     "unfinished thinking with the right answer boxed"),
    ("[unused16]The answer is \\frac{7}{2}. Let me double check by", "\\frac{7}{2}", False, True,
     "unfinished thinking with the right answer stated"),
    ("[unused16]so \\boxed{4\\pi}[unused10]", "4\\pi", False, True, "thinking never closed before EOS"),
    ("[unused16]It is 5.[unused17][unused10]", "5", False, True, "closed thinking, empty answer"),
    ("[unused16]It is 5.[unused17]   [unused10]", "5", False, True, "closed thinking, blank answer"),
    ("[unused16]maybe 6? no, 5.[unused17]\\boxed{5}[unused10]", "5", True, False, "wrong in thinking, right after"),
    ("[unused16]maybe \\boxed{7}? no[unused17]The answer is 6.[unused10]", "6", True, False,
     "wrong boxed in thinking, right after"),
    ("[unused16]first try \\frac{3}{2}[unused17]The answer is $3\\frac{1}{2}$.[unused10]", "\\frac{7}{2}", True, False,
     "improper fraction in thinking, mixed number after"),
    ("[unused16]x=3[unused17]x=3[unused10]", "3", True, False, "same in both"),
    ("[unused16]A[unused17]hmm[unused16]B[unused17]\\boxed{B}[unused10]", "B", True, False,
     "two thinking blocks: the last answer counts"),
    ("[unused16]check[unused17]\\boxed{42}[unused10]\\boxed{41}", "42", True, False, "text after EOS is ignored"),
    ("[unused16]check[unused17]\\boxed{41}[unused10]\\boxed{42}", "42", False, True,
     "right number only after EOS"),
    ("The answer is \\boxed{12}.", "12", True, False, "fast mode, no markers"),
    ("The answer is \\boxed{13}.", "12", False, True, "fast mode, close number"),
    ("[unused16]" + "long reasoning " * 40 + "[unused17]\\boxed{\\frac{1}{6}}[unused10]", "\\frac16", True, False,
     "long thinking, right after"),
    ("[unused16]" + "long reasoning " * 40 + "so \\boxed{\\frac{1}{6}}", "\\frac16", False, True,
     "long unfinished thinking ending in the right answer"),
    ("[unused16]A[unused17]答案是 18[unused10]", "18", True, False, "Chinese answer marker"),
    ("[unused16]A[unused17]\\boxed{\\text{(B)}}[unused10]", "B", True, False, "choice after thinking"),
    ("[unused16]It's (B)[unused17]\\boxed{\\text{(C)}}[unused10]", "B", False, True, "right choice only in thinking"),
    ("[unused16]sum the costs[unused17]Adding 12 and 6 gives the total.\n\n**Final answer:** 18[unused10]", "18", True,
     False, "a summary, then a bold 'Final answer:' line"),
    ("[unused16]sum the costs[unused17]Adding 12 and 6 gives the total.\n\n**Final answer:** 16[unused10]", "18", False,
     True, "a summary with the right parts, then a wrong 'Final answer:' line"),
    ("[unused16]sum[unused17]So she pays $18$ dollars in total.\n\nAnswer: $18$[unused10]", "18", True, False,
     "an 'Answer:' line"),
    ("[unused16]solve[unused17]The solutions are $x = 1$ and $x = 4$, so the answer is $\\boxed{1, 4}$.[unused10]",
     "1, 4", True, False, "a list boxed after a sentence"),
    ("[unused16]solve[unused17]Therefore, the final answer is: $\\boxed{\\dfrac{5}{12}}$[unused10]", "\\frac{5}{12}",
     True, False, "the final answer is: $\\boxed{}$"),
    ("[unused16]solve[unused17]Therefore, the final answer is: $\\boxed{\\dfrac{5}{11}}$[unused10]", "\\frac{5}{12}",
     False, True, "a close fraction, boxed"),
    ("[unused16]compute 17*3 = 51[unused17]\\[\n\\boxed{51}\n\\][unused10]", "51", True, False, "display math box"),
    ("[unused16]compute 17*3 = 51[unused17]\\[\n\\boxed{15}\n\\][unused10]", "51", False, True,
     "digits swapped after a right thinking"),
]

# References given as a whole solution (RLinf extracts the last \boxed{} from it), MATH style.
SOLUTION_REFERENCES = [
    ("[unused16]x[unused17]\\boxed{\\frac{5}{2}}[unused10]",
     "Adding the two equations gives $2x = 5$, so $x = \\boxed{\\frac{5}{2}}$.", True, False,
     "reference is a full solution"),
    ("[unused16]x[unused17]\\boxed{2.5}[unused10]",
     "Adding the two equations gives $2x = 5$, so $x = \\boxed{\\frac{5}{2}}$.", True, False,
     "decimal against a full solution"),
    ("[unused16]x[unused17]\\boxed{5}[unused10]",
     "Adding the two equations gives $2x = 5$, so $x = \\boxed{\\frac{5}{2}}$.", False, True,
     "the solution's intermediate number, not its answer"),
    ("[unused16]x[unused17]\\boxed{(1,4)}[unused10]",
     "The roots are $1$ and $4$, so the point is $\\boxed{(1,4)}$.", True, False, "point from a full solution"),
]


def special_rows() -> list[dict]:
    rows = []
    for category, cases in (("thinking", THINKING_CASES), ("solution_reference", SOLUTION_REFERENCES)):
        for completion, reference, correct, hard, note in cases:
            rows.append({
                "category": category, "source": "math", "completion": completion, "reference": reference,
                "correct": correct, "hard": hard, "form": "special", "note": note,
            })
    return rows


def build() -> list[dict]:
    rows = value_rows() + special_rows()
    for n, row in enumerate(rows):
        row["id"] = n
        assert not (row["correct"] and row["hard"]), row
    return rows


def render(rows: list[dict]) -> str:
    keys = ("id", "category", "source", "correct", "hard", "reference", "completion", "form", "value", "note")
    return "".join(json.dumps({k: r[k] for k in keys if k in r}, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    rows = build()
    OUT.write_text(render(rows))
    hard = sum(r["hard"] for r in rows)
    right = sum(r["correct"] for r in rows)
    print(f"wrote {OUT} ({len(rows)} rows: {right} correct, {len(rows) - right} wrong, {hard} hard negatives)")


if __name__ == "__main__":
    main()

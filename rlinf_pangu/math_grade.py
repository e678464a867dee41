"""Grading a final math answer against a reference, with a real LaTeX parser on the pinned stack.

Why this module exists: RLinf 0.3.0's math verifier parses LaTeX with rlinf-latex2sympy2, an
ANTLR 4.11 parser that cannot load next to hydra/omegaconf's ANTLR 4.9 runtime (sympy's own ANTLR
backend needs 4.11 too). Without a LaTeX parser the verifier grades ``0.5`` wrong against
``\\frac{1}{2}``. This module supplies two things:

* :func:`latex2sympy`, a drop-in for ``latex2sympy2.latex2sympy`` backed by sympy's Lark LaTeX
  parser (``parse_latex(..., backend="lark")``, pure Python, no ANTLR). The patch
  ``latex2sympy2:antlr-4.11-vs-4.9`` (rlinf_pangu.patches) installs it where RLinf's verifier
  imports ``latex2sympy2``, so RLinf's own try-chain keeps doing the symbolic grading. sympy's Lark
  grammar is young: it has no ``\\pi`` and rejects some implicit products (``x^2y``,
  ``\\sqrt{2}x``), so the input is rewritten into the forms it reads (:data:`_REWRITES`,
  :func:`_explicit_products`), and decimals come back as exact rationals as latex2sympy2's did.
* :func:`grade`, what the ``pangu_math`` reward runs per answer: it reads the final answer the way
  a grader of MATH/GSM8K/AIME answers must (numbers with separators, units, percents and mixed
  numbers compared exactly; intervals, tuples, sets and choices compared by their structure) and
  hands everything else to RLinf's ``math_equal``. The cases it decides itself are the ones the
  labelled set (tests/data/math_answers.jsonl) shows RLinf's verifier gets wrong: its numbers are
  equal within a relative 1e-4 and up to a factor 100 (``123457`` passes for ``123456``, ``0.72``
  for ``72``), its intervals ignore bracket types, its lists are ordered.

Failing loudly: importing this module raises :class:`ParserUnavailable` when ``lark`` is missing
or sympy's Lark parser cannot be built or fails its self-test (the reward worker then fails at
start instead of grading every LaTeX answer wrong), and an input the parser cannot read is logged
once, at WARNING, with the input.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import concurrent.futures.process
import functools
import logging
import multiprocessing
import os
import signal
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

log = logging.getLogger(__name__)


class ParserUnavailable(ImportError):
    """The LaTeX parser this grader needs cannot be used in this environment."""


class LatexParseError(ValueError):
    """sympy's Lark LaTeX parser could not read an input."""


def _load_parser():
    """sympy's Lark LaTeX parser, checked on one input; raises :class:`ParserUnavailable`."""
    fix = "install the pinned stack (pip install -c constraints.txt lark; lark is in requirements/stack.txt)"
    try:
        import lark  # noqa: F401  (sympy imports it through sympy.external, which hides a failure)
    except Exception as e:
        raise ParserUnavailable(f"pangu_math needs the 'lark' package for sympy's LaTeX parser: {type(e).__name__}: {e}; {fix}") from e
    try:
        from sympy.parsing.latex.lark import parse_latex_lark

        half = parse_latex_lark(r"\frac{1}{2}")
    except Exception as e:
        raise ParserUnavailable(f"sympy's Lark LaTeX parser does not work here ({type(e).__name__}: {e}); {fix}") from e
    import sympy

    if half != sympy.Rational(1, 2):
        raise ParserUnavailable(f"sympy's Lark LaTeX parser read \\frac{{1}}{{2}} as {half!r}; {fix}")
    return parse_latex_lark


_parse_lark = _load_parser()

import sympy  # noqa: E402  (after the check above, which explains a broken parser first)

# ============================================================================================
# LaTeX -> sympy (the parser RLinf's verifier calls as latex2sympy2.latex2sympy)
# ============================================================================================

#: Symbols the Lark grammar lacks, spelled as one-letter symbols it reads and mapped back after.
_PI = r"\xi_{pi}"
_CONSTANTS = {"xi_{pi}": sympy.pi, "e": sympy.E, "i": sympy.I}

#: (pattern, replacement) applied in order before parsing; each names the form it fixes.
_REWRITES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\$|\\displaystyle|\\!|\\left\.|\\right\.|\\limits"), ""),  # math delimiters, spacing
    (re.compile(r"~|(?<!\\)\\ (?=\S)"), " "),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°"), ""),  # degrees: the number is the value
    (re.compile(r"\\?%"), r" \\cdot \\frac{1}{100}"),  # percent
    (re.compile(r"\\\$"), ""),  # currency
    (re.compile(r"\\pi(?!tchfork)"), _PI.replace("\\", "\\\\")),  # also \pir^2 (RLinf drops spaces)
    (re.compile(r"\\(?:text|textrm|mathrm|textbf|mathbf|mbox)\s*\{\s*([A-Za-z0-9.]|\d+(?:\.\d+)?)\s*\}"), r"\1"),
    (re.compile(r"\\sqrt\s*([0-9a-zA-Z])"), r"\\sqrt{\1}"),  # \sqrt3 -> \sqrt{3}
    (re.compile(r"(?<![\d.])\.(\d)"), r"0.\1"),  # .5 -> 0.5
    (re.compile(r"(\d)\s*\{,\}\s*(?=\d{3})"), r"\1"),  # 1{,}000
    # a mixed number (3\frac{1}{2}, 3\frac12) is a sum, not a product
    (re.compile(r"(?<![\w.}^_)\]])(\d+)\s*\\frac\s*(?:\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|(\d)(\d))"),
     r"(\1+\\frac{\2\4}{\3\5})"),
]
_SEPARATED_INT = re.compile(r"[-+]?\d{1,3}(?:(?:,|\\,|\\ |\s)\d{3})+(?:\.\d+)?")
_TEXT_MIXED = re.compile(r"([-+]?)(\d+)\s+(\d+)\s*/\s*(\d+)")
_EMPTY_SET = re.compile(r"\\(?:emptyset|varnothing)|\\\{\s*\\\}|\{\s*\}")


def _rewrite(latex: str) -> str:
    """``latex`` in the forms sympy's Lark grammar reads (see :data:`_REWRITES`)."""
    s = latex.strip()
    for pattern, repl in _REWRITES:
        s = pattern.sub(repl, s)
    s = s.strip()
    if _SEPARATED_INT.fullmatch(s):  # 1,000,000 / 1\,200: one number, not a list or a product
        s = re.sub(r",|\\,|\\ |\s", "", s)
    m = _TEXT_MIXED.fullmatch(s)
    if m:  # "3 1/2"
        s = f"{m[1]}({m[2]}+\\frac{{{m[3]}}}{{{m[4]}}})"
    return _explicit_products(s)


# --- implicit products --------------------------------------------------------------------
# The Lark grammar multiplies adjacent factors only after a symbol, a number, a parenthesis or a
# fraction; after a power (x^2y), a root (\sqrt{2}x) or a closing parenthesis before a number it
# fails. _explicit_products writes \cdot there. It walks the LaTeX as tokens, knowing which
# commands take brace arguments, so \frac{1}{2}, \sqrt[3]{8}, x_{12} and \sin x stay intact.

_TOKENS = re.compile(r"\\(?:begin|end)\{[a-zA-Z*]+\}|\\[a-zA-Z]+|\\.|\d+(?:\.\d*)?|[a-zA-Z]|\s+|.", re.S)
_TWO_ARGS = {r"\frac", r"\binom", r"\dbinom", r"\tbinom", r"\nicefrac"}
_ONE_ARG = {r"\sqrt", r"\text", r"\textrm", r"\mathrm", r"\mathit", r"\textbf", r"\mathbf", r"\overline",
            r"\operatorname", r"\mbox"}
_FUNCTIONS = {r"\sin", r"\cos", r"\tan", r"\csc", r"\sec", r"\cot", r"\arcsin", r"\arccos", r"\arctan",
              r"\sinh", r"\cosh", r"\tanh", r"\log", r"\ln", r"\lg", r"\exp", r"\det", r"\max", r"\min"}
_TRANSPARENT = {r"\left", r"\right", r"\big", r"\Big", r"\bigl", r"\bigr", r"\Bigl", r"\Bigr"}
_OPENERS, _CLOSERS = "([", ")]"
_OPERATOR_COMMANDS = {r"\cdot", r"\times", r"\div", r"\pm", r"\mp", r"\le", r"\leq", r"\ge", r"\geq", r"\ne",
                      r"\neq", r"\to", r"\in", r"\cup", r"\cap", r"\setminus", r"\quad", r"\qquad", r"\infty"}


def _explicit_products(s: str) -> str:
    out, _ = _products(_TOKENS.findall(s), 0, closer=None)
    return "".join(out)


def _starts_operand(tok: str) -> bool:
    return (tok.isalnum() or tok in _OPENERS or tok == "{"
            or (tok.startswith("\\") and len(tok) > 2 and tok not in _OPERATOR_COMMANDS and tok not in _TRANSPARENT))


def _group(toks: list[str], i: int) -> tuple[list[str], int]:
    """One argument starting at ``toks[i]``: a brace group (processed) or a single token."""
    while i < len(toks) and toks[i].isspace():
        i += 1
    if i < len(toks) and toks[i] == "{":
        inner, j = _products(toks, i + 1, closer="}")
        return ["{", *inner, "}"], j + 1
    if i < len(toks):
        return [toks[i]], i + 1
    return [], i


def _products(toks: list[str], i: int, closer: str | None) -> tuple[list[str], int]:
    """Copy tokens from ``i`` up to ``closer`` (exclusive), adding ``\\cdot`` between factors."""
    out: list[str] = []
    after_factor = False  # the last item ends a factor the grammar will not multiply implicitly
    while i < len(toks):
        tok = toks[i]
        if closer is not None and (tok == closer or (closer in _CLOSERS and tok in _CLOSERS)):
            return out, i
        if tok in _TRANSPARENT or tok.isspace():
            out.append(tok)
            i += 1
            continue
        if after_factor and _starts_operand(tok):
            out.append(r"\cdot ")
        after_factor = False
        if tok in _TWO_ARGS:
            nxt = toks[i + 1] if i + 1 < len(toks) else ""
            if nxt.isdigit() and len(nxt) > 1:  # \frac12: two one-digit arguments, one number token
                toks[i + 1: i + 2] = [nxt[0], " ", nxt[1:]]
            a, i = _group(toks, i + 1)
            b, i = _group(toks, i)
            out += [tok, *a, *b]
            after_factor = True
        elif tok in _ONE_ARG:
            out.append(tok)
            i += 1
            if tok == r"\sqrt" and i < len(toks) and toks[i] == "[":
                opt, i = _products(toks, i + 1, closer="]")
                out += ["[", *opt, "]"]
                i += 1
            a, i = _group(toks, i)
            out += a
            after_factor = True
        elif tok in ("^", "_"):
            a, i = _group(toks, i + 1)
            out += [tok, *a]
            after_factor = True
        elif tok in _FUNCTIONS:
            out.append(tok)
            i += 1
            while i < len(toks) and toks[i] in ("^", "_"):  # \log_2 8, \sin^2 x: the argument follows
                script = toks[i]
                a, i = _group(toks, i + 1)
                out += [script, *a]
        elif tok == "{":
            inner, i = _products(toks, i + 1, closer="}")
            out += ["{", *inner, "}"]
            i += 1
        elif tok in _OPENERS:
            inner, j = _products(toks, i + 1, closer=")")
            out += [tok, *inner]
            if j < len(toks):
                out.append(toks[j])
            i = j + 1
            after_factor = True
        elif tok == "!":
            out.append(tok)
            i += 1
            after_factor = True
        else:
            out.append(tok)
            i += 1
    return out, i


def _finish(expr: Any) -> Any:
    """Exact decimals and the constants the grammar lacks (pi, e, i), as latex2sympy2 returned them."""
    if hasattr(expr, "applyfunc") and not isinstance(expr, sympy.Basic):  # a mutable matrix
        return expr.applyfunc(_finish)
    if not isinstance(expr, sympy.Basic):
        raise LatexParseError(f"parsed to {type(expr).__name__}, not a sympy object")
    swap: dict[Any, Any] = {f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)}
    swap.update({s: _CONSTANTS[s.name] for s in expr.free_symbols if getattr(s, "name", None) in _CONSTANTS})
    return expr.xreplace(swap) if swap else expr


def _one_reading(expr: Any) -> Any:
    """The parse when the grammar found several equal ones (``4\\pi\\cdot 2``); an error when they differ."""
    from lark import Tree

    if not isinstance(expr, Tree):
        return expr
    options = [_one_reading(c) for c in expr.children] if expr.data == "_ambig" else []
    if not options or not all(isinstance(o, sympy.Basic) for o in options):
        raise LatexParseError(f"unresolved parse tree {expr.data!r}")
    from sympy.core.function import AppliedUndef

    products = [o for o in options if not o.atoms(AppliedUndef)]  # x(x+2) is a product, not x applied
    options = products or options
    first = options[0]
    if all(o == first or sympy.simplify(o - first) == 0 for o in options[1:]):
        return first
    raise LatexParseError(f"ambiguous: {options}")


_SPACES = re.compile(r"\s+")
#: Longer inputs are prose, not an answer: the Earley parser's time grows fast with length.
_MAX_PARSE_CHARS = 256


def _squeezed(s: str) -> str:
    """``s`` without the spaces the grammar ignores anyway (it reads ``\\sin x`` and ``\\sinx`` alike),
    keeping one between two digits (``2 3`` is a product, ``23`` a number). RLinf's verifier strips
    spaces before it calls the parser: one cache entry then serves both spellings."""
    return _SPACES.sub(lambda m: " " if m[0] and m.start() > 0 and s[m.start() - 1].isdigit()
                       and m.end() < len(s) and s[m.end()].isdigit() else "", s)


def _parse_cached(latex: str) -> tuple[bool, Any]:
    """(True, expression) or (False, why) for ``latex`` (see :func:`_parse_rewritten`)."""
    try:
        s = _squeezed(_rewrite(latex))
    except Exception as e:  # a rewrite must not raise, but one odd input must not stop a batch either
        return False, f"{type(e).__name__}: {e}"
    return _parse_rewritten(s)


@functools.lru_cache(maxsize=8192)
def _parse_rewritten(s: str) -> tuple[bool, Any]:
    """Cached: a group of samples shares its reference, and often its answers."""
    try:
        if _EMPTY_SET.fullmatch(s):
            return True, sympy.S.EmptySet
        if not s:
            return False, "empty input"
        if len(s) > _MAX_PARSE_CHARS:
            return False, f"{len(s)} characters: longer than any answer the parser is given ({_MAX_PARSE_CHARS})"
        with warnings.catch_warnings():  # the Lark transformer's sympy deprecation chatter
            warnings.simplefilter("ignore")
            return True, _finish(_one_reading(_parse_lark(s)))
    except Exception as e:  # lark's UnexpectedInput, sympy's errors, our LatexParseError
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def parse_latex(latex: str) -> Any:
    """``latex`` as a sympy object; raises :class:`LatexParseError` (quietly) if it cannot be read."""
    ok, value = _parse_cached(str(latex))
    if not ok:
        raise LatexParseError(f"cannot parse {latex!r}: {value}")
    return value


_WARNED: set[str] = set()
_WARN_LIMIT = 10_000  # distinct inputs remembered; beyond that the memory starts over


def warn_once(what: str, text: str, why: str) -> None:
    """Log ``what``: ``text`` at WARNING the first time this process sees ``text``."""
    if text in _WARNED:
        return
    if len(_WARNED) >= _WARN_LIMIT:
        _WARNED.clear()
    _WARNED.add(text)
    log.warning("%s %r (%s)", what, text, why)


def latex2sympy(latex: str, variable_values: dict | None = None) -> Any:
    """Drop-in for ``latex2sympy2.latex2sympy``: ``latex`` as a sympy object, through sympy's Lark parser.

    RLinf's verifier calls this last in its parser chain, on its own rewritings of an answer (outer
    parentheses stripped, ``\\\\`` halved), so a failure here is logged at DEBUG only; the
    grader warns about the answer itself (:func:`equivalent`). ``variable_values`` maps symbol
    names to values, as in latex2sympy2.
    """
    ok, value = _parse_cached(str(latex))
    if not ok:
        log.debug("latex2sympy: cannot parse %r (%s)", latex, value)
        raise LatexParseError(f"cannot parse {latex!r}: {value}")
    if variable_values:
        value = value.subs({sympy.Symbol(str(k)): v for k, v in variable_values.items()})
    return value


# ============================================================================================
# Reading a final answer
# ============================================================================================

#: Phrases that introduce a final answer; after the last \boxed{} (which wins), the last phrase does.
_PHRASES = re.compile(
    r"he answer is|final answer is|答案是|####(?=\s*[-+$\\\d.])|(?im:^[*_\s]*(?:final\s+)?answer\s*[*_]*\s*:[*_]*)"
)


def _boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched), or None."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)", text)]
    if not starts:
        return None
    rest = text[starts[-1]:].lstrip()
    if not rest.startswith("{"):
        return re.split(r"[$\n]", rest, maxsplit=1)[0].strip()
    depth = 0
    for k, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:k]
    return rest[1:]


def marked_answer(text: str) -> str | None:
    """The final answer ``text`` marks (``\\boxed{}``, "the answer is", "Answer:", ``####``), or None."""
    minerva = re.search(r"final answer is \$(.*?)\$\. I hope", text, re.S)
    if minerva:
        return minerva[1].strip()
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    phrases = list(_PHRASES.finditer(text))
    if phrases:
        return text[phrases[-1].end():].strip().split("\n\n")[0].strip()
    return None


def final_answer(text: str) -> str:
    """The final answer in ``text``: what a marker points at (:func:`marked_answer`), else all of it."""
    marked = marked_answer(text)
    return text.strip() if marked is None else marked


# --- cleaning: what never changes an answer's value --------------------------------------------

_CLEAN: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\s+"), " "),
    (re.compile(r"\*\*|__"), ""),  # markdown bold
    (re.compile(r"^[:：]\s*"), ""),  # "the answer is: 42"
    (re.compile("\u2212"), "-"),  # unicode minus
    (re.compile("\u221a\\s*(\\d+(?:\\.\\d+)?|[a-zA-Z]|\\([^()]*\\)|\\{[^{}]*\\})"), r"\\sqrt{\1}"),  # √12, √(x+1)
    (re.compile("\u03c0"), r"\\pi "),
    (re.compile("\u00d7"), r"\\times "),
    (re.compile("[\u00b7\u22c5]"), r"\\cdot "),
    (re.compile("\u221e"), r"\\infty "),
    (re.compile("\u2264"), r"\\le "),
    (re.compile("\u2265"), r"\\ge "),
    (re.compile(r"\\mathbb\s*\{?\s*R\s*\}?"), r"(-\\infty,\\infty)"),  # the reals as an interval
    (re.compile(r"^\\\[|\\\]$|^\\\(|\\\)$"), ""),  # display / inline math delimiters
    (re.compile(r"(?<!\\)\$"), ""),  # $...$
    (re.compile(r"\\displaystyle|\\!|\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\big[lr]?(?![a-zA-Z])"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\textbf|\\mathbf|\\textrm|\\mbox"), r"\\text"),
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\s*\bdegrees?\b"), ""),  # degrees
    (re.compile(r"^[a-zA-Z]\s*\\in\s*"), ""),  # x \in [1, 5)
    (re.compile(r"\\\$"), ""),  # currency
]
#: A unit after a value: \text{ cm}, \mathrm{cm}^2 (removed only when something is left before it).
_UNIT_TEXT = re.compile(r"(?:\\[,;:]|\s)*\\(?:text|mathrm|operatorname)\s*\{[^{}]*\}(?:\s*\^\s*\{?\d\}?)?\s*$")
_TEXT_ONLY = re.compile(r"\\(?:text|mathrm)\s*\{([^{}]*)\}")


def clean(answer: str) -> str:
    """``answer`` without what does not change its value: delimiters, spacing, currency, units, degrees."""
    s = answer
    for pattern, repl in _CLEAN:
        s = pattern.sub(repl, s)
    s = s.strip().rstrip(".").strip()
    while True:
        m = _UNIT_TEXT.search(s)
        if not m or not s[: m.start()].strip():
            break
        s = s[: m.start()].strip()
    whole = _TEXT_ONLY.fullmatch(s)
    if whole:  # \text{Monday}, \text{18 eggs}
        s = whole[1].strip()
    return re.sub(r"(?:\\[,;:]|\s)+$", "", s).rstrip(".").strip()


# --- numbers ------------------------------------------------------------------------------

_INT = r"\d{1,3}(?:(?:,|\{,\}|\\,|\\ | )\d{3})+|\d+"
_DEC = rf"(?:{_INT})(?:\.\d*)?|\.\d+"
_UNIT_WORD = r"(?:[a-zA-Z]{3,}|cm|mm|km|kg|mg|ml|ft|in|mi|hr|yd|oz|lb)(?:\^?\{?[23]\}?)?"
_UNITS = rf"(?:{_UNIT_WORD})(?:\s*/\s*[a-zA-Z]+|\s+{_UNIT_WORD})*"
_NUMBER_FORMS = [  # (name, pattern); the value comes from _number_value
    ("decimal", re.compile(rf"(?P<sign>[-+]?)\s*(?P<num>{_DEC})")),
    ("e-notation", re.compile(rf"(?P<sign>[-+]?)\s*(?P<num>{_DEC})[eE](?P<exp>[-+]?\d+)")),  # 7.2e3
    ("scientific", re.compile(rf"(?P<sign>[-+]?)\s*(?:(?P<num>{_DEC})\s*(?:\\times|\\cdot|\*)\s*)?10\s*\^\s*\{{?\s*(?P<exp>[-+]?\d+)\s*\}}?")),
    ("fraction", re.compile(r"(?P<sign>[-+]?)\s*(?P<whole>\d+\s*)?\\frac\s*(?:\{\s*(?P<n>[-+]?\s*\d+)\s*\}\s*\{\s*(?P<d>[-+]?\s*\d+)\s*\}|(?P<n1>\d)(?P<d1>\d))")),
    ("repeating", re.compile(r"(?P<sign>[-+]?)\s*(?P<int>\d*)\.(?P<fix>\d*)\s*\\overline\s*\{\s*(?P<rep>\d+)\s*\}")),  # 0.\overline{3}
    ("slash", re.compile(r"(?P<sign>[-+]?)\s*(?:(?P<whole>\d+)\s+)?(?P<n>\d+)\s*/\s*(?P<d>\d+)")),
]
_PERCENT = re.compile(r"\s*(?:\\?%|percent)$")
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}


@dataclass(frozen=True)
class Number:
    value: Fraction
    percent: bool  # written with a % sign or "percent": read as value/100 or as value

    def readings(self) -> set[Fraction]:
        return {self.value, self.value / 100} if self.percent else {self.value}


def _digits(text: str) -> str:
    """A number's characters without its separators (``1{,}250.5`` -> ``1250.5``)."""
    return re.sub(r"[^\d.+-]", "", text.replace("{,}", ""))


def _number_value(form: str, m: re.Match) -> Fraction:
    sign = -1 if m["sign"] == "-" else 1
    digits = _digits
    if form == "decimal":
        return sign * Fraction(digits(m["num"]))
    if form == "repeating":  # int.fix(rep)(rep)... = int + fix/10^f + rep/((10^r - 1) 10^f)
        f, r = len(m["fix"]), len(m["rep"])
        value = Fraction(int(m["int"] or 0)) + Fraction(int(m["fix"] or 0), 10**f)
        return sign * (value + Fraction(int(m["rep"]), (10**r - 1) * 10**f))
    if form in ("scientific", "e-notation"):
        return sign * Fraction(digits(m["num"]) if m["num"] else 1) * Fraction(10) ** int(m["exp"])
    n, d = (m["n"], m["d"]) if m["n"] is not None else (m.group("n1"), m.group("d1"))
    frac = Fraction(int(digits(n)), int(digits(d)))
    whole = int(m["whole"]) if m["whole"] else 0  # a mixed number: 3\frac{1}{2} is 3 + 1/2
    return sign * (whole + frac)


def read_number(text: str) -> Number | None:
    """``text`` as a plain number (integer, decimal, fraction, mixed number, scientific), or None.

    Thousands separators, trailing unit words and a percent sign are allowed; anything else
    (a variable, a root, pi) makes it not a plain number.
    """
    s = text.strip()
    pct = _PERCENT.search(s)
    if pct:
        s = s[: pct.start()].strip()
    words = s.lower().replace("-", " ").split()
    if words and all(w in _NUMBER_WORDS for w in words) and len(words) <= 2:
        return Number(Fraction(sum(_NUMBER_WORDS[w] for w in words)), bool(pct))
    for form, pattern in _NUMBER_FORMS:
        m = re.fullmatch(rf"{pattern.pattern}(?:\s+(?:{_UNITS}))?", s)
        if m:
            try:
                return Number(_number_value(form, m), bool(pct))
            except (ValueError, ZeroDivisionError):
                return None
    return None


def numbers_equal(a: Number, b: Number) -> bool:
    """Exactly equal, with a % read either as /100 or as decoration (GSM8K drops the sign)."""
    return bool(a.readings() & b.readings())


# --- structures: intervals, tuples, sets, lists -------------------------------------------------

def _split_top(s: str, sep: str) -> list[str]:
    """``s`` split at ``sep`` outside brackets (``(``/``[`` may close with either, as intervals do)."""
    parts, depth, start, k = [], 0, 0, 0
    while k < len(s):
        if s.startswith(sep, k) and depth == 0:
            parts.append(s[start:k])
            k += len(sep)
            start = k
            continue
        ch = s[k]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        k += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _encloses(s: str) -> bool:
    """True when the bracket at ``s[0]`` closes at ``s[-1]`` (not ``(x-1)(x+1)``)."""
    depth = 0
    for k, ch in enumerate(s):
        depth += 1 if ch in "([{" else -1 if ch in ")]}" else 0
        if depth == 0:
            return k == len(s) - 1
    return False


@dataclass(frozen=True)
class Structure:
    kind: str  # "bracketed" ((a, b), [a, b)), "set" (\{a, b\}), "list" (a, b), "union" (I \cup J)
    items: tuple  # element strings, or Structures for a union
    brackets: str = ""  # the opening and closing bracket of a bracketed one

    @property
    def is_interval(self) -> bool:
        return self.kind == "union" or (
            self.kind == "bracketed" and len(self.items) == 2
            and (self.brackets != "()" or any("infty" in x for x in self.items)))


def read_structure(text: str) -> Structure | None:
    """``text`` as an interval, union, tuple, set or comma list; None for a single value."""
    s = text.strip()
    s = re.sub(r"\\\{", "{", re.sub(r"\\\}", "}", s))
    union = _split_top(s, r"\cup")
    if len(union) > 1:
        parts = [read_structure(u) for u in union]
        if all(p is not None and p.kind == "bracketed" for p in parts):
            return Structure("union", tuple(parts))
        return None
    if s[:1] == "{" and s[-1:] == "}" and _encloses(s):
        inner = s[1:-1].strip()
        return Structure("set", tuple(_split_top(inner, ",")) if inner else ())
    if s[:1] in "([" and s[-1:] in ")]" and _encloses(s):
        items = _split_top(s[1:-1], ",")
        if len(items) > 1:
            return Structure("bracketed", tuple(items), s[0] + s[-1])
        return None
    items = _split_top(s, ",")
    items = [x for x in items if x]
    if len(items) > 1:
        return Structure("list", tuple(items))
    return None


def _same_items(a: Sequence, b: Sequence, ordered: bool, eq) -> bool:
    if len(a) != len(b):
        return False
    if ordered:
        return all(eq(x, y) for x, y in zip(a, b))
    left = list(a)
    for y in b:
        k = next((k for k, x in enumerate(left) if eq(x, y)), None)
        if k is None:
            return False
        left.pop(k)
    return True


def structures_equal(p: Structure | None, r: Structure | None) -> bool:
    """Intervals: same brackets and endpoints; tuples: in order; sets and lists: in any order."""
    if p is None or r is None:
        return False
    if p.is_interval or r.is_interval:
        if p.kind == r.kind == "union":
            return _same_items(p.items, r.items, False, structures_equal)
        if p.kind == r.kind == "bracketed":
            return p.brackets == r.brackets and _same_items(p.items, r.items, True, equivalent)
        return False
    if p.kind == r.kind == "bracketed":
        return p.brackets == r.brackets and _same_items(p.items, r.items, True, equivalent)
    if "bracketed" in (p.kind, r.kind):  # a point against a bare list: still in order
        other = r if p.kind == "bracketed" else p
        return other.kind == "list" and _same_items(p.items, r.items, True, equivalent)
    return _same_items(_distinct(p), _distinct(r), False, equivalent)


def _distinct(s: Structure) -> tuple:
    """A set's elements once each (\\{1, 1, 2\\} is \\{1, 2\\}); a list's as written."""
    if s.kind != "set":
        return s.items
    kept: list[str] = []
    for x in s.items:
        if not any(equivalent(x, y) for y in kept):
            kept.append(x)
    return tuple(kept)


# --- the comparison --------------------------------------------------------------------------

_CHOICE = re.compile(r"\(?\s*([A-E])\s*\)?")
_CHOICE_LEAD = re.compile(r"(?:\\text\{)?\(?([A-E])(?:\)|\.|:)\}?\s")  # "(B) 12 apples", "B. 12"
_SHORT_LHS = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?|[a-zA-Z]\s*\(\s*[a-zA-Z]\s*\)")


def _choice(s: str) -> str | None:
    inner = _TEXT_ONLY.fullmatch(s)
    m = _CHOICE.fullmatch((inner[1] if inner else s).strip())
    return m[1] if m else None


def _value_sides(p: str, r: str) -> tuple[str, str]:
    """Equations: the answer's last side when the reference has none (``2^{10} = 1024``); the
    reference's right side when it names a variable or function (``y = 2x + 3``)."""
    relations = ("<", ">", r"\le", r"\ge", r"\ne")
    if len(_split_top(p, ",")) > 1 or len(_split_top(r, ",")) > 1:  # x=-2, x=5: per item, later
        return p, r
    if "=" in p and "=" not in r and not any(x in p for x in relations):
        p = p.rsplit("=", 1)[-1].strip()
    elif "=" in r and "=" not in p:
        lhs, rhs = r.split("=", 1)
        if _SHORT_LHS.fullmatch(lhs.strip()) and "=" not in rhs:
            r = rhs.strip()
    return p, r


_INEQUALITY = re.compile(r"\\[lg]e(?:q|qslant)?(?![a-zA-Z])|\\[lg]t(?![a-zA-Z])|<|>")


def _interval_set(s: Structure) -> Any:
    if s.kind == "union":
        return sympy.Union(*[_interval_set(part) for part in s.items])
    lo, hi = (parse_latex(x) for x in s.items)
    return sympy.Interval(lo, hi, left_open=s.brackets[0] == "(", right_open=s.brackets[1] == ")")


def _inequality(text: str) -> Any:
    """``a < x \\le b`` and the like as one sympy relational (a chain as their conjunction), or None."""
    terms = _INEQUALITY.split(text)
    ops = _INEQUALITY.findall(text)
    if not ops or any(not t.strip() for t in terms):
        return None
    links = [parse_latex(f"{terms[k]} {ops[k]} {terms[k + 1]}") for k in range(len(ops))]
    if not all(isinstance(x, sympy.core.relational.Relational) for x in links):
        return None
    return links[0] if len(links) == 1 else sympy.And(*links)


def _inequalities_equal(p: str, r: str) -> bool | None:
    """Verdict on a pair where an inequality is involved; None when neither side is one.

    One variable: both sides as sets of reals (``x \\le 2`` is ``(-\\infty, 2]``, not ``x < 2``);
    RLinf's verifier compares only ``|lhs - rhs|`` and passes ``x < 2`` for ``x \\le 2``. Several
    variables: the same relation between the same difference.
    """
    if not (_INEQUALITY.search(p) or _INEQUALITY.search(r)):
        return None
    sides = []
    for text in (p, r):
        try:
            shape = read_structure(text)
            if shape is not None and shape.is_interval:
                sides.append(_interval_set(shape))
                continue
            rel = _inequality(text)
        except (LatexParseError, TypeError, ValueError):
            rel = None
        if rel is None:
            return False  # an inequality against something that is none: not the same answer
        sides.append(rel)
    a, b = sides
    try:
        if len(set().union(*(x.free_symbols for x in sides))) <= 1:
            as_set = lambda x: x if isinstance(x, sympy.Set) else x.as_set()  # noqa: E731
            return bool(as_set(a) == as_set(b))
        if isinstance(a, sympy.core.relational.Relational) and isinstance(b, sympy.core.relational.Relational):
            ca, cb = a.canonical, b.canonical
            return type(ca) is type(cb) and sympy.simplify((ca.lhs - ca.rhs) - (cb.lhs - cb.rhs)) == 0
    except Exception:  # sympy cannot solve it (\sin x < 1 as a set): RLinf's verifier decides
        return None
    return False


def _unwrap_single(s: Structure | None) -> str | None:
    return s.items[0] if s is not None and s.kind in ("set", "list") and len(s.items) == 1 else None


def equivalent(pred: str, ref: str) -> bool:
    """True when the final answer ``pred`` has the value of the reference ``ref`` (both extracted)."""
    p, r = clean(pred), clean(ref)
    if not p or not r:
        return False
    if p.replace(" ", "").lower() == r.replace(" ", "").lower():
        return True
    rc = _choice(r)
    if rc is not None:  # a choice is its letter; RLinf's verifier takes any lone letter in the text ("2a^2b")
        lead = _CHOICE_LEAD.match(p)
        return (_choice(p) or (lead[1] if lead else None)) == rc
    relation = _inequalities_equal(p, r)
    if relation is not None:
        return relation
    p, r = _value_sides(p, r)
    rn, pn = read_number(r), read_number(p)
    if rn is not None and pn is not None:
        return numbers_equal(pn, rn)
    rs = read_structure(r) if rn is None else None
    ps = read_structure(p) if (pn is None or rs is not None) else None
    if rs is not None or ps is not None:
        single_p, single_r = _unwrap_single(ps), _unwrap_single(rs)
        if (ps is None) != (rs is None) and (single_p or single_r):
            return equivalent(single_p or p, single_r or r)
        return structures_equal(ps, rs)
    if sympy_equal(p, r) or rlinf_equal(p, r):
        return True
    for what, text in (("answer", p), ("reference", r)):
        ok, why = _parse_cached(text)
        if not ok and not _WORDS.fullmatch(text):
            warn_once(f"math grader: the LaTeX parser cannot read this {what} (graded by string and plain-sympy "
                      "comparison only):", text, why)
    return False


#: Plain words (a text answer such as "Monday"): compared as text, never as a product of symbols.
_WORDS = re.compile(r"[A-Za-z]{2,}(?:[\s-]+[A-Za-z]+)*")


def sympy_equal(pred: str, ref: str) -> bool:
    """Both read by the LaTeX parser and equal as expressions (exactly: ``simplify(a - b) == 0``).

    Asked before RLinf's verifier, whose parser chain tries plain sympy parsing first: that reads
    ``x(x+2)`` as a function ``x`` applied to ``x+2`` and never asks the LaTeX parser. Only
    expressions are compared here (relations and matrices are RLinf's), and never plain words.
    """
    if _WORDS.fullmatch(pred) or _WORDS.fullmatch(ref):
        return False
    try:
        a, b = parse_latex(pred), parse_latex(ref)
        if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
            return False
        return bool(a == b or sympy.simplify(a - b) == 0)
    except Exception:  # an unreadable side, or sympy failing on a strange pair: not equal by this test
        return False


# --- RLinf's verifier, for everything that is not a plain number or a structure ------------------

#: Forms plain sympy parsing (the second link of RLinf's parser chain) reads wrongly, rewritten so
#: that it fails and the LaTeX parser reads them: ``2^10`` is 2 XOR 10 there.
_FOR_RLINF: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\^\s*(\d+)"), r"^{\1}"),
    (re.compile(r"^([-+]?)(\d+)\s+(\d+)\s*/\s*(\d+)$"), r"\1\2\\frac{\3}{\4}"),  # 3 1/2
]


_NUMBER_AND_WORD = re.compile(r"[-+]?[\d.,]+\s+[A-Za-z]+")
_TEXT_GROUP = re.compile(r"(\\(?:text|mathrm|mbox)\s*\{[^{}]*\})")


def _math_spaces_dropped(s: str) -> str:
    """``s`` without spaces outside ``\\text{}``: RLinf's unit stripping, which runs before it drops
    spaces itself, deletes a lone letter between spaces (``2 a^{2} b`` loses its ``a``)."""
    if _NUMBER_AND_WORD.fullmatch(s):  # "72 m": RLinf's unit list knows "m", and needs the space to see it
        return s
    parts = _TEXT_GROUP.split(s)
    return "".join(p if k % 2 else p.replace(" ", "") for k, p in enumerate(parts))


def rlinf_equal(pred: str, ref: str) -> bool:
    """RLinf's own ``math_equal`` on the two answers (its strip_string first, as its verifier does)."""
    math_equal = rlinf_verifier().math_equal
    from rlinf.algorithms.rewards.math.math_verifier.parser import strip_string

    pred, ref = _math_spaces_dropped(pred), _math_spaces_dropped(ref)
    for pattern, repl in _FOR_RLINF:
        pred, ref = pattern.sub(repl, pred), pattern.sub(repl, ref)
    try:
        pred_s, ref_s = strip_string(pred), strip_string(ref)
        pn, rn = read_number(pred_s), read_number(ref_s)
        if pn is not None and rn is not None:  # a number once RLinf stripped a unit ("7200 m"): exactly
            return numbers_equal(Number(pn.value, "%" in pred), Number(rn.value, "%" in ref))
        return bool(math_equal(pred_s, ref_s, timeout=False))
    except Exception as e:  # RLinf's own checks catch most; a crash in one answer must not stop a batch
        warn_once("math grader: RLinf's math_equal failed on", f"{pred} vs {ref}", f"{type(e).__name__}: {e}")
        return False


def grade(answer: str | None, references: Any) -> bool:
    """True when ``answer`` (the text after the thinking) matches any of ``references``."""
    if answer is None or not answer.strip():
        return False
    refs = references if isinstance(references, (list, tuple)) else [references]
    pred = final_answer(answer)
    for ref in refs:
        ref = str(ref)
        gold = final_answer(ref) if "boxed" in ref else ref
        try:
            if equivalent(pred, gold):
                return True
        except Exception as e:  # never let one odd answer stop the reward worker; say which one
            warn_once("math grader: could not grade", f"{pred!r} against {gold!r}", f"{type(e).__name__}: {e}")
    return False


# ============================================================================================
# Start-up check and the worker pool the reward runs answers in
# ============================================================================================


@functools.cache
def rlinf_verifier() -> Any:
    """RLinf's math verifier module, imported with this parser as its ``latex2sympy2`` (the patch
    ``latex2sympy2:antlr-4.11-vs-4.9`` applied first, as ``rlinf_pangu.register()`` does)."""
    from rlinf_pangu.patches import apply_patch
    from rlinf_pangu.patches.latex2sympy import LATEX2SYMPY

    apply_patch(LATEX2SYMPY)
    from rlinf.algorithms.rewards.math.math_verifier import verify

    return verify


def check_rlinf_verifier() -> None:
    """Raise RuntimeError unless RLinf's math verifier imports and its ``latex2sympy`` reads LaTeX.

    The reward worker calls this when it builds the reward, so a missing patch or parser stops the
    run at start, named, instead of grading every LaTeX answer wrong for the whole run.
    """
    how = ("rlinf_pangu.register() installs the LaTeX parser it needs (patch latex2sympy2:antlr-4.11-vs-4.9, "
           "backed by rlinf_pangu.math_grade.latex2sympy)")
    try:
        verify = rlinf_verifier()
    except ParserUnavailable:
        raise
    except Exception as e:
        raise RuntimeError(f"RLinf's math verifier does not import ({type(e).__name__}: {e}); {how}") from e
    try:
        half = verify.latex2sympy(r"\frac{1}{2}")
    except Exception as e:
        raise RuntimeError(
            f"RLinf's math verifier has no working LaTeX parser: latex2sympy2.latex2sympy(r'\\frac{{1}}{{2}}') "
            f"raised {type(e).__name__}: {e}; {how}") from e
    if half != sympy.Rational(1, 2):
        raise RuntimeError(f"RLinf's math verifier reads \\frac{{1}}{{2}} as {half!r}; {how}")


def _grade_job(answer: str, references: Any) -> bool:
    with warnings.catch_warnings():  # sympy deprecation chatter from the Lark transformer
        warnings.simplefilter("ignore")
        return grade(answer, references)


def _default_signals() -> None:
    """A grading worker dies on SIGTERM, whatever handler the process it was forked from had."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class GradingPool:
    """Grades answers in forked worker processes, each answer under a time limit.

    Why processes: sympy's simplify can run for minutes on an adversarial answer, and the reward
    worker must not stall a training step on one; an answer past ``timeout_s`` is graded wrong,
    logged with its input, and the pool is replaced. Forked workers inherit this process's patched
    modules (RLinf's verifier with this parser) and the built Lark grammar. ``workers=0`` grades in
    this process, without a time limit (benchmarks of one core).
    """

    def __init__(self, workers: int | None = None, timeout_s: float = 10.0):
        if workers is None:
            workers = min(32, len(os.sched_getaffinity(0)))
        self.workers, self.timeout_s = workers, timeout_s
        self._pool = None

    def _get(self):
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("fork"), initializer=_default_signals)
            atexit.register(self.close)  # a pool left to the interpreter's teardown prints errors
        return self._pool

    def close(self) -> None:
        """Stop the workers, a stuck one included, without waiting on it.

        A process pool, not ``multiprocessing.Pool``: killing a stuck ``Pool`` worker can leave the
        task queue's lock held, and ``Pool.terminate`` then waits on that lock forever; a worker
        forked from a process whose SIGTERM handler does not exit (Ray, SGLang and RLinf install
        such handlers) also survived ``terminate`` (both seen in the full test suite). An executor
        whose worker is killed is merely broken, and shuts down at once."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join(timeout=5)

    def grade(self, answers: Sequence[str | None], references: Sequence[Any]) -> list[bool]:
        """One verdict per answer (None: no answer, wrong). Answers whose final answer and
        references are the same are graded once: a GRPO group often repeats its final answer."""
        if len(answers) != len(references):
            raise ValueError(f"{len(answers)} answers but {len(references)} references")
        same: dict[tuple[str, str], list[int]] = {}
        for k, a in enumerate(answers):
            if a is not None:
                same.setdefault((final_answer(a), repr(references[k])), []).append(k)
        firsts = [ks[0] for ks in same.values()]
        if self.workers == 0:
            verdicts = {k: _grade_job(answers[k], references[k]) for k in firsts}
        else:
            verdicts = self._in_pool(firsts, answers, references)
        verdict = [False] * len(answers)
        for ks in same.values():
            for k in ks:
                verdict[k] = bool(verdicts[ks[0]])
        return verdict

    def _in_pool(self, todo: list[int], answers: Sequence[str | None], references: Sequence[Any]) -> dict[int, bool]:
        pool = self._get()
        jobs = {k: pool.submit(_grade_job, answers[k], references[k]) for k in todo}
        verdicts, stuck = {}, False
        for k, job in jobs.items():
            try:
                verdicts[k] = bool(job.result(timeout=self.timeout_s))
            except (concurrent.futures.TimeoutError, concurrent.futures.process.BrokenProcessPool):
                stuck, verdicts[k] = True, False
                warn_once(f"math grader: no verdict within {self.timeout_s:g} s, graded wrong:",
                          str(answers[k])[-300:], f"reference {references[k]!r}")
        if stuck:
            self.close()  # a worker may still be spinning in sympy
        return verdicts

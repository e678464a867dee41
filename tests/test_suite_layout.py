"""How the suite runs in parallel (``make test``: two pytest-xdist workers, tests/conftest.py).

One whole training run takes ~13 GB of the 23 GB CPU host, and two at once got Ray's workers
OOM-killed. The modules that start one carry the ``whole_run`` mark, which puts them in one xdist
work unit, run by one worker one after the other. A module that starts a run without the mark
could run beside another: these checks read each test module's code for the calls that start one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import WHOLE_RUN_GROUP, xdist_group_of

TESTS = Path(__file__).resolve().parent
#: The calls that start ``python -m rlinf.train`` to the end (tests/e2e_run.py), and the GRPO benchmark
#: script, which starts two.
RUN_CALLS = {"run_training", "train_cmd"}
RUN_SCRIPTS = {"benchmarks/grpo_step.py"}


def _starts_a_whole_run(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in RUN_CALLS:
            return True
        if isinstance(node, ast.List) and any(isinstance(e, ast.Constant) and e.value in RUN_SCRIPTS for e in node.elts):
            return True
    return False


def _marked_whole_run(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "whole_run" for n in ast.walk(tree))


MODULES = sorted(TESTS.glob("test_*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_a_module_is_marked_whole_run_exactly_when_it_starts_a_whole_run(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert _starts_a_whole_run(tree) == _marked_whole_run(tree), path.name


def test_the_whole_run_modules_are_found():
    """The reading above finds the five known ones (so the check cannot pass by finding none)."""
    found = {p.name for p in MODULES if _starts_a_whole_run(ast.parse(p.read_text()))}
    assert found >= {"test_e2e_cpu.py", "test_e2e_disagg_cpu.py", "test_e2e_fsdp_cpu.py", "test_grpo_step_dry_run.py",
                     "test_resume_cpu.py"}, found


def test_the_whole_run_modules_share_one_unit_and_every_other_module_is_its_own(request):
    session = request.session
    groups: dict[str, set[str]] = {}
    for item in session.items:
        groups.setdefault(xdist_group_of(item), set()).add(item.path.name)
    # items of this session only: run alone (pytest tests/test_suite_layout.py) it sees just itself
    for name, files in groups.items():
        if name == WHOLE_RUN_GROUP:
            assert all(_marked_whole_run(ast.parse((TESTS / f).read_text())) for f in files), files
        else:
            assert files == {f"{name}.py"}, (name, files)

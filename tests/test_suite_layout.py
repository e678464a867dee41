"""How the suite runs in parallel (``make test``: two pytest-xdist workers, tests/conftest.py).

One whole training run takes ~13 GB of the 23 GB CPU host, and two at once got Ray's workers
OOM-killed. The modules that start one carry the ``whole_run`` mark, which puts them in one xdist
work unit, run by one worker one after the other. A module that starts a run without the mark
could run beside another: these checks read each test module's code for the calls that start one.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import WHOLE_RUN_UNIT, ModuleScheduling, marked_whole_run, work_unit

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


MODULES = sorted(TESTS.glob("test_*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_a_module_is_marked_whole_run_exactly_when_it_starts_a_whole_run(path):
    assert _starts_a_whole_run(ast.parse(path.read_text(), filename=str(path))) == marked_whole_run(path), path.name


def test_the_whole_run_modules_are_found():
    """The reading above finds the five known ones (so the check cannot pass by finding none)."""
    found = {p.name for p in MODULES if _starts_a_whole_run(ast.parse(p.read_text()))}
    assert found >= {"test_e2e_cpu.py", "test_e2e_disagg_cpu.py", "test_e2e_fsdp_cpu.py", "test_grpo_step_dry_run.py",
                     "test_resume_cpu.py"}, found


def test_xdists_scheduler_puts_the_whole_runs_in_one_unit_and_every_other_module_in_its_own(request):
    root = request.config.rootpath
    split = ModuleScheduling._split_scope  # the method xdist calls with each collected node id
    units = {p.name: split(SimpleNamespace(config=request.config), f"tests/{p.name}::Class::test_x[a::b]") for p in MODULES}
    whole = {name for name, unit in units.items() if unit == WHOLE_RUN_UNIT}
    assert whole == {p.name for p in MODULES if marked_whole_run(p)} and len(whole) >= 5, whole
    others = [unit for name, unit in units.items() if name not in whole]
    assert others == [f"tests/{name}" for name in units if name not in whole]  # one unit per module, classes included
    assert work_unit(root, "tests/test_e2e_cpu.py::t") == work_unit(root, "tests/test_resume_cpu.py::t") == WHOLE_RUN_UNIT

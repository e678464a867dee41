"""``python -m rlinf.train`` without touching RLinf: the .pth-installed finder, and yielding to RLinf."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from harness import fresh_env
from rlinf_pangu.startup import rlinf_train, site

ROOT = Path(__file__).resolve().parents[1]


def test_pth_is_installed_in_site_packages():
    pth = Path(sysconfig.get_paths()["purelib"]) / site.PTH_NAME
    assert pth.is_file(), "scripts/setup.sh (pip install -e .) must install it: see setup.py"
    assert pth.read_text() == (ROOT / site.PTH_NAME).read_text() == site.PTH_LINE


def test_python_m_rlinf_train_runs_the_driver(tmp_path):
    p = subprocess.run([sys.executable, "-m", "rlinf.train", "--help"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "python -m rlinf.train" in p.stdout and "--config" in p.stdout


def test_rlinf_files_are_untouched():
    import importlib.util

    spec = importlib.util.find_spec("rlinf")
    pkg = Path(list(spec.submodule_search_locations)[0])
    assert not (pkg / "train.py").exists() and not (pkg / "train").exists()


def test_finder_steps_aside_when_rlinf_ships_its_own(tmp_path):
    fake = tmp_path / "rlinf"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    assert not rlinf_train.rlinf_ships_train([str(fake)])
    assert rlinf_train.RlinfTrainFinder().find_spec("rlinf.train", [str(fake)]) is not None
    (fake / "train.py").write_text("OWN = True\n")
    assert rlinf_train.rlinf_ships_train([str(fake)])
    assert rlinf_train.RlinfTrainFinder().find_spec("rlinf.train", [str(fake)]) is None
    # and in a fresh interpreter, RLinf's own module is the one that imports
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
            "import rlinf.train as t; print(getattr(t, 'OWN', False))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=fresh_env())
    assert p.stdout.strip() == "True", p.stderr[-2000:]


def test_finder_answers_only_for_rlinf_train():
    f = rlinf_train.RlinfTrainFinder()
    assert f.find_spec("rlinf.trainer", None) is None and f.find_spec("rlinf_pangu.train", None) is None

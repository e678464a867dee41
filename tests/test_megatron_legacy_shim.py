"""``megatron.legacy.fused_kernels``: missing upstream, provided by the shim, early enough for Ray.

A Ray worker unpickles RLinf's Megatron actor class, i.e. imports
``rlinf.workers.actor.megatron_actor_worker -> ... -> rlinf.utils.initialize`` (which does
``from megatron.legacy import fused_kernels``), before RLinf calls ``RLINF_EXT_MODULE``'s
``register()``. The fresh-interpreter tests below reproduce exactly that import with nothing but
the ``.pth`` start-up line in place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlinf_pangu import patches
from rlinf_pangu.patches import megatron as shim
from rlinf_pangu.startup import site

REPO = Path(__file__).resolve().parents[1]
HAVE_TE = __import__("importlib").util.find_spec("transformer_engine") is not None


def _python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO,
    )


@pytest.fixture(scope="module")
def fresh_interpreter(tmp_path_factory) -> dict:
    """One fresh interpreter: first without any shim, then with only the .pth line added."""
    site_dir = tmp_path_factory.mktemp("site")
    site.install_pth(site_dir)
    proc = _python(
        f"""
        import json, site, sys
        from rlinf_pangu.patches import megatron as m
        m.uninstall()                       # undo the venv's own start-up hook: upstream as shipped
        out = {{"upstream_missing": m.upstream_missing()}}
        try:
            import rlinf.utils.initialize
            out["without_shim"] = "imported"
        except ImportError as e:
            out["without_shim"] = f"{{type(e).__name__}}: {{e}}"
        site.addsitedir({str(site_dir)!r})  # what interpreter start-up does with site-packages
        out["finder_after_pth"] = m.installed()
        import rlinf.workers.actor.megatron_actor_worker  # what a Ray worker imports first
        import rlinf_pangu
        out["registered_before_import"] = "rlinf" in rlinf_pangu._DONE
        from megatron.legacy import fused_kernels
        out["fused_kernels_origin"] = fused_kernels.__spec__.origin
        print("RESULT" + json.dumps(out))
        """
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT"):])


def test_upstream_megatron_core_ships_no_legacy_fused_kernels(fresh_interpreter):
    """The patch's probe, and what RLinf does without it."""
    assert patches.PATCHES["megatron.legacy.fused_kernels"].applies()
    assert fresh_interpreter["upstream_missing"] is True
    assert fresh_interpreter["without_shim"] == "ModuleNotFoundError: No module named 'megatron.legacy'"


def test_pth_line_lets_a_ray_worker_import_rlinfs_megatron_actor_before_register(fresh_interpreter):
    assert fresh_interpreter["finder_after_pth"] is True
    assert fresh_interpreter["registered_before_import"] is False
    assert fresh_interpreter["fused_kernels_origin"].endswith("rlinf_pangu/patches/megatron.py")


def test_the_pth_shipped_and_installed_is_the_startup_line():
    assert (REPO / site.PTH_NAME).read_text() == site.PTH_LINE  # setup.py ships this file
    installed = site.site_packages() / site.PTH_NAME
    assert installed.exists(), f"{installed} missing: run `make setup` (pip install -e . ships it)"
    assert installed.read_text() == site.PTH_LINE
    assert sorted(p.name for p in REPO.glob("rlinf_pangu_*.pth")) == [site.PTH_NAME]  # one start-up line


def test_pth_line_is_harmless_when_rlinf_pangu_is_gone(tmp_path):
    site.install_pth(tmp_path)
    proc = _python(
        f"""
        import importlib.util, site, sys
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda n, *a: None if n == "rlinf_pangu" else real(n, *a)
        site.addsitedir({str(tmp_path)!r})
        print("started")
        """,
        env={"PYTHONNOUSERSITE": "1"},
    )
    assert proc.returncode == 0 and "started" in proc.stdout and "Error" not in proc.stderr, proc.stderr


def test_a_real_megatron_legacy_wins_over_the_shim(tmp_path):
    """When Megatron-LM's own tree is installed, the patch steps aside (probe False, real module)."""
    pkg = tmp_path / "megatron" / "legacy" / "fused_kernels"
    pkg.mkdir(parents=True)
    (tmp_path / "megatron" / "legacy" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("def load(args):\n    return 'megatron-lm'\n")
    proc = _python(
        """
        from rlinf_pangu.patches import megatron as m
        m.install()
        from megatron.legacy import fused_kernels
        print(fused_kernels.load(None), m.upstream_missing())
        """,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["megatron-lm", "False"]


def test_shim_load_is_a_no_op_and_legacy_model_stays_absent():
    import rlinf_pangu

    rlinf_pangu.register(sglang=False)
    from megatron.legacy import fused_kernels
    from omegaconf import OmegaConf

    assert fused_kernels.load(OmegaConf.create({"model": {"masked_softmax_fusion": False}})) is None
    with pytest.raises(ModuleNotFoundError):  # RLinf then falls back to megatron.core's Float16Module
        __import__("megatron.legacy.model")


@pytest.mark.skipif(HAVE_TE, reason="with Transformer Engine the fused softmax is not needed")
def test_shim_load_names_masked_softmax_fusion_when_no_kernel_can_serve_it():
    import rlinf_pangu

    rlinf_pangu.register(sglang=False)
    from megatron.legacy import fused_kernels
    from omegaconf import OmegaConf

    with pytest.raises(shim.FusedKernelsUnavailable, match="masked_softmax_fusion: false"):
        fused_kernels.load(OmegaConf.create({"model": {"masked_softmax_fusion": True}}))

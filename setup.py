"""setuptools hook: ship the ``rlinf_pangu_*.pth`` start-up files into site-packages with the package.

Everything else is in pyproject.toml. ``rlinf_pangu_startup.pth`` runs at every interpreter start
(``rlinf_pangu/startup/site.py``): it installs the finder that makes ``python -m rlinf.train``
resolve to this project's driver, and the one that provides ``megatron.legacy.fused_kernels``
before Ray workers import RLinf. A ``.pth`` must sit at the top of site-packages,
which package data cannot reach, so they are added to the wheel here: to regular wheels by
``build_py``, to editable wheels (``pip install -e .``, what scripts/setup.sh does) by
``editable_wheel``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTHS = sorted(Path(__file__).resolve().parent.glob("rlinf_pangu_*.pth"))


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        for pth in PTHS:
            self.copy_file(str(pth), str(Path(self.build_lib) / pth.name), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), *(str(Path(self.build_lib) / p.name) for p in PTHS)]


class editable_wheel_with_pth(editable_wheel):
    # The editable wheel is assembled from a staging folder (dist-info, namespace .pth files)
    # plus the editable finder; the .pth goes into that folder with the namespace files.
    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        for pth in PTHS:
            Path(installation_dir, pth.name).write_bytes(pth.read_bytes())


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})

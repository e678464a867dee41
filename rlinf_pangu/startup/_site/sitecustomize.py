"""rlinf-pangu start-up hook for child interpreters (on PYTHONPATH via rlinf_pangu.startup.children).

Runs any other ``sitecustomize`` on ``sys.path`` first (this one shadows it), then arms
``rlinf_pangu.startup.children``' post-import hooks. It must never break interpreter start-up.
"""

import importlib.util
import os
import sys


def _chain_next_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_rlinf_pangu_chained_sitecustomize", candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return


try:
    _chain_next_sitecustomize()
except Exception as e:  # noqa: BLE001
    print(f"rlinf_pangu: chained sitecustomize failed: {e!r}", file=sys.stderr)

try:
    from rlinf_pangu.startup import children as _children

    _children.install()
except Exception as e:  # noqa: BLE001
    print(f"rlinf_pangu: start-up hook not installed: {e!r}", file=sys.stderr)

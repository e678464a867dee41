"""A fresh interpreter's environment: this one minus what ``rlinf_pangu.register()`` exported.

``register()`` puts the start-up hook on ``PYTHONPATH`` and sets ``SGLANG_EXTERNAL_MODEL_PACKAGE``
(and the driver sets ``RLINF_EXT_MODULE``/``RLINF_PANGU_*``) so that child processes register too.
Once any test in the session has called it, every later subprocess inherits that. Tests that
probe *upstream* behaviour in a "fresh" interpreter must start from this environment instead, or
they see our patches already applied (CI ran them after such a test and they failed).
"""

from __future__ import annotations

import os

_EXPORTED = ("SGLANG_EXTERNAL_MODEL_PACKAGE", "RLINF_EXT_MODULE")


def fresh_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    from rlinf_pangu.startup.children import BOOT_DIR

    env = {k: v for k, v in os.environ.items() if k not in _EXPORTED and not k.startswith("RLINF_PANGU_")}
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != os.path.abspath(BOOT_DIR)]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    else:
        env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env

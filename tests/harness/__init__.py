"""Test-only harness for multi-process CPU tests (nothing in ``rlinf_pangu`` imports it).

* :func:`run_ranks` — run a function on N gloo ranks in spawned processes, get their results
  back, see any rank's exception in the pytest failure (see :mod:`harness.launcher`).
* :mod:`harness.cpu_redirects` — megatron-core's cuda->cpu redirects, applied inside the ranks.

Import it from a test module as ``from harness import run_ranks`` (``tests/`` is on ``sys.path``
under pytest; the spawned ranks inherit that path).
"""

from .fresh import fresh_env
from .launcher import RankAssertionError, RankError, RankTimeout, free_port, run_ranks

__all__ = ["fresh_env", "run_ranks", "free_port", "RankError", "RankAssertionError", "RankTimeout"]

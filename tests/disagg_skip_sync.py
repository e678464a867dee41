"""``python -m rlinf.train`` with RLinf's actor -> rollout weight sync skipped before chosen steps:
the negative control of tests/test_e2e_disagg_cpu.py (test-only; nothing in rlinf_pangu imports it).

    python tests/disagg_skip_sync.py --skip-rollout-sync 1 --config ... [key=value ...]

Before a skipped step the runner still syncs the inference group (RLinf's ``_sync_weights`` does
that first), so the log-prob recompute stays the actor's; only SGLang keeps what it had. Before
step 1 that is SGLang's own random start weights (``load_format=dummy``): the rollout-vs-recompute
gap of that step must then fail the gate the synced steps pass.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("negative-control")


def skip_rollout_sync(steps: set[int]) -> None:
    """Replace ``ReasoningRunner._sync_weights`` (once the driver imports it) with one that skips
    the rollout half before the 1-based ``steps``."""
    from rlinf_pangu.patches.core import after_import

    def install(rr) -> None:
        original = rr.ReasoningRunner._sync_weights

        def _sync_weights(self):
            step = self.global_steps + 1
            if step not in steps:
                return original(self)
            if self.has_dedicated_actor_inference:
                self.actor.sync_model_to_inference()
                self.actor_inference.sync_model_from_actor().wait()
            log.warning("negative control: rollout weight sync skipped before step %d", step)

        rr.ReasoningRunner._sync_weights = _sync_weights

    after_import("rlinf.runners.reasoning_runner", install)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-rollout-sync", type=int, action="append", default=[], help="1-based step (repeatable)")
    args, rest = p.parse_known_args(argv)
    skip_rollout_sync(set(args.skip_rollout_sync))
    from rlinf_pangu.train import main as train_main

    return train_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

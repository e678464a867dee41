"""Benchmark-only SGLang custom weight loader: Pangu's presharded loader, timed inside the scheduler.

SGLang imports it in its scheduler process (benchmarks/ is on the spawned process's sys.path).
Each call appends ``seconds tensors`` to the file named by ``$PANGU_SYNC_LOADER_TIMES``, so
benchmarks/sync.py can split its load time into SGLang's ``load_weights`` (the copy into the
parameters) and everything around it (serialising the CUDA IPC handles, the trip to the
scheduler, opening the handles, the reply).
"""

from __future__ import annotations

import os
import time

import torch

from rlinf_pangu.sglang_ext.weight_sync import load_presharded_weights

LOADER = f"{__name__}.load"
ENV = "PANGU_SYNC_LOADER_TIMES"


def load(model, named_tensors) -> None:
    named_tensors = list(named_tensors)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    load_presharded_weights(model, named_tensors)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    dt = time.perf_counter() - t0
    with open(os.environ[ENV], "a") as f:
        f.write(f"{dt:.6f} {len(named_tensors)}\n")

"""``python -m rlinf_pangu.serve``: the options SGLang cannot choose itself on the pinned stack.

Found on an H100 (docs/runs/gpu-h100-2026-12-07-resume): SGLang's default attention backend on Hopper is
FA3, absent from the pinned sglang-kernel wheel, and sgl_kernel's CUDA RMSNorm has no float32 path; either
killed the server at start. The serve entry point adds the rollouts' attention backend when none is named
and refuses fp32 on CUDA before SGLang starts. On the CPU SGLang's defaults need CUDA as well; a CPU server
gets the kernels the CPU mode's rollouts run (configs/cluster/cpu.yaml and patches/cpu.py), so serving an
export on a CPU host needs no kernel options.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlinf_pangu.serve import gpu_argv, server_argv

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--model-path", "/m", "--port", "30000"]
#: what the GPU examples' rollouts run (read here independently of the code under test)
ROLLOUT_BACKEND = yaml.safe_load((ROOT / "configs/rollout/sglang.yaml").read_text())["rollout"]["sglang"]["attention_backend"]
#: what the CPU mode's rollouts run (the YAML the CPU examples select)
CPU_BACKEND = yaml.safe_load((ROOT / "configs/cluster/cpu.yaml").read_text())["rollout"]["sglang"]["attention_backend"]
CPU_DEFAULTS = ["--attention-backend", CPU_BACKEND, "--sampling-backend", "pytorch", "--disable-cuda-graph"]


def test_the_rollouts_backend_is_not_sglangs_hopper_default():
    assert ROLLOUT_BACKEND not in (None, "fa3"), ROLLOUT_BACKEND


@pytest.mark.parametrize("argv,cuda", [(BASE, True), ([*BASE, "--device", "cuda"], False)])
def test_a_gpu_server_without_a_backend_gets_the_rollouts(argv, cuda):
    assert server_argv(argv, cuda) == [*argv, "--attention-backend", ROLLOUT_BACKEND]


@pytest.mark.parametrize("given", [["--attention-backend", "flashinfer"], ["--attention-backend=flashinfer"]])
def test_a_named_backend_is_kept(given):
    argv = [*BASE, *given]
    assert gpu_argv(argv) == argv


@pytest.mark.parametrize("dtype", [["--dtype", "float32"], ["--dtype=float"]])
def test_fp32_on_cuda_is_refused_naming_the_option(dtype):
    with pytest.raises(SystemExit, match=r"--dtype (float32|float) on CUDA.*--device cpu"):
        gpu_argv([*BASE, *dtype])


@pytest.mark.parametrize("argv,cuda", [([*BASE, "--dtype", "float32"], False),
                                       ([*BASE, "--device", "cpu", "--dtype", "float32"], True)])
def test_a_cpu_server_gets_the_cpu_modes_kernels(argv, cuda):
    assert server_argv(argv, cuda) == [*argv, *CPU_DEFAULTS]


def test_cpu_kernels_named_by_the_caller_are_kept():
    argv = [*BASE, "--device", "cpu", "--disable-cuda-graph", "--attention-backend=torch_native", "--sampling-backend", "pytorch"]
    assert server_argv(argv, False) == argv


def test_a_gpu_server_gets_no_cpu_kernels():
    assert server_argv([*BASE, "--dtype", "bfloat16"], True) == [*BASE, "--dtype", "bfloat16", "--attention-backend", ROLLOUT_BACKEND]


def test_bf16_on_cuda_passes():
    argv = [*BASE, "--dtype", "bfloat16", "--attention-backend", "triton"]
    assert gpu_argv(argv) == argv

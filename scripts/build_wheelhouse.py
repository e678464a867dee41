"""Build an air-gapped wheelhouse for a Python 3.12 / x86-64 GPU host that has no package index.

Such a host (a typical GPU cluster node, or this project's lent H100) already has torch 2.11 with
CUDA, transformers and the scientific stack; it lacks RLinf, Megatron-core, SGLang and their
runtime. This script downloads, for the GPU host's platform, every package pinned in
``constraints.txt`` that the host lacks, plus SGLang's GPU kernels (``requirements/gpu.txt``),
and optionally packs them into chunks of a given size (one transfer each).

    python scripts/build_wheelhouse.py --out .wheelhouse [--chunk-mb 60]
    # on the GPU host, with the wheelhouse (or all its chunks) copied over:
    bash scripts/install_wheelhouse.sh .wheelhouse /tmp/site && export PYTHONPATH=/tmp/site

Some wheels carry large files that a Hopper host running this project never loads; ``SLIM`` lists
them and the wheel is repacked without them (``--no-slim`` keeps everything).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("wheelhouse")
ROOT = Path(__file__).resolve().parents[1]

#: What the GPU runtime image already has (its package list); these are never carried.
GPU_HOST_HAS = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
    cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
    formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
    imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
    lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
    matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
    networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
    nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
    peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
    pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
    transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
    wrapt xarray xxhash yarl zipp""".split()
)

#: package -> members never loaded on an x86-64 Hopper host running this project, dropped from the wheel.
SLIM: dict[str, str] = {
    # FlashAttention-3 (342 MB; the triton attention backend is used) and the Blackwell build of the ops.
    "sglang-kernel": r"^sgl_kernel/(flash_ops[^/]*\.so|sm100/.*)$",
    # The static library is for C++ consumers; Python loads the shared bindings.
    "xgrammar": r"^xgrammar/lib/libxgrammar\.a$",
    # Java workers and the dashboard's source map: RLinf drives Ray from Python only.
    "ray": r"^ray/(jars/ray_dist\.jar|dashboard/client/build/static/js/[^/]*\.js\.map)$",
}

PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version from a constraints/requirements file of ``name==version`` lines."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, ver = line.split("==", 1)
            out[norm(name)] = ver.strip()
    return out


def wanted() -> dict[str, str]:
    """Pinned packages the GPU host lacks, plus the GPU-only extras."""
    allpins = pins(ROOT / "constraints.txt")
    need = {n: v for n, v in allpins.items() if n not in GPU_HOST_HAS and not n.startswith(("nvidia-", "cuda-"))}
    for line in (ROOT / "requirements" / "gpu.txt").read_text().splitlines():
        name = norm(line.split("#", 1)[0].strip()) if line.split("#", 1)[0].strip() else ""
        if name:
            need[name] = allpins[name]
    return dict(sorted(need.items()))


def download(name: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none", "-d", str(dest),
           "--disable-pip-version-check", "-q"]
    for p in PLATFORMS + ["any"]:
        cmd += ["--platform", p]
    before = set(dest.iterdir())
    if subprocess.run(cmd + [f"{name}=={version}"]).returncode != 0:
        # Some pure-Python packages (antlr4 runtime, word2number) publish only an sdist: build the
        # wheel here; a py3-none-any wheel installs the same on the GPU host.
        log.info("%s==%s has no wheel on the index; building one from the sdist", name, version)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest),
                        "--disable-pip-version-check", f"{name}=={version}"], check=True)
    new = {p for p in set(dest.iterdir()) - before if p.suffix == ".whl"}
    for w in new:
        if w.suffix == ".whl" and not w.name.endswith(("-none-any.whl", "x86_64.whl")):
            raise RuntimeError(f"{w.name}: built for this host's platform, not the GPU host's")
    if not new:  # already there
        cands = [p for p in dest.glob("*.whl") if norm(p.name.split("-")[0]) == norm(name) and f"-{version}-" in p.name]
        return cands[0]
    return new.pop()


def slim_wheel(wheel: Path, drop: re.Pattern[str]) -> Path:
    """Repack ``wheel`` without members matching ``drop``, with a RECORD that matches the content."""
    with zipfile.ZipFile(wheel) as src:
        if not any(drop.search(n) for n in src.namelist()):
            return wheel  # already slim (a re-run)
    tmp = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        kept_records = []
        for info in src.infolist():
            if drop.search(info.filename) or info.filename == record_name:
                continue
            data = src.read(info)
            dst.writestr(info, data)
            digest = hashlib.sha256(data).digest()
            import base64

            kept_records.append(f"{info.filename},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(data)}")
        kept_records.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(kept_records) + "\n")
    tmp.replace(wheel)
    return wheel


def chunk(files: list[Path], out: Path, chunk_bytes: int) -> list[Path]:
    """Pack files into tar chunks of at most ``chunk_bytes``; a larger single file is split in parts."""
    import tarfile

    chunks: list[Path] = []
    staging = out / "chunks"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    bins: list[list[Path]] = []
    room: list[int] = []
    for f in sorted(files, key=lambda p: -p.stat().st_size):
        n = f.stat().st_size
        if n > chunk_bytes:  # split: parts are reassembled by install_wheelhouse.sh
            with f.open("rb") as fh:
                i = 0
                while part := fh.read(chunk_bytes):
                    p = staging / f"{f.name}.part{i:02d}"
                    p.write_bytes(part)
                    chunks.append(p)
                    i += 1
            continue
        for b, r in enumerate(room):  # first fit, largest first
            if n <= r:
                bins[b].append(f)
                room[b] -= n
                break
        else:
            bins.append([f])
            room.append(chunk_bytes - n)
    for group in bins:
        p = staging / f"wheels-{len(chunks):02d}.tar"
        with tarfile.open(p, "w") as tf:
            for f in group:
                tf.add(f, arcname=f.name)
        chunks.append(p)
    return chunks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".wheelhouse")
    ap.add_argument("--chunk-mb", type=float, default=0, help="also pack into chunks of this size (0: no chunks)")
    ap.add_argument("--no-slim", action="store_true", help="keep every wheel as published")
    ap.add_argument("--list", action="store_true", help="print what would be carried and exit")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    need = wanted()
    if a.list:
        for n, v in need.items():
            print(f"{n}=={v}")
        return
    a.out.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name, ver in need.items():
        w = download(name, ver, a.out)
        if name in SLIM and not a.no_slim:
            w = slim_wheel(w, re.compile(SLIM[name]))
        wheels.append(w)
        log.info("%-32s %8.1f MB", w.name[:32], w.stat().st_size / 1e6)
    total = sum(w.stat().st_size for w in wheels)
    log.info("%d wheels, %.1f MB in %s", len(wheels), total / 1e6, a.out)
    if a.chunk_mb:
        for c in chunk(wheels, a.out, int(a.chunk_mb * 1024**2)):
            log.info("chunk %s %.1f MB", c.name, c.stat().st_size / 1e6)


if __name__ == "__main__":
    main()

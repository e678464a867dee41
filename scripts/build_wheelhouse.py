"""Build an air-gapped wheelhouse for a Python 3.12 / x86-64 GPU host that has no package index.

Such a host (a typical GPU cluster node, or this project's lent H100) already has torch 2.11 with
CUDA, transformers and the scientific stack; it lacks RLinf, Megatron-core, SGLang, Transformer
Engine and their runtime. This script downloads, for the GPU host's platform, every package pinned
in ``constraints.txt`` that the host lacks, SGLang's GPU kernels (``requirements/gpu.txt``) and
Transformer Engine (``TE`` below; ``--no-te`` leaves it out), writes ``MANIFEST.json`` (size and
sha256 of every file, what must be installed together, what must be built there) and optionally
cuts everything into chunks of at most ``--chunk-mb`` MiB, one transfer each.

    python scripts/build_wheelhouse.py --out .wheelhouse --chunk-mb 58
    # on the GPU host, after each chunk arrives (any order; the same TARGET every time):
    bash scripts/install_wheelhouse.sh .wheelhouse/chunks/NN /tmp/rlp-site
    # once the Transformer Engine sdist is there (it is in chunk 00), build its torch binding:
    bash scripts/build_te_torch.sh /tmp/rlp-site/.wheelhouse/spool
    export PYTHONPATH=/tmp/rlp-site

Chunks are byte ranges of one stream of files, so no transfer is wasted: a file that does not fit
in a chunk's remaining room continues in the next one as ``NAME.partNN``. scripts/wheelhouse_install.py
(behind install_wheelhouse.sh) reassembles and sha256-checks each file once all its parts are there.

Transformer Engine 2.20.2 comes as three distributions that all write ``transformer_engine/``:
the py3 meta wheel, the CUDA 13 core wheel (276 MB) and the PyTorch binding, which is published
only as an sdist and must be compiled against the GPU host's own torch and CUDA
(scripts/build_te_torch.sh, ~2 min on 16 cores). The manifest names them as one install group.
``--te-torch-wheel`` adds an already built binding as a fallback the installer uses only when told
to (``--use-fallback``), e.g. when the build fails; nothing depends on it.

Some wheels carry large files that a Hopper host running this project never loads; ``SLIM`` lists
them and the wheel is repacked without them (``--no-slim`` keeps everything).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html.parser
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
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

#: Pinned for the CPU host's own tooling, never imported by a run: not carried.
NOT_CARRIED: dict[str, str] = {
    "uv": "the installer scripts/setup.sh bootstraps on CPU hosts",
}

#: package -> members never loaded on an x86-64 Hopper host running this project, dropped from the wheel.
SLIM: dict[str, str] = {
    # FlashAttention-3 (342 MB; the triton attention backend is used) and the Blackwell build of the ops.
    "sglang-kernel": r"^sgl_kernel/(flash_ops[^/]*\.so|sm100/.*)$",
    # The static library is for C++ consumers; Python loads the shared bindings.
    "xgrammar": r"^xgrammar/lib/libxgrammar\.a$",
    # Java workers and the dashboard's source map: RLinf drives Ray from Python only.
    "ray": r"^ray/(jars/ray_dist\.jar|dashboard/client/build/static/js/[^/]*\.js\.map)$",
}

#: Transformer Engine (versions: constraints.txt): distribution -> how it travels. All three write
#: ``transformer_engine/``, so they are one install group (one pip call; see wheelhouse_install.py).
TE: dict[str, str] = {
    "transformer-engine": "wheel",  # py3 meta wheel: the Python tree
    "transformer-engine-cu13": "wheel",  # libtransformer_engine.so for CUDA 13 (276 MB: travels in parts)
    "transformer-engine-torch": "sdist",  # the PyTorch binding: sdist only, built there (build_te_torch.sh)
}
TE_GROUP = "transformer_engine"
#: TE's Requires-Dist that the GPU host lacks and TE imports (pydantic & co. come with SGLang's set).
TE_DEPS = ("nvdlfw-inspect",)
#: TE's Requires-Dist not carried on purpose; TE 2.20.2 imports and trains without them.
TE_LEFT_OUT = {
    "importlib-metadata": "TE falls back to the standard library's importlib.metadata",
    "nvidia-cudnn-frontend": "its Python module is imported only by sm100 grouped-MLP / MLA paths",
    "flash-attn": "TE then runs cuDNN's fused attention, which is faster on Hopper anyway",
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
    """Pinned packages the GPU host lacks, plus the GPU-only extras (Transformer Engine apart: :func:`te_wanted`)."""
    allpins = pins(ROOT / "constraints.txt")
    skip = set(TE) | set(TE_DEPS) | set(NOT_CARRIED)
    need = {
        n: v for n, v in allpins.items()
        if n not in GPU_HOST_HAS and n not in skip and not n.startswith(("nvidia-", "cuda-"))
    }
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


def te_wanted() -> dict[str, str]:
    """Transformer Engine's distributions and carried dependencies, name -> pinned version."""
    allpins = pins(ROOT / "constraints.txt")
    missing = [n for n in (*TE, *TE_DEPS) if n not in allpins]
    if missing:
        raise SystemExit(f"constraints.txt pins no version of {missing}")
    return {n: allpins[n] for n in (*TE, *TE_DEPS)}


class _Links(html.parser.HTMLParser):
    """The file links of a PEP 503 simple-index page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def index_url() -> str:
    """pip's index (``PIP_INDEX_URL`` or pip's config), else PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           capture_output=True, text=True)
        url = r.stdout.strip() if r.returncode == 0 else ""
    return (url or "https://pypi.org/simple").rstrip("/")


def download_sdist(name: str, version: str, dest: Path) -> Path:
    """The sdist ``name==version`` from the simple index, checked against the index's sha256.

    Why not ``pip download --no-binary``: pip then runs the sdist's metadata step, which for TE
    needs torch in an isolated build environment; the GPU host needs only the file itself.
    """
    fname = f"{norm(name).replace('-', '_')}-{version}.tar.gz"
    out = dest / fname
    page_url = f"{index_url()}/{norm(name)}/"
    with urllib.request.urlopen(page_url, timeout=60) as r:
        links = _Links()
        links.feed(r.read().decode())
    hits = [h for h in links.hrefs if urllib.parse.urlparse(h).path.rsplit("/", 1)[-1] == fname]
    if not hits:
        raise SystemExit(f"{page_url} lists no {fname}")
    url = urllib.parse.urljoin(page_url, hits[0])
    want = urllib.parse.urlparse(url).fragment.partition("sha256=")[2]
    if not want:
        raise SystemExit(f"{page_url} gives no sha256 for {fname}")
    if not out.exists() or sha256(out) != want:
        tmp = out.with_name(out.name + ".tmp")
        with urllib.request.urlopen(url.split("#")[0], timeout=600) as r, tmp.open("wb") as f:
            shutil.copyfileobj(r, f)
        if sha256(tmp) != want:
            tmp.unlink()
            raise SystemExit(f"{fname}: sha256 differs from the index's {want}")
        tmp.replace(out)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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
            kept_records.append(f"{info.filename},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(data)}")
        kept_records.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(kept_records) + "\n")
    tmp.replace(wheel)
    return wheel


def project_of(filename: str) -> str:
    """Normalized project name of a wheel or sdist file name."""
    return norm(re.split(r"-\d", filename, maxsplit=1)[0])


def manifest(files: list[Path], te: bool, fallback: list[Path]) -> dict:
    """What the installer needs to know: every file's size and sha256, install groups, builds."""
    return {
        "format": 2,
        "files": {f.name: {"size": f.stat().st_size, "sha256": sha256(f)} for f in [*files, *fallback]},
        # projects whose wheels go into one pip call (they share the package folder named)
        "together": {TE_GROUP: list(TE)} if te else {},
        # sdists the GPU host builds into wheels (the group waits for the built wheel)
        "build": {f.name: "scripts/build_te_torch.sh" for f in files if f.name.endswith(".tar.gz")},
        # wheels installed only when asked (wheelhouse_install.py --use-fallback PROJECT)
        "fallback": {project_of(f.name): f.name for f in fallback},
        "left_out": TE_LEFT_OUT if te else {},
        "parts": {},
        "chunks": [],
    }


def plan_chunks(files: list[Path], chunk_bytes: int) -> list[list[tuple[Path, int, int]]]:
    """Cut the files, in this order, into chunks of at most ``chunk_bytes``: (file, offset, length).

    The files form one byte stream cut at chunk boundaries, so the chunk count is the least
    possible, ``ceil(total / chunk_bytes)``; the chunks are evened out to ``ceil(total / n)``
    bytes each (smaller transfers, same count). A file crossing a boundary travels in parts.
    """
    total = sum(f.stat().st_size for f in files)
    n = max(1, -(-total // chunk_bytes))
    size = -(-total // n)
    chunks: list[list[tuple[Path, int, int]]] = [[]]
    room = size
    for f in files:
        off, left = 0, f.stat().st_size
        while left:
            if room == 0:
                chunks.append([])
                room = size
            take = min(left, room)
            chunks[-1].append((f, off, take))
            off, left, room = off + take, left - take, room - take
    return chunks


def write_chunks(out: Path, files: list[Path], chunk_bytes: int, man: dict) -> list[Path]:
    """``out/chunks/NN/`` folders, one transfer each: whole files hard-linked, parts written, and
    the full manifest in each (any chunk, in any order, tells the installer what is still due)."""
    staging = out / "chunks"
    shutil.rmtree(staging, ignore_errors=True)
    parts: dict[str, list[str]] = {}
    dirs = []
    for i, pieces in enumerate(plan_chunks(files, chunk_bytes)):
        d = staging / f"{i:02d}"
        d.mkdir(parents=True)
        names = []
        for f, off, length in pieces:
            if length == f.stat().st_size:
                _link_or_copy(f, d / f.name)
                names.append(f.name)
                continue
            part = f"{f.name}.part{len(parts.setdefault(f.name, [])):02d}"
            parts[f.name].append(part)
            with f.open("rb") as src, (d / part).open("wb") as dst:
                src.seek(off)
                dst.write(src.read(length))
            names.append(part)
        man["chunks"].append(names)
        dirs.append(d)
    man["parts"] = parts
    for d in dirs:
        (d / "MANIFEST.json").write_text(json.dumps(man, indent=1))
    return dirs


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stream_order(generic: list[Path], te_files: list[Path], fallback: list[Path]) -> list[Path]:
    """The order files travel in: what the GPU host starts on first (the sdist to build, the small
    TE pieces), then the stack (installed as it arrives), the big TE core wheel, the fallback last."""
    sdists = [f for f in te_files if f.name.endswith(".tar.gz")]
    big = [f for f in te_files if f not in sdists and f.stat().st_size > 64 * 2**20]
    small = [f for f in te_files if f not in sdists and f not in big]
    return [*sdists, *small, *sorted(generic, key=lambda f: f.name), *big, *fallback]


def check_te_torch_wheel(path: Path, version: str) -> Path:
    """A prebuilt binding serves only this TE version on the GPU host's CPython 3.12."""
    if not re.fullmatch(rf"transformer_engine_torch-{re.escape(version)}-cp312-cp312-linux_x86_64\.whl", path.name):
        raise SystemExit(f"{path.name}: not a transformer_engine_torch {version} wheel for cp312 linux_x86_64")
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".wheelhouse")
    ap.add_argument("--chunk-mb", type=float, default=0, help="also cut into chunks of at most this many MiB (0: no chunks)")
    ap.add_argument("--no-slim", action="store_true", help="keep every wheel as published")
    ap.add_argument("--no-te", action="store_true", help="leave Transformer Engine out")
    ap.add_argument("--te-torch-wheel", type=Path, default=None,
                    help="a transformer_engine_torch wheel already built for the GPU host, carried as a fallback only")
    ap.add_argument("--list", action="store_true", help="print what would be carried and exit")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    need = wanted()
    te = {} if a.no_te else te_wanted()
    if a.list:
        for n, v in {**need, **te}.items():
            print(f"{n}=={v}" + ("  (sdist: built on the GPU host)" if TE.get(n) == "sdist" else ""))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name, ver in need.items():
        w = download(name, ver, a.out)
        if name in SLIM and not a.no_slim:
            w = slim_wheel(w, re.compile(SLIM[name]))
        wheels.append(w)
        log.info("%-32s %8.1f MB", w.name[:32], w.stat().st_size / 1e6)
    te_files = []
    for name, ver in te.items():
        f = download_sdist(name, ver, a.out) if TE.get(name) == "sdist" else download(name, ver, a.out)
        te_files.append(f)
        log.info("%-32s %8.1f MB", f.name[:32], f.stat().st_size / 1e6)
    fallback = []
    if a.te_torch_wheel and te:
        fallback.append(check_te_torch_wheel(a.te_torch_wheel, te["transformer-engine-torch"]))
        _link_or_copy(a.te_torch_wheel, a.out / a.te_torch_wheel.name)
        fallback = [a.out / a.te_torch_wheel.name]
    files = stream_order(wheels, te_files, fallback)
    log.info("%d files, %.1f MB in %s", len(files), sum(f.stat().st_size for f in files) / 1e6, a.out)
    man = manifest([f for f in files if f not in fallback], bool(te), fallback)
    (a.out / "MANIFEST.json").write_text(json.dumps(man, indent=1))  # the folder itself is a source too
    if a.chunk_mb:
        for d in write_chunks(a.out, files, int(a.chunk_mb * 2**20), man):
            size = sum(p.stat().st_size for p in d.iterdir())
            log.info("chunk %s: %.1f MiB: %s", d.name, size / 2**20,
                     ", ".join(p.name for p in sorted(d.iterdir()) if p.name != "MANIFEST.json"))


if __name__ == "__main__":
    main()

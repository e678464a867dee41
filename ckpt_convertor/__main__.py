"""Command line: ``python -m ckpt_convertor {hf-to-megatron,megatron-to-hf} ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .cached import ensure_megatron
from .errors import ConversionError

log = logging.getLogger("ckpt_convertor")

DTYPES = ("bf16", "fp16", "fp32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ckpt_convertor",
        description="Convert openPangu-Embedded checkpoints between HF (safetensors) and Megatron "
        "(torch format, release/mp_rank_XX[_YYY]/model_optim_rng.pt) at any TP/PP.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    h = sub.add_parser("hf-to-megatron", help="HF directory -> Megatron release checkpoint (cached)",
                       description="Convert an HF Pangu directory into a Megatron release checkpoint that "
                       "RLinf/Megatron load with megatron.load=OUT. A second run with the same input and "
                       "options finds the result in place and returns at once.")
    h.add_argument("--hf", required=True, metavar="DIR", help="HF checkpoint directory (config.json + safetensors)")
    h.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    h.add_argument("--tp", type=int, default=1, help="tensor parallel size (default 1)")
    h.add_argument("--pp", type=int, default=1, help="pipeline parallel size (default 1)")
    h.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages per PP rank (needs --pp >= 2)")
    h.add_argument("--dtype", choices=DTYPES, default=None, help="output dtype (default: the checkpoint's)")
    h.add_argument("--norm-names", choices=("local", "te"), default="local",
                   help="Megatron norm parameter names: local spec (default) or Transformer Engine spec")
    h.add_argument("--force", action="store_true", help="convert even if an up-to-date conversion exists")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = sub.add_parser("megatron-to-hf", help="Megatron checkpoint -> official-layout HF directory",
                       description="Convert a torch-format Megatron Pangu checkpoint (TP/PP/VPP read from its "
                       "files) into sharded safetensors + index + config + tokenizer files. It takes the "
                       "checkpoints a training run saves as they are: runs/<experiment>/checkpoints/global_step_<N> "
                       "(or its actor/ directory), iteration directory and distributed-optimizer files included.")
    m.add_argument("--megatron", required=True, metavar="DIR",
                   help="Megatron checkpoint (holds latest_checkpointed_iteration.txt), or a run's checkpoints/global_step_<N>")
    m.add_argument("--out", required=True, metavar="DIR", help="output HF directory (written atomically)")
    m.add_argument("--dtype", choices=DTYPES, default=None, help="output dtype (default: the checkpoint's)")
    m.add_argument("--config", metavar="FILE", default=None,
                   help="HF config.json (default: the one kept in the checkpoint's hf_meta/)")
    m.add_argument("--meta-from", metavar="DIR", default=None,
                   help="HF directory to take config, tokenizer and metadata files from (default: the checkpoint's "
                   "hf_meta/; a run's checkpoints keep one)")
    m.add_argument("--shard-gb", type=float, default=5.0, help="max shard size when writing a new shard layout (GiB)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    progress = False if a.no_progress else True
    try:
        if a.command == "hf-to-megatron":
            out, converted = ensure_megatron(a.hf, a.out, a.tp, a.pp, vpp=a.vpp, dtype=a.dtype,
                                             norm_names=a.norm_names, force=a.force, progress=progress)
            log.info("%s: %s", "converted" if converted else "up to date", out)
        else:
            from .convert import megatron_to_hf

            megatron_to_hf(a.megatron, a.out, a.dtype, config=a.config, meta_from=a.meta_from,
                           shard_bytes=int(a.shard_gb * 1024**3), overwrite=a.overwrite, progress=progress)
    except ConversionError as e:
        log.error("%s", e)
        return 2
    return 0


def _exit(rc: int) -> None:
    """In a process started as ``python -m ckpt_convertor``, leave without the interpreter's
    teardown of torch (0.45 s on the benchmark host, ~4% of a 7B conversion). Safe there: every
    output file is closed, fsynced and renamed before :func:`main` returns, no thread is left,
    and the log and stdio are flushed first. Run any other way (``runpy`` from a wrapper that
    goes on after us), it exits normally."""
    if os.path.abspath(sys.argv[0]) != os.path.abspath(__file__):
        sys.exit(rc)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    _exit(main())

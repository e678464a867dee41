"""The training entry point's configuration: compose, check, prepare — all before any worker starts.

Why a module of its own: RLinf's ``validate_cfg`` starts the Ray cluster before it checks anything,
and accepts any key (a misspelt one is silently ignored). A bad YAML must instead fail at once,
naming the key. So the driver (``rlinf_pangu.train``) runs, in this order:

1. :func:`compose` — hydra composes the example YAML with its ``defaults`` from ``configs/`` plus
   ``key=value`` overrides (hydra's own grammar: an override of an unknown key already fails).
2. :func:`check_known_keys` — every key must exist in the schema, ``configs/rlinf/`` (RLinf's
   reasoning GRPO keys plus the project's ``pangu`` section); the error names the key and the
   closest known one.
3. :func:`prepare` — absolute paths (Ray workers do not share the driver's cwd), the tiny
   checkpoint made on first use, and the Pangu checks: ``rollout.model.model_type`` is ``pangu``
   for a Pangu checkpoint, actor TP/PP and rollout TP fit the model's heads/layers, the eos id is
   the tokenizer's, the precision is one RLinf's Megatron path accepts; and
   :func:`check_placement`: ``cluster.component_placement`` is one RLinf can run (colocated, or
   disaggregated with an inference group of its own), each group's parallelism fits its devices.

Only then does the driver call RLinf's ``validate_cfg``. :func:`resolve_rlinf` runs RLinf's own
validators on a copy *without* a cluster, so tests (and ``--dry-run``) can see the resolved RLinf
config of a 7B/8-GPU job on a CPU host, and the placement RLinf's own class makes of it.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
#: The reusable YAML pieces (schema + groups). Overridable for installs without the repository.
CONFIGS_DIR = Path(os.environ.get("RLINF_PANGU_CONFIGS", ROOT / "configs"))
#: The schema: every key the entry point accepts, with its default.
SCHEMA_FILE = "rlinf/grpo_megatron_sglang.yaml"
#: The schema piece of each other training backend, merged over the schema when the YAML selects
#: it (``actor.training_backend``): its keys are accepted with that backend only.
BACKEND_SCHEMA_FILES = {"fsdp": "rlinf/fsdp.yaml"}
#: Subtrees whose keys are free-form (RLinf reads them as maps or passes them on as-is).
OPEN_SUBTREES = (
    "cluster.component_placement",
    "cluster.node_groups",
    "cluster.profiling",
    "pangu.make_checkpoint.overrides",
)
#: Config paths that name files or folders; made absolute in the driver (Ray workers' cwd differs).
PATH_KEYS = (
    "rollout.model.model_path",
    "runner.output_dir",
    "data.train_data_paths",
    "data.val_data_paths",
    "runner.resume_dir",
)
#: Values of path keys that are words, not paths (``runner.resume_dir=auto``).
PATH_WORDS = ("auto",)
#: ``precision`` values RLinf's Megatron path accepts (``rlinf/utils/initialize.py``).
MEGATRON_PRECISIONS = ("bf16", "fp16", "bf16-mixed", "16", "16-mixed")
#: ... and, in the CPU mode only, fp32 (``rlinf_pangu/patches/cpu.py`` redirects RLinf's args for it).
CPU_PRECISIONS = ("fp32", "32", "32-true")


class ConfigError(ValueError):
    """A config that cannot run; the message names the key (``key``) and why."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


# --------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------


def register_resolvers() -> None:
    """``${pangu_data:NAME}``: the absolute path of a dataset bundled in ``rlinf_pangu/data``."""
    if not OmegaConf.has_resolver("pangu_data"):
        from .data import data_path

        OmegaConf.register_new_resolver("pangu_data", lambda name: str(data_path(name)))
    import rlinf.utils.omega_resolver  # noqa: F401  (RLinf's ${subtract:...}, ${not:...})


def compose(config: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``config`` (a YAML path) with its hydra ``defaults`` from ``configs/`` and ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    path = Path(config).resolve()
    if not path.is_file():
        raise ConfigError("--config", f"no such file: {config}")
    if not CONFIGS_DIR.is_dir():
        raise ConfigError("--config", f"configs folder not found at {CONFIGS_DIR} (set RLINF_PANGU_CONFIGS)")
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.3", job_name="rlinf_pangu"):
        try:
            cfg = hydra_compose(
                config_name=path.stem,
                overrides=[f"hydra.searchpath=[file://{CONFIGS_DIR}]", *overrides],
            )
        except Exception as e:  # hydra's errors name the override or the missing group option
            raise ConfigError(_hydra_key(e), f"{type(e).__name__}: {e}") from e
    with open_dict(cfg):
        cfg.pop("hydra", None)
    drop_null_placements(cfg)
    return cfg


def drop_null_placements(cfg: DictConfig) -> None:
    """Remove ``cluster.component_placement`` entries whose value is null.

    Why: hydra merges dicts, so a cluster piece that lays components out differently (separate
    ``actor``/``rollout``/``inference`` keys) would otherwise inherit the combined
    ``actor,rollout,reward`` key of the schema or of a piece it includes, and RLinf would see
    every component placed twice. A piece sets the inherited key to null to drop it.
    """
    placement = OmegaConf.select(cfg, "cluster.component_placement")
    if not isinstance(placement, DictConfig):
        return
    with open_dict(cfg):
        for key in [k for k in placement.keys() if placement._get_node(k)._is_none()]:
            placement.pop(key)


def _hydra_key(e: Exception) -> str:
    msg = str(e)
    for marker in ("Could not override '", "Key '", "key '"):
        if marker in msg:
            return msg.split(marker, 1)[1].split("'", 1)[0]
    return "overrides"


# --------------------------------------------------------------------------------------
# Unknown keys
# --------------------------------------------------------------------------------------


def training_backend(cfg: DictConfig) -> str:
    """``actor.training_backend``: ``megatron`` (the schema's) or ``fsdp`` (``configs/rlinf/fsdp.yaml``)."""
    return str(OmegaConf.select(cfg, "actor.training_backend", default="megatron"))


def schema_files(backend: str = "megatron") -> list[str]:
    return [SCHEMA_FILE] + ([BACKEND_SCHEMA_FILES[backend]] if backend in BACKEND_SCHEMA_FILES else [])


def load_schema(backend: str = "megatron") -> DictConfig:
    """The accepted keys: the schema, plus the backend's own piece (RLinf's FSDP actor's keys)."""
    return OmegaConf.merge(*(OmegaConf.load(CONFIGS_DIR / f) for f in schema_files(backend)))


def _keys(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, DictConfig):
        for k in node.keys():
            path = f"{prefix}.{k}" if prefix else str(k)
            yield path
            if path in OPEN_SUBTREES:
                continue
            try:
                child = node._get_node(k)
            except Exception:
                continue
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
                yield from _keys(child, path)


def check_known_keys(cfg: DictConfig, schema: DictConfig | None = None) -> None:
    """Reject any key that is not in the schema, naming it and the closest known key."""
    schema = schema if schema is not None else load_schema(training_backend(cfg))
    known = set(_keys(schema))
    for key in _keys(cfg):
        if key in known or any(key.startswith(o + ".") for o in OPEN_SUBTREES):
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in known if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
        close = difflib.get_close_matches(key, siblings or list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = " + ".join(f"configs/{f}" for f in schema_files(training_backend(cfg)))
        raise ConfigError(key, f"unknown key{hint}; the accepted keys are in {where}")


# --------------------------------------------------------------------------------------
# Preparation and the Pangu checks
# --------------------------------------------------------------------------------------


def device(cfg: DictConfig) -> str:
    """``cluster.device``: ``gpu`` or ``cpu`` (the explicit CPU mode)."""
    dev = str(cfg.cluster.get("device", "gpu")).lower()
    if dev not in ("gpu", "cpu"):
        raise ConfigError("cluster.device", f"must be 'gpu' or 'cpu', got {dev!r}")
    return dev


def absolutize_paths(cfg: DictConfig, base: Path | None = None) -> None:
    """Make the path-valued keys absolute, relative to ``base`` (the driver's cwd)."""
    base = Path(base or os.getcwd())

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and v not in PATH_WORDS and not v.startswith(("/", "hdfs:", "s3:", "gs:")):
            return str((base / v).resolve())
        return v

    with open_dict(cfg):
        for key in PATH_KEYS:
            node_key, leaf = key.rsplit(".", 1)
            parent = OmegaConf.select(cfg, node_key)
            if parent is None or leaf not in parent or OmegaConf.is_missing(parent, leaf):
                continue
            value = parent[leaf]
            if isinstance(value, (list, ListConfig)):
                parent[leaf] = [fix(v) for v in value]
            else:
                parent[leaf] = fix(value)


def ensure_checkpoint(cfg: DictConfig) -> Path:
    """The HF checkpoint at ``rollout.model.model_path``; made by the factory if missing and enabled."""
    path = Path(cfg.rollout.model.model_path)
    mk = cfg.pangu.make_checkpoint
    if (path / "config.json").is_file():
        return path
    if not mk.enabled:
        raise ConfigError(
            "rollout.model.model_path",
            f"no HF checkpoint at {path} (config.json missing); point it at an openPangu-Embedded "
            "checkpoint or set pangu.make_checkpoint.enabled=true for a random one",
        )
    from .make_checkpoint import make_checkpoint

    import shutil
    import tempfile

    overrides = OmegaConf.to_container(mk.overrides, resolve=True) or {}
    log.info("making a %s checkpoint (seed %d, %s) at %s", mk.preset, mk.seed, mk.dtype, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:  # made and finished (prior included) aside, then renamed into place
        tmp = make_checkpoint(staging / "ckpt", preset_name=mk.preset, seed=int(mk.seed), dtype=str(mk.dtype), **overrides)
        for step in mk.get("finish", None) or []:
            _finish_step(tmp, cfg, step)
        try:
            tmp.rename(path)
        except OSError:  # two runs started at once on a fresh cache: the first one's checkpoint stands
            if not (path / "config.json").is_file():
                raise
            log.info("%s appeared meanwhile (another run made it): using that one", path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _finish_step(ckpt: Path, cfg: DictConfig, step: Any) -> None:
    """One ``pangu.make_checkpoint.finish`` step: ``{call: "module:function", **kwargs}``, called as
    ``function(ckpt, cfg, **kwargs)`` on the new checkpoint before it is moved into place."""
    import importlib

    kwargs = OmegaConf.to_container(step, resolve=True) if isinstance(step, DictConfig) else dict(step)
    target = str(kwargs.pop("call", ""))
    module, _, name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError("pangu.make_checkpoint.finish", f"cannot load {target!r} (want 'module:function'): {e}") from e
    log.info("finishing the checkpoint with %s(%s)", target, ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    fn(ckpt, cfg, **kwargs)


def chat_prompts(cfg: DictConfig, ckpt: Path, limit: int = 32) -> list[str]:
    """The first training prompts as the model sees them (chat template applied)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    out = []
    with open(cfg.data.train_data_paths[0]) as f:
        for line in f:
            prompt = json.loads(line)[cfg.data.prompt_key]
            out.append(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
                       if cfg.data.apply_chat_template else prompt)
            if len(out) >= limit:
                break
    return out


def _hf_config_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError("rollout.model.model_path", f"cannot read {path / 'config.json'}: {e}") from e


def is_pangu_checkpoint(hf: dict[str, Any]) -> bool:
    from .hf.configuration import PanguEmbeddedConfig

    archs = hf.get("architectures") or []
    return hf.get("model_type") == PanguEmbeddedConfig.model_type or "PanguEmbeddedForCausalLM" in archs


def check_pangu(cfg: DictConfig) -> None:
    """The Pangu checks against the checkpoint's config.json; each error names the key."""
    from . import MODEL_TYPE
    from .chat import EOS_TOKEN_ID
    from .layout import LayoutError, PanguDims

    hf = _hf_config_json(Path(cfg.rollout.model.model_path))
    model_type = cfg.rollout.model.get("model_type")
    if is_pangu_checkpoint(hf):
        if model_type != MODEL_TYPE:
            raise ConfigError(
                "rollout.model.model_type",
                f"{model_type!r} but {cfg.rollout.model.model_path} is an openPangu-Embedded checkpoint; "
                f"set it to {MODEL_TYPE!r} (it selects the Pangu sync convertor and reshard functions)",
            )
    elif model_type == MODEL_TYPE:
        raise ConfigError(
            "rollout.model.model_type",
            f"'pangu' but {cfg.rollout.model.model_path} is not an openPangu-Embedded checkpoint "
            f"(model_type {hf.get('model_type')!r})",
        )
    if not is_pangu_checkpoint(hf):
        return
    dims = PanguDims.from_hf_config(hf)
    model = cfg.actor.model
    # RLinf derives megatron.untie_embeddings_and_output_weights from this key *before* it copies
    # tie_word_embeddings from the HF config: state it up front so both agree (tied 1B).
    with open_dict(cfg):
        model.share_embeddings_and_output_weights = bool(hf.get("tie_word_embeddings", False))
    if training_backend(cfg) == "fsdp":
        check_fsdp(cfg)  # data-parallel only: the TP/PP checks below hold trivially
    tp, pp = int(model.tensor_model_parallel_size), int(model.pipeline_model_parallel_size)
    vpp = model.get("virtual_pipeline_model_parallel_size")
    try:
        dims.check_parallel(tp, pp, int(vpp) if vpp else None)
    except LayoutError as e:
        key = "actor.model.tensor_model_parallel_size" if "tensor parallel" in str(e) else "actor.model.pipeline_model_parallel_size"
        raise ConfigError(key, str(e)) from e
    rtp = int(cfg.rollout.get("tensor_parallel_size", 1))
    try:
        dims.check_parallel(rtp, 1)
    except LayoutError as e:
        raise ConfigError("rollout.tensor_parallel_size", str(e)) from e
    if training_backend(cfg) == "megatron" and (rtp > tp or tp % rtp):
        raise ConfigError(
            "rollout.tensor_parallel_size",
            f"{rtp} must divide actor.model.tensor_model_parallel_size={tp} (RLinf's colocated weight sync "
            "gathers actor TP shards into rollout TP shards)",
        )
    eos = cfg.rollout.get("eos")
    want_eos = int(hf.get("eos_token_id", EOS_TOKEN_ID) if not isinstance(hf.get("eos_token_id"), list) else hf["eos_token_id"][0])
    if eos is not None and int(eos) != want_eos:
        raise ConfigError("rollout.eos", f"{eos} but the checkpoint's eos_token_id is {want_eos} ([unused10])")
    check_precision(cfg)
    if cfg.reward.reward_type in ("math",):
        log.warning(
            "reward.reward_type=math grades the whole completion, thinking included; "
            "pangu_math grades only the answer after [unused17]"
        )


#: Attention implementations that keep sequences packed into one row apart (through their
#: position ids): what RLinf's FSDP packing (``variable_seq_lengths``, dynamic batch size) needs.
PACKING_ATTENTION = ("flash_attention_2",)
#: (key, value) of the FSDP actor -> the package that value needs.
FSDP_KERNEL_PACKAGES = {
    ("actor.model.attn_implementation", "flash_attention_2"): "flash_attn",
    ("algorithm.entropy_op_type", "flash_attn"): "flash_attn",
    ("algorithm.entropy_op_type", "liger_kernel"): "liger_kernel",
    ("actor.fsdp_config.use_liger_kernel", True): "liger_kernel",
}


def check_fsdp(cfg: DictConfig) -> None:
    """RLinf's FSDP actor (``configs/rlinf/fsdp.yaml``), before any worker starts.

    * It shards data-parallel over every actor rank: the Megatron parallel sizes must stay 1.
    * A kernel choice needs its package (flash-attn and liger-kernel are not in this stack).
    * RLinf's packed forward needs an attention that keeps the packed sequences apart; with sdpa
      a packed sequence's logits were off by ~6 (measured, tiny model).
    * RLinf's own FSDP checks (mixed precision vs autocast ...), which it asserts only after Ray started.
    """
    import importlib.util

    model = cfg.actor.model
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size"):
        if int(model.get(key, None) or 1) != 1:
            raise ConfigError(
                f"actor.model.{key}",
                f"{model.get(key)}: RLinf's FSDP actor shards data-parallel over all actor ranks; tensor/pipeline "
                "parallelism is the Megatron actor's (actor.training_backend: megatron)",
            )
    for (key, value), package in FSDP_KERNEL_PACKAGES.items():
        if OmegaConf.select(cfg, key) == value and importlib.util.find_spec(package) is None:
            raise ConfigError(key, f"{value!r} needs the {package} package, which is not installed (configs/rlinf/fsdp.yaml has the defaults that run without it)")
    attention = model.get("attn_implementation", None)
    for key in ("actor.model.variable_seq_lengths", "runner.enable_dynamic_batch_size"):
        if OmegaConf.select(cfg, key) and attention not in PACKING_ATTENTION:
            raise ConfigError(
                key,
                f"true makes RLinf's FSDP actor pack sequences into one row, which {attention!r} attention does "
                "not keep apart (each token would attend to the sequences packed before it); set it to false, "
                "or actor.model.attn_implementation to flash_attention_2 with flash-attn installed",
            )
    from rlinf import config as rc

    try:
        rc.validate_fsdp_cfg(copy.deepcopy(cfg.actor))
    except AssertionError as e:
        raise ConfigError("actor.fsdp_config", str(e)) from e


def check_precision(cfg: DictConfig) -> None:
    """``actor.model.precision``: fp16/bf16 for RLinf's Megatron path; fp32 too in the CPU mode
    (this CPU has no bf16 instructions; its redirect, ``rlinf_pangu/patches/cpu.py``, lets RLinf's
    Megatron args take fp32), where the optimizer's bf16/fp16 flags must then be off."""
    if cfg.actor.training_backend != "megatron":
        return
    precision = str(cfg.actor.model.precision)
    accepted = MEGATRON_PRECISIONS + (CPU_PRECISIONS if device(cfg) == "cpu" else ())
    if precision not in accepted:
        cpu_hint = "; fp32 only in the CPU mode (cluster: cpu)" if precision in CPU_PRECISIONS else ""
        raise ConfigError(
            "actor.model.precision",
            f"{precision!r}: RLinf's Megatron path accepts only fp16/bf16 (openPangu is bf16){cpu_hint}",
        )
    if precision in CPU_PRECISIONS:
        for flag in ("bf16", "fp16"):
            if cfg.actor.optim.get(flag):
                raise ConfigError(f"actor.optim.{flag}", f"true with actor.model.precision={precision}; set it to false")


def check_placement(cfg: DictConfig) -> str:
    """``cluster.component_placement`` against RLinf's colocated/disaggregated rules and the
    parallel sizes (:mod:`rlinf_pangu.placement`); returns the mode."""
    from . import placement

    found = placement.check(cfg)
    log.info("placement: %s", found)
    return found


def prepare(cfg: DictConfig, base: Path | None = None) -> DictConfig:
    """Everything that must hold before RLinf's validate_cfg starts the cluster (in place)."""
    check_known_keys(cfg)
    device(cfg)
    check_placement(cfg)
    absolutize_paths(cfg, base)
    ensure_checkpoint(cfg)
    check_pangu(cfg)
    check_resume(cfg)
    return cfg


def check_resume(cfg: DictConfig) -> int | None:
    """``runner.resume_dir`` resolved and checked before Ray starts (``rlinf_pangu.run_checkpoint``):
    ``auto`` -> this run's latest complete checkpoint (or a fresh start), a path -> a complete
    checkpoint of this model at this actor TP/PP. Returns the step the run continues from."""
    from . import run_checkpoint

    try:
        ckpt = run_checkpoint.resolve(cfg)
    except run_checkpoint.CheckpointError as e:
        raise ConfigError("runner.resume_dir", str(e)) from e
    if ckpt is None:
        return None
    max_steps = int(cfg.runner.get("max_steps", -1))
    if 0 <= max_steps <= ckpt.step:
        raise ConfigError(
            "runner.max_steps",
            f"{max_steps}, but the checkpoint to resume from ({ckpt.path}) is at step {ckpt.step}: "
            "nothing is left to train (raise runner.max_steps to train on)",
        )
    return ckpt.step


def resolve_rlinf(cfg: DictConfig) -> DictConfig:
    """RLinf's reasoning/Megatron (or FSDP) validation on a copy, without starting a cluster.

    The same validators ``rlinf.config.validate_cfg`` runs after its ``Cluster(...)``: reasoning,
    rollout, Megatron defaults and the model shapes from the HF config. (They are not idempotent,
    so the real run validates the original once more through ``validate_cfg``.)
    """
    from rlinf import config as rc

    from . import register

    register()
    cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(cfg, True)
    cfg = rc.validate_reasoning_cfg(cfg)
    if training_backend(cfg) == "fsdp":  # validate_cfg's FSDP branch, less its placement assert
        cfg.actor = rc.validate_fsdp_cfg(cfg.actor)
    else:
        cfg.actor = rc.validate_megatron_cfg(cfg.actor)
        cfg.actor = rc.validate_model_cfg_by_hf_config(cfg.actor, cfg.rollout.model.model_path)
    log_rlinf_placement(cfg)
    return cfg


def log_rlinf_placement(cfg: DictConfig) -> dict[str, Any]:
    """RLinf's own placement class on the devices the YAML names (no cluster needed): the mode
    and weight-sync mode it picks, each group's ranks, which actor rank feeds which rollout rank."""
    from .placement import resolve_with_rlinf

    resolved = resolve_with_rlinf(cfg)
    log.info(
        "RLinf placement on %d device(s): %s, rollout sync %s; %s; actor rank -> rollout (dp, tp): %s",
        resolved["devices"], resolved["mode"], resolved["rollout_sync_mode"],
        ", ".join(f"{k} {v}" for k, v in resolved["groups"].items()), resolved["actor_to_rollout"],
    )
    return resolved

"""``cluster.component_placement`` read before Ray starts: which components share devices, and
whether RLinf's reasoning runner can run that placement.

Why a module of its own: RLinf 0.3.0 decides between its two model-parallel modes only inside
``ModelParallelComponentPlacement``, which the driver builds after ``validate_cfg`` started the
Ray cluster, and it rejects what it cannot run with bare asserts deep in its constructor, its rank
mappers or a worker. RLinf's rules, as its placement code states them:

* **colocated** — actor and rollout on the *same* devices (they take turns; weights travel as
  CUDA IPC handles); no inference group (the actor recomputes the log-probs);
* **disaggregated** — actor, rollout and inference each on devices of their own (disjoint
  ranges; RLinf's placement docstring: "actor, rollout, and inference should all exist"); the
  runner pipelines rollout, inference and training, and weights go over the collective. Without
  ``algorithm.recompute_logprobs`` there is nothing for an inference group to do, and RLinf then
  forbids one. (RLinf's placement class itself accepts a disaggregated placement with the
  recompute on and no inference group: the actor then recomputes between rollout and training;
  a 2-step CPU run of that went through. The driver holds YAMLs to the documented contract.);
* anything in between (partly overlapping ranges) is neither, and RLinf refuses it.

:func:`check` applies these rules to the YAML and raises :class:`~rlinf_pangu.config.ConfigError`
naming the key. :class:`PlannedDevices` lets RLinf's own placement class run without a cluster
(:func:`resolve_with_rlinf`: the dry run's view of a GPU job; the CPU mode's numbering of its
processes, ``rlinf_pangu/patches/cpu.py``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping

log = logging.getLogger(__name__)

__all__ = [
    "Entry", "parse", "mode", "check", "planned_devices", "PlannedDevices", "resolve_with_rlinf",
    "COLOCATED", "DISAGGREGATED", "KEY",
]

KEY = "cluster.component_placement"
COLOCATED, DISAGGREGATED = "colocated", "disaggregated"
#: The components RLinf's model-parallel placement lays out as one contiguous device range each.
MODEL_PARALLEL = ("actor", "rollout", "inference")

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class Entry:
    """One component's devices as the YAML gives them.

    ``devices`` is ``None`` for ``all`` (the count is the cluster's, unknown before Ray starts)
    and for a placement on a named node group (ranks counted within that group)."""

    name: str
    key: str  # the YAML key it was read from, e.g. "actor,rollout,reward"
    devices: tuple[int, ...] | None

    @property
    def config_key(self) -> str:
        return f"{KEY}.{self.key}"


def _ranks(text: str, key: str) -> list[int] | None:
    """``"a"`` / ``"a-b"`` -> the ranks; ``"all"`` -> None."""
    if text.strip() == "all":
        return None
    m = _RANGE.match(text)
    if not m:
        from .config import ConfigError

        raise ConfigError(f"{KEY}.{key}", f"cannot read {text!r} as device ranks (want N, A-B or all)")
    lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
    if hi < lo:
        from .config import ConfigError

        raise ConfigError(f"{KEY}.{key}", f"range {text!r} ends before it starts")
    return list(range(lo, hi + 1))


def _devices(value: Any, key: str) -> tuple[int, ...] | None:
    if isinstance(value, Mapping) or hasattr(value, "keys"):
        if value.get("node_group") is not None:
            return None  # ranks within a named node group: RLinf resolves those against the cluster
        value = value.get("placement", "")
    devices: list[int] = []
    for part in str(value).split(","):
        if not part.strip():
            continue
        ranks = _ranks(part.split(":", 1)[0], key)  # "devices:processes": the devices decide
        if ranks is None:
            return None
        devices += ranks
    return tuple(devices)


def parse(component_placement: Mapping[str, Any] | None) -> dict[str, Entry]:
    """``{component: Entry}`` for every component named in ``cluster.component_placement``."""
    out: dict[str, Entry] = {}
    for key, value in (component_placement or {}).items():
        devices = _devices(value, str(key))
        for name in (n.strip() for n in str(key).split(",")):
            out[name] = Entry(name, str(key), devices)
    return out


def _overlap(a: Entry, b: Entry) -> set[int] | str | None:
    """Shared devices of two entries: a set, ``"all"`` when one spans everything, None if disjoint."""
    if a.devices is None or b.devices is None:
        return "all"
    shared = set(a.devices) & set(b.devices)
    return shared or None


def mode(cfg: Any) -> str:
    """``colocated`` or ``disaggregated`` (RLinf's two model-parallel modes), from the YAML alone."""
    entries = parse(cfg.cluster.get("component_placement"))
    actor, rollout = entries.get("actor"), entries.get("rollout")
    if actor is None or rollout is None or actor.devices == rollout.devices:
        return COLOCATED
    return DISAGGREGATED


def _config_error(key: str, message: str) -> Exception:
    from .config import ConfigError

    return ConfigError(key, message)


def _tp(cfg: Any, section: str) -> tuple[int, int]:
    node = cfg.get(section)
    model = node.get("model") if node is not None else None
    if model is None:
        return 1, 1
    return int(model.get("tensor_model_parallel_size", 1) or 1), int(model.get("pipeline_model_parallel_size", 1) or 1)


def check(cfg: Any) -> str:
    """Raise ``ConfigError`` for a placement RLinf cannot run; returns the mode.

    Every rule below is one RLinf enforces only after Ray started (or, for the rank maps, only
    when the first weight sync runs).
    """
    entries = parse(cfg.cluster.get("component_placement"))
    for name in ("actor", "rollout", "reward"):
        if name not in entries:
            raise _config_error(KEY, f"no {name!r} entry; RLinf's reasoning runner needs actor, rollout and reward placed")
    for name in MODEL_PARALLEL:
        e = entries.get(name)
        if e is not None and e.devices is not None and list(e.devices) != list(range(e.devices[0], e.devices[-1] + 1)):
            raise _config_error(e.config_key, f"{name} devices {list(e.devices)} are not one contiguous range; "
                                "RLinf's model-parallel placement needs A-B")
    actor, rollout, inference = entries["actor"], entries["rollout"], entries.get("inference")
    recompute = bool(cfg.algorithm.get("recompute_logprobs", True))

    if actor.devices == rollout.devices:
        if inference is not None:
            raise _config_error(inference.config_key, "an inference group needs the disaggregated mode; here actor and rollout "
                                "share their devices (colocated), where the actor recomputes the log-probs itself")
        found = COLOCATED
    else:
        members = [e for e in (actor, rollout, inference) if e is not None]
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                shared = _overlap(a, b)
                if shared is not None:
                    where = "all devices" if shared == "all" else f"devices {sorted(shared)}"
                    raise _config_error(b.config_key, f"{b.name} and {a.name} overlap on {where}. RLinf runs either colocated "
                                        "(actor and rollout on exactly the same devices, no inference group) or disaggregated "
                                        "(actor, rollout and inference on disjoint ranges), nothing in between")
        if recompute and inference is None:
            raise _config_error(KEY, "disaggregated placement (actor and rollout on separate devices) without an 'inference' "
                                "entry: RLinf's disaggregated mode expects actor, rollout and inference on devices of their "
                                "own (its placement's contract); without one the actor recomputes the log-probs itself, "
                                "between its rollouts and its training. Add e.g. 'inference: <ranks>', or set "
                                "algorithm.recompute_logprobs=false (GRPO then uses SGLang's own log-probs)")
        if not recompute and inference is not None:
            raise _config_error("algorithm.recompute_logprobs", "false disables the log-prob recompute, so RLinf refuses an "
                                f"inference group ({inference.config_key}); drop that entry or set it to true")
        found = DISAGGREGATED
    _check_sizes(cfg, entries, found)
    return found


def _check_sizes(cfg: Any, entries: dict[str, Entry], found: str) -> None:
    """Each group's model parallelism fits its device count (explicit ranges only: ``all`` is
    counted by the cluster)."""
    actor, rollout, inference = entries["actor"], entries["rollout"], entries.get("inference")
    atp, app = _tp(cfg, "actor")
    rtp = int(cfg.rollout.get("tensor_parallel_size", 1) or 1)
    rpp = int(cfg.rollout.get("pipeline_parallel_size", 1) or 1)
    if actor.devices is not None and len(actor.devices) % (atp * app):
        raise _config_error(actor.config_key, f"{len(actor.devices)} actor device(s) do not hold whole copies of the actor at "
                            f"TP {atp} x PP {app} (actor.model.tensor/pipeline_model_parallel_size)")
    if rollout.devices is not None:
        n = len(rollout.devices)
        if n < rtp * rpp or n % (rtp * rpp):
            raise _config_error("rollout.tensor_parallel_size", f"{rtp} (x pipeline {rpp}) does not fit the rollout's {n} device(s) "
                                f"({rollout.config_key}): each SGLang engine takes TP x PP devices of its own")
        if found == DISAGGREGATED and (n < atp or n % atp):
            raise _config_error(rollout.config_key, f"{n} rollout device(s) for actor TP {atp}: RLinf's disaggregated sync maps each "
                                "actor TP rank to its own rollout ranks, so the rollout needs a multiple of actor TP devices")
    if inference is not None:
        itp, ipp = _tp(cfg, "inference")
        if (itp, ipp) != (atp, app):
            raise _config_error("inference.model.tensor_model_parallel_size", f"inference TP {itp} x PP {ipp} differs from the "
                                f"actor's TP {atp} x PP {app}: the inference group starts from the actor's converted Megatron "
                                "checkpoint, which holds shards for the actor's layout only")
        if inference.devices is not None and len(inference.devices) % (itp * ipp):
            raise _config_error(inference.config_key, f"{len(inference.devices)} inference device(s) do not hold whole copies "
                                f"of the model at TP {itp} x PP {ipp}")


def planned_devices(cfg: Any) -> int:
    """How many devices the placement names: the highest explicit rank + 1, and for ``all`` at
    least what one actor and one rollout engine need."""
    entries = parse(cfg.cluster.get("component_placement"))
    explicit = [d for e in entries.values() if e.devices for d in e.devices]
    atp, app = _tp(cfg, "actor")
    rtp = int(cfg.rollout.get("tensor_parallel_size", 1) or 1)
    if explicit:
        return max(explicit) + 1
    return max(atp * app, rtp, 1)


class PlannedDevices:
    """What RLinf's ``ComponentPlacement`` asks of a ``Cluster`` while it reads the YAML, answered
    for ``count`` devices of the default node group, without Ray.

    RLinf's placement classes consult the cluster only for the size of the node group the ranks
    count in (and, in AUTO mode, the accelerator count); the worker launch uses the strategies,
    which the CPU mode replaces anyway.
    """

    def __init__(self, count: int):
        self.count = int(count)

    def get_node_group(self, label: str | None = None) -> Any:
        if label not in (None, "cluster"):
            return None  # named node groups exist only in a real cluster
        return SimpleNamespace(label="cluster", hardware_type=None, hardware_resource_count=self.count)

    @property
    def num_accelerators(self) -> int:
        return self.count


def resolve_with_rlinf(cfg: Any, devices: int | None = None) -> dict[str, Any]:
    """RLinf's own ``ModelParallelComponentPlacement`` on ``devices`` planned devices: its mode,
    the rollout sync mode it picks, each group's ranks and the actor -> rollout rank map."""
    from rlinf.utils.placement import ModelParallelComponentPlacement
    from rlinf.workers.rollout.utils import RankMapper

    count = devices or planned_devices(cfg)
    try:
        p = ModelParallelComponentPlacement(cfg, PlannedDevices(count))
        rank_map = RankMapper.get_actor_rank_to_rollout_rank_map(p)
    except (AssertionError, ValueError) as e:
        raise _config_error(KEY, f"RLinf's placement refuses it on {count} device(s): {e}") from e
    groups = {name: p.get_hardware_ranks(name) for name in ("actor", "rollout", "inference", "reward") if name in p._component_rank_map}
    return {
        "devices": count,
        "mode": p._placement_mode.name,
        "rollout_sync_mode": p._rollout_sync_mode.name,
        "groups": groups,
        "actor_to_rollout": {int(k): v for k, v in rank_map.items()},
    }

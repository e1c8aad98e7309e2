"""A running job's shard states cut again over a new set of ranges: live shard scaling's pure
core (the RPCs and the order of a move are :mod:`pscluster.coordinator.moves`).

The job is paused between two steps on every shard: each member waits in a pull, each push
it made has been answered. Every old shard's skeleton (``JobState.state_dict`` but what is per
value, the values, the optimizer's per-element moments and an open sync step's summed
gradient, and but the tables' rows, all of which travel shard to shard:
:mod:`pscluster.coordinator.recut_moves`, :mod:`pscluster.server.tables.moving_rows`) is cut
by global offset (buffers, the held-zeros mask, an open sync step's buffer sums), and what is
the job's rather than a range's (version, clocks, membership, the push ledger, whole-vector
and whole-table optimizer scalars) is carried, so that the job goes on on the new shards
exactly as it would have on the old ones. A state that cannot be carried exactly raises
ValueError, and the caller leaves the job where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from pscluster.coordinator.recut_meta import merge_clocks, merge_ledgers, summed_counters
from pscluster.coordinator.recut_ranges import Piece, check_contiguous, cut, homes
from pscluster.coordinator.recut_step import Owner, pushes_differ, recut_policy
from pscluster.coordinator.recut_tables import recut_table
from pscluster.errors import InvalidArgument
from pscluster.model.partition import Range, rows_partitioner
from pscluster.server.convert import job_config
from pscluster.server.domain import JobConfig
from pscluster.server.durability import dense as dn
from pscluster.v1 import parameter_server_pb2 as ps_pb2

State = tuple[dict[str, torch.Tensor], dict[str, Any]]

_BUFFERS, _ZEROS = "buffers", "hold_zeros"
_OPT, _POLICY = "opt.", "policy."
# What the job runs with, which a move must not change (a live switch may have changed the
# consistency since the job was submitted, so the old states say it, not the new configs).
_KEPT = (
    "job_id", "mode", "staleness", "backup_workers", "local_steps", "optimizer", "codec",
    "staleness_aware_lr", "sparse_optimizer",
)  # fmt: skip
_GENERATION = "layout_generation"


@dataclass(frozen=True)
class _Old:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    config: JobConfig

    @property
    def values(self) -> Range:
        return Range(self.config.start, self.config.length)

    @property
    def buffers(self) -> Range:
        return Range(self.config.buffer_start, self.config.buffer_length)

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def recut_skeletons(
    old: Sequence[State], new_configs: Sequence[ps_pb2.ShardJobConfig], layout_generation: int
) -> list[State]:
    """One skeleton per new config (:mod:`pscluster.server.durability.dense`: all of a state
    but its per-value tensors, which it lists) from the old shards' skeletons in plan order;
    ValueError, naming what, if the old states do not describe one job at a step boundary or
    cannot be carried exactly.

    The version is the highest of the old shards'. In sync it is the open step, the same on
    every shard at a boundary; in async and ssp it counts the pushes applied on the shard,
    which differ where a push was refused on one shard alone. No pull waits for a version
    that never comes and no push is refused as ahead of the shard: every worker's next push
    is based on a pull from a new shard, and a pull's ``min_version`` was given by an old
    shard. Only an open sync step needs one version (its pushes were made for it).
    """
    olds = [_parse(tensors, meta) for tensors, meta in old]
    if not olds or not new_configs:
        raise ValueError(f"{len(olds)} old states to cut over {len(new_configs)} new configs")
    kept = _kept(olds)
    configs = [_new_config(c, kept, layout_generation) for c in new_configs]
    _check_layouts(olds, configs)
    new_values = [Range(c.start, c.length) for c in configs]
    policies = recut_policy(
        [(o.prefixed(_POLICY), o.meta["policy"]) for o in olds],
        ([o.values for o in olds], [o.buffers for o in olds]),
        (new_values, [Range(c.buffer_start, c.buffer_length) for c in configs]),
        _owners(kept, len(configs)),
    )
    open_step = any(m.get("pushes") for _, m in policies)
    sums = {dn.STEP_SUM, dn.STEP_CHANGE_SUM} & set(dn.dense_dtypes(olds[0].meta) or {})
    if open_step and not sums:
        raise ValueError("an old shard holds pushes of an open sync step but no gradient sum")
    meta = _job_meta(olds, open_step=open_step)
    counter_homes = homes([o.values for o in olds], new_values)
    tables = _tables(olds, configs, counter_homes)
    counters = summed_counters([o.meta["counters"] for o in olds], counter_homes, len(configs))
    dense = _Dense.of(olds)
    out: list[State] = []
    for index, config in enumerate(configs):
        tensors = dense.cut(config)
        tensors.update({_POLICY + k: v for k, v in policies[index][0].items()})
        state_meta = {
            **meta,
            "config": {**config.to_json(), _GENERATION: layout_generation},
            "policy": policies[index][1],
            "counters": counters[index],
            "tables": tables[index],
            dn.DENSE_KEY: olds[0].meta[dn.DENSE_KEY],
        }
        out.append((tensors, state_meta))
    return out


def boundary_mismatch(old: Sequence[State]) -> str | None:
    """Why the old shards' skeletons are not at one step boundary of the job (None: they
    are), though every member is between two steps on each. Either a membership change has
    reached some of them only (a SetMembers on its way), or a sync job's shards are half a
    step apart: a newcomer's joining reached one shard before a step closed there and another
    after, so each waits for different workers. That lasts until the roster changes again (a
    lease ends or begins), or the workers one shard waits for push there alone. Neither can be
    cut exactly; the caller lets the job go on and looks again."""
    generations = sorted({int(meta["generation"]) for _, meta in old})
    if len(generations) > 1:
        return (
            f"the job's shards are at different membership generations {generations} (a "
            "membership change that has not reached them all)"
        )
    return pushes_differ([meta.get("policy", {}) for _, meta in old])


def _job_meta(olds: Sequence[_Old], *, open_step: bool) -> dict[str, Any]:
    """What every new shard holds alike: the version (see :func:`recut`), membership and
    clocks, the push ledger, the optimizer's scalars and the consistency revision."""
    versions = sorted({int(o.meta["version"]) for o in olds})
    if open_step and len(versions) > 1:
        raise ValueError(f"a sync step is open on old shards at versions {versions}")
    generations = [int(o.meta["generation"]) for o in olds]
    return {
        "version": versions[-1],
        "clocks": merge_clocks(generations, [o.meta["clocks"] for o in olds]),
        "generation": generations[0],
        "last_push": merge_ledgers([o.meta["last_push"] for o in olds]),
        "optimizer": _same_scalars(olds),
        "consistency_revision": int(olds[0].meta.get("consistency_revision", 0)),
        "delta": False,
    }


def _check_layouts(olds: Sequence[_Old], configs: Sequence[JobConfig]) -> None:
    """ValueError unless the new configs are of the old states' job and their ranges cover
    exactly what the old ones did, each vector in plan order."""
    if len({c.job_id for c in configs}) != 1 or configs[0].job_id != olds[0].config.job_id:
        raise ValueError(
            f"the new configs are for {[c.job_id for c in configs]}, not {olds[0].config.job_id}"
        )
    for what, before, after in (
        ("parameter", [o.values for o in olds], [Range(c.start, c.length) for c in configs]),
        (
            "buffer",
            [o.buffers for o in olds],
            [Range(c.buffer_start, c.buffer_length) for c in configs],
        ),
    ):
        if check_contiguous(before, what) != check_contiguous(after, what):
            raise ValueError(f"the old {what} ranges cover {before}, the new ones {after}")


def _parse(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> _Old:
    if meta.get("delta"):
        raise ValueError("an old state is a delta checkpoint; a move cuts full states")
    if dn.dense_dtypes(meta) is None:
        raise ValueError("an old state is whole; skeletons are cut (dense.split it first)")
    config = _config_from_json(meta["config"])
    buffers = tensors.get(_BUFFERS)
    if config.buffer_length and (buffers is None or buffers.shape != (config.buffer_length,)):
        raise ValueError(f"an old state's buffers do not fill its {config.buffer_length}")
    return _Old(tensors, meta, config)


def _config_from_json(data: dict[str, Any]) -> JobConfig:
    """The config of a state; a ``layout_generation`` it carries is dropped where JobConfig
    does not know the field (the version of it this code was written against)."""
    known = {f.name for f in fields(JobConfig)}
    return JobConfig.from_json({k: v for k, v in data.items() if k in known})


def _kept(olds: Sequence[_Old]) -> JobConfig:
    """The first old config, once every old shard agrees on what the job runs with (its
    consistency and its revision, its optimizers, its codec)."""
    first = olds[0]
    for other in olds[1:]:
        differ = [n for n in _KEPT if getattr(other.config, n) != getattr(first.config, n)]
        revisions = (
            other.meta.get("consistency_revision", 0),
            first.meta.get("consistency_revision", 0),
        )
        if differ or revisions[0] != revisions[1]:
            raise ValueError(
                f"the old shards disagree on {differ or ['consistency_revision']} (a consistency "
                "switch that has not reached every shard?)"
            )
    return first.config


def _new_config(proto: ps_pb2.ShardJobConfig, kept: JobConfig, generation: int) -> JobConfig:
    """The new shard's layout (ranges, spans, its share of each table) with the job's own
    consistency, optimizers and codec."""
    try:
        layout = job_config(proto)
    except InvalidArgument as e:
        raise ValueError(f"a new shard config is not valid: {e}") from e
    config = replace(layout, **{name: getattr(kept, name) for name in _KEPT})
    if _GENERATION in {f.name for f in fields(JobConfig)}:
        stamped: dict[str, Any] = {_GENERATION: generation}
        config = replace(config, **stamped)
    if len(config.tables) != len(kept.tables):
        raise ValueError(
            f"the new configs have {len(config.tables)} tables, the job {len(kept.tables)}"
        )
    return config


def _owners(config: JobConfig, shards: int) -> list[Owner]:
    def owner(dynamic: bool) -> Owner:
        return lambda ids: rows_partitioner(dynamic).owner(ids, shards)

    return [owner(spec.dynamic) for spec in config.tables]


def _same_scalars(olds: Sequence[_Old]) -> dict[str, Any]:
    """The optimizer's whole-vector numbers (0-d tensors such as Adam's step travel with the
    tensors): equal on every shard at a boundary, or some shard missed a step."""
    scalars = [o.meta["optimizer"] for o in olds]
    if any(s != scalars[0] for s in scalars):
        raise ValueError(f"the old shards' optimizer scalars differ: {scalars}")
    return dict(scalars[0])


@dataclass(frozen=True)
class _Dense:
    """What of the old skeletons is cut by offset (buffers, the held-zeros mask) as pieces,
    and the optimizer's whole-vector tensors, read (and checked) once for every new shard."""

    buffers: list[Piece]
    zeros: list[Piece]
    whole: dict[str, torch.Tensor]  # 0-d: Adam's step

    @classmethod
    def of(cls, olds: Sequence[_Old]) -> _Dense:
        """ValueError if the shards hold different per-value tensors (one's optimizer has
        stepped, another's not) or different whole-vector ones (Adam's step)."""
        listed = [o.meta[dn.DENSE_KEY] for o in olds]
        if any(entry != listed[0] for entry in listed):
            raise ValueError(f"the old shards hold different per-value state: {listed}")
        held = [o.prefixed(_OPT) for o in olds]
        names = sorted(held[0])
        if any(sorted(h) != names for h in held):
            raise ValueError(f"the old shards hold different optimizer state: {held}")
        whole = {}
        for name in names:
            parts = [h[name] for h in held]
            if any(p.dim() != 0 for p in parts):
                raise ValueError(f"optimizer {name!r} is neither per element nor one number")
            if any(not torch.equal(p, parts[0]) for p in parts):
                found = [p.item() for p in parts]
                raise ValueError(f"the old shards' optimizer {name!r} differs: {found}")
            whole[name] = parts[0]
        return cls(
            [Piece(o.buffers.start, o.buffers.length, o.tensors.get(_BUFFERS)) for o in olds],
            [Piece(o.values.start, o.values.length, o.tensors.get(_ZEROS)) for o in olds],
            whole,
        )

    def cut(self, config: JobConfig) -> dict[str, torch.Tensor]:
        """A new shard's buffers, whole-vector optimizer state and held-zeros mask."""
        tensors = {}
        if config.buffer_length:
            b_start, b_length = config.buffer_start, config.buffer_length
            tensors[_BUFFERS] = cut(self.buffers, b_start, b_length, torch.float64)
        tensors.update({_OPT + name: t.clone() for name, t in self.whole.items()})
        mask = cut(self.zeros, config.start, config.length, torch.uint8)  # none held: no mask
        if bool(mask.any()):
            tensors[_ZEROS] = mask
        return tensors


def _tables(
    olds: Sequence[_Old], configs: Sequence[JobConfig], counter_homes: Sequence[int]
) -> list[list[dict[str, float]]]:
    """Per new shard, its tables' whole-table numbers, in order (their rows go shard to
    shard: :mod:`pscluster.server.tables.moving_rows`)."""
    out: list[list[dict[str, float]]] = [[] for _ in configs]
    for table in range(len(configs[0].tables)):
        cut_numbers = recut_table(
            [dict(o.meta["tables"][table]) for o in olds],
            [o.config.tables[table] for o in olds],
            [c.tables[table] for c in configs],
            counter_homes,
        )
        for numbers, cut_part in zip(out, cut_numbers, strict=True):
            numbers.append(cut_part)
    return out

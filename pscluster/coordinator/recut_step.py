"""A consistency policy's state cut again over new ranges (:mod:`pscluster.coordinator.recut`).

Async and ssp hold nothing between pushes. Sync holds its open step: the pushes taken for the
current version, their summed gradient, their summed buffer change and their row gradients.
A job whose members all wait in a pull may still have one (a worker read the version, pushed
for it, and waits for the others, who were held before they read it), so the step is cut
like the values: each new shard gets the same held pushes and its part of the sums, and the
step closes there when the rest of its members push, exactly as it would have on the old
shards. The summed gradient is per value and travels with the values, shard to shard
(:mod:`pscluster.server.durability.dense`); the buffer sums and row gradients are cut here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pscluster.coordinator.recut_ranges import Piece, cut
from pscluster.model.partition import Range

PolicyState = tuple[dict[str, torch.Tensor], dict[str, Any]]
# The new shard index of each id of one table (``id % shards`` or its hash owner).
Owner = Callable[[torch.Tensor], torch.Tensor]

_BUFFER_SUM, _ROWS = "buffer_sum", "rows."


def recut_policy(
    old: Sequence[PolicyState],
    ranges: tuple[Sequence[Range], Sequence[Range]],
    new_ranges: tuple[Sequence[Range], Sequence[Range]],
    owners: Sequence[Owner],
) -> list[PolicyState]:
    """Each new shard's policy state; ``ranges`` and ``new_ranges`` are (values, buffers)
    per shard in plan order and ``owners`` the new owner of each table's ids. ValueError if
    the old shards' states do not describe one step (different pushes held, or a state this
    does not know how to cut)."""
    metas = [meta for _, meta in old]
    if not any(tensors for tensors, _ in old) and not any(m.get("pushes") for m in metas):
        if any(meta != metas[0] for meta in metas):
            raise ValueError(f"the old shards' consistency states differ: {metas}")
        return [({}, dict(metas[0])) for _ in new_ranges[0]]
    _check_one_step(old)
    buffers = ranges[1]
    buffer_sums = [
        Piece(r.start, r.length, tensors.get(_BUFFER_SUM))
        for (tensors, _), r in zip(old, buffers, strict=True)
    ]
    rows = _rows_by_shard([tensors for tensors, _ in old], owners, len(new_ranges[0]))
    out: list[PolicyState] = []
    for index, (part, bpart) in enumerate(zip(*new_ranges, strict=True)):
        tensors: dict[str, torch.Tensor] = {}
        held = [p for p in buffer_sums if p.start < bpart.end and bpart.start < p.start + p.length]
        if bpart.length and any(p.tensor is not None for p in held):
            # -0.0 where an old shard held no change: x + (-0.0) is x for every x (a +0.0
            # would turn a -0.0 buffer value into +0.0), and so is its average.
            tensors[_BUFFER_SUM] = cut(buffer_sums, bpart.start, bpart.length, torch.float64, -0.0)
        tensors.update(rows[index])
        pushes = [{**push, "length": part.length} for push in metas[0]["pushes"]]
        out.append((tensors, {**metas[0], "pushes": pushes}))
    return out


def pushes_differ(metas: Sequence[dict[str, Any]]) -> str | None:
    """Why the old shards' consistency states (their metas) are not one open step: different
    pushes held (by worker, seq and version); None where they hold the same ones, or none."""
    held = [
        sorted((p["worker_id"], int(p["seq"]), int(p["base_version"])) for p in m.get("pushes", []))
        for m in metas
    ]
    if all(h == held[0] for h in held):
        return None
    return (
        "the old shards hold different pushes of the open sync step "
        f"(worker, seq, version per shard: {held})"
    )


def _check_one_step(old: Sequence[PolicyState]) -> None:
    """ValueError unless every old shard holds the same pushes and only the parts of a step
    that can be cut."""
    differ = pushes_differ([meta for _, meta in old])
    if differ is not None:
        raise ValueError(f"{differ}; its pushes have not all landed")
    if not old[0][1].get("pushes"):
        raise ValueError("the consistency state holds a step's sums but none of its pushes")
    for tensors, _ in old:
        unknown = [k for k in tensors if k != _BUFFER_SUM and not k.startswith(_ROWS)]
        if unknown:
            raise ValueError(f"the consistency state holds {unknown}, which cannot be cut")


def _rows_by_shard(
    old: Sequence[dict[str, torch.Tensor]], owners: Sequence[Owner], shards: int
) -> list[dict[str, torch.Tensor]]:
    """The step's row gradients per new shard, as ``rows.<table>.ids`` / ``.grads``. Each id
    comes from the one old shard that owned it, in the order it had there, so repeated ids
    are summed in the same order when the step is applied."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    tables = sorted({int(k.split(".")[1]) for t in old for k in t if k.startswith(_ROWS)})
    for table in tables:
        if table >= len(owners):
            raise ValueError(f"the open sync step holds rows of table {table}, which the job lacks")
        names = f"{_ROWS}{table}.ids", f"{_ROWS}{table}.grads"
        ids = torch.cat([t[names[0]] for t in old if names[0] in t])
        grads = torch.cat([t[names[1]] for t in old if names[0] in t])
        owner = owners[table](ids)
        for index in range(shards):
            mine = owner == index
            if bool(mine.any()):
                out[index][names[0]], out[index][names[1]] = ids[mine], grads[mine]
    return out

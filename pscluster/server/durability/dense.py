"""A job's state split for a move that sends only what changes shard.

Nearly all of a dense job's state is per value: the values, the optimizer's per-element
moments (momentum, Adam's two) and an open sync step's summed gradient (and its summed
local-step changes, mode auto), cut by global offset
alone. That part is kept apart from the rest (the *skeleton*: buffers, the rest of an open
sync step, the held-zeros mask and the JSON; the tables' rows go shard to shard on their own,
:mod:`pscluster.server.adopted_rows`), which travels as a checkpoint image through the
coordinator and is recut there. The per-value tensors travel as raw bytes of global ranges,
and only the ranges that change shard: a shard in both layouts keeps its overlap where it is
(:mod:`pscluster.coordinator.recut_moves`).

A skeleton's metadata lists its per-value tensors (``dense``: name and dtype, in the order
their bytes travel), so that a state is never mistaken for a whole one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from pscluster.errors import InvalidArgument

State = tuple[dict[str, torch.Tensor], dict[str, Any]]
DENSE_KEY = "dense"
_VALUES, _OPT = "values", "opt."
STEP_SUM = "policy.sum"  # an open sync step's summed gradient (server/consistency/sync.py)
STEP_CHANGE_SUM = "policy.change_sum"  # and its summed local-step changes
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8)
}


def is_dense(name: str, tensor: torch.Tensor) -> bool:
    """The values, the optimizer's per-element state (not a 0-d one such as Adam's step) and
    an open sync step's sums."""
    return name in (_VALUES, STEP_SUM, STEP_CHANGE_SUM) or (
        name.startswith(_OPT) and tensor.dim() > 0
    )


def split(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[State, dict[str, Any]]:
    """(the skeleton, the per-value tensors by name) of a whole state; the skeleton's meta
    lists the latter in name order."""
    dense = {n: t for n, t in sorted(tensors.items()) if is_dense(n, t)}
    rest = {n: t for n, t in tensors.items() if n not in dense}
    listed = [[n, str(t.dtype).removeprefix("torch.")] for n, t in dense.items()]
    return (rest, {**meta, DENSE_KEY: listed}), dense


def dense_dtypes(meta: dict[str, Any]) -> dict[str, torch.dtype] | None:
    """The per-value tensors a skeleton lists, in order (None: a whole state); ValueError
    for a listing this code cannot read."""
    listed = meta.get(DENSE_KEY)
    if listed is None:
        return None
    out: dict[str, torch.dtype] = {}
    for entry in listed:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] in _DTYPES):
            raise ValueError(f"a skeleton lists per-value tensor {entry!r}; expected [name, dtype]")
        out[str(entry[0])] = _DTYPES[entry[1]]
    if _VALUES not in out:
        raise ValueError(f"a skeleton lists per-value tensors {sorted(out)} without the values")
    return out


def join(skeleton: State, dense: dict[str, torch.Tensor]) -> State:
    """The whole state again."""
    tensors, meta = skeleton
    return {**tensors, **dense}, {k: v for k, v in meta.items() if k != DENSE_KEY}


def bytes_per_value(dtypes: Iterable[torch.dtype]) -> int:
    return sum(torch.empty(0, dtype=d).element_size() for d in dtypes)


def range_views(
    dense: dict[str, torch.Tensor], base: int, ranges: Sequence[tuple[int, int]], names: list[str]
) -> Iterator[memoryview]:
    """The raw bytes of each global ``(start, length)`` of ``ranges`` of each of ``names``,
    range by range, from tensors holding global offsets from ``base`` (no copies);
    InvalidArgument for a name not held or a range outside them."""
    missing = [n for n in names if n not in dense]
    if missing:
        raise InvalidArgument(f"per-value tensors {missing} are not held here ({sorted(dense)})")
    held = dense[_VALUES].numel() if _VALUES in dense else 0
    for start, length in ranges:
        if start < base or start + length > base + held:
            raise InvalidArgument(
                f"range [{start}, {start + length}) is outside the one held here "
                f"[{base}, {base + held})"
            )
        for name in names:
            part = dense[name][start - base : start - base + length]
            yield part.contiguous().view(torch.uint8).numpy().data


class ByteStream:
    """A stream's chunks read as consecutive parts of known sizes, whatever their cut."""

    def __init__(self, chunks: Iterable[bytes | memoryview]) -> None:
        self._chunks = iter(chunks)
        self._carry = memoryview(b"")
        self.received = 0

    def fill(self, target: memoryview, what: str) -> None:
        """Exactly ``len(target)`` bytes of the stream into ``target``; InvalidArgument if
        it ends first."""
        view, at = target.cast("B"), 0
        while at < len(view):
            if not self._carry:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise InvalidArgument(f"the stream ended inside {what}, {at} of {len(view)}")
                self._carry = memoryview(chunk).cast("B")
            n = min(len(self._carry), len(view) - at)
            view[at : at + n] = self._carry[:n]
            self._carry, at = self._carry[n:], at + n
        self.received += len(view)

    def read(self, size: int, what: str) -> bytes:
        out = bytearray(size)
        self.fill(memoryview(out), what)
        return bytes(out)

    def end(self, what: str) -> None:
        """InvalidArgument if anything follows."""
        if self._carry or next(self._chunks, None) is not None:
            raise InvalidArgument(f"the stream carries more than {what}")

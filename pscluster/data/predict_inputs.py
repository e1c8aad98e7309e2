"""A predict job's inputs: the rows to score, in one safetensors blob, in the order given.

Stored as a training dataset's X is (:mod:`pscluster.data.dataset`): ``x`` for one input,
``x/0``, ``x/1``... or ``x/<name>`` for several, with the structure in the metadata. No
targets, and the rows keep the user's order: partition p is the contiguous range
:func:`partition_range` gives, so a worker fetches only its lease's bytes and the outputs of
the partitions, concatenated in partition order, are in input order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safetensors.torch import save as _save

from pscluster.data import inputs
from pscluster.data.dataset import STRUCTURE_KEY, as_tensor, structure_of_header
from pscluster.data.inputs import Inputs, Structure
from pscluster.errors import InvalidArgument
from pscluster.model.partition import BalancedRanges, Range

PREFIX = "x"
_WHAT = "the inputs to score"


def from_user(x: object) -> Inputs:
    """The user's X (an array, a tensor, a tuple or a dict of them) as tensors the blob
    stores (float32, int64); InvalidArgument naming what is wrong."""
    converted = inputs.as_inputs(x, "X", as_tensor)
    if inputs.rows(converted, "X") == 0:
        raise InvalidArgument("X has no rows; pass at least one row to score")
    return converted


def names(structure: Structure) -> list[str]:
    """The blob's entry for each input, in the structure's order."""
    return [f"{PREFIX}/{k}" for k in structure.keys] or [PREFIX]


def to_blob(x: Inputs) -> bytes:
    structure = inputs.structure(x)
    tensors = {n: t.contiguous() for n, t in zip(names(structure), inputs.parts(x), strict=True)}
    return _save(tensors, metadata={STRUCTURE_KEY: json.dumps(structure.to_json())})


@dataclass(frozen=True)
class InputsLayout:
    """What the blob's header says: how the inputs fit together and how many rows they have."""

    structure: Structure
    rows: int

    @property
    def names(self) -> list[str]:
        return names(self.structure)

    @classmethod
    def of_header(cls, header: Mapping[str, Any]) -> InputsLayout:
        """InvalidArgument unless the header holds exactly the structure's inputs, every one
        with the same number of rows (at least one)."""
        structure = structure_of_header(dict(header))
        wanted = names(structure)
        present = sorted(k for k in header if k != "__metadata__")
        if present != sorted(wanted):
            raise InvalidArgument(f"{_WHAT} hold entries {present}; expected {wanted}")
        counts = set()
        for name in wanted:
            shape = header[name].get("shape") if isinstance(header[name], Mapping) else None
            if not isinstance(shape, list) or not shape:
                raise InvalidArgument(f"{_WHAT}: entry {name!r} has no rows (shape {shape!r})")
            counts.add(int(shape[0]))
        if len(counts) != 1 or min(counts) < 1:
            raise InvalidArgument(f"{_WHAT} have rows {sorted(counts)} across entries {wanted}")
        return cls(structure, counts.pop())


def partition_range(rows: int, partitions: int, partition: int) -> Range:
    """The rows of ``partition``: contiguous, in input order, balanced to within one row."""
    if not 0 <= partition < partitions:
        raise InvalidArgument(f"partition {partition} is outside 0..{partitions - 1}")
    return BalancedRanges().split(rows, partitions)[partition]

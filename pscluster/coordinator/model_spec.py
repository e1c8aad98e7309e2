"""A job's model as the spec describes it: its layouts, its shipped code, its initial state.

The coordinator never runs the user's code; it checks what the spec says about the model
(parameter and buffer names, shapes and dtypes, module names, the code's size) and that the
uploaded initial state holds exactly that, and splits both vectors over the shards.
"""

from __future__ import annotations

import keyword

import torch

from pscluster.errors import InvalidArgument
from pscluster.model import source, state
from pscluster.model.buffers import BufferLayout, parse_dtype
from pscluster.model.layout import ParamLayout
from pscluster.model.partition import BalancedRanges, Range
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import parameter_server_pb2 as ps_pb2

# The user's code travels in the spec message: the shipped sources together stay below this.
MAX_SOURCE_BYTES = 4 << 20
# Buffers travel in every push and pull header (float64); a shard's share stays below this.
MAX_BUFFER_BYTES_PER_SHARD = 2 << 20


def validate_model(model: co_pb2.ModelSpec) -> ParamLayout:
    if not model.source.strip():
        raise InvalidArgument("model.source is empty; send the Python source of the model module")
    try:
        # Compiling runs nothing; it catches a truncated or mangled source before a worker does.
        compile(model.source, "<model.source>", "exec")
    except (SyntaxError, ValueError) as e:
        raise InvalidArgument(f"model.source does not compile: {e}") from e
    if not model.class_name.isidentifier() or keyword.iskeyword(model.class_name):
        raise InvalidArgument(
            f"model.class_name {model.class_name!r} is not a Python identifier; "
            "expected the name of the nn.Module class defined in model.source"
        )
    try:
        source.parse_kwargs(model.kwargs_json)
    except InvalidArgument as e:
        raise InvalidArgument(f"model.kwargs_json: {e}") from e
    if not model.params and not model.tables:
        raise InvalidArgument("model.params is empty; list the trainable parameters and shapes")
    entries: list[tuple[str, list[int]]] = []
    seen: set[str] = set()
    for i, p in enumerate(model.params):
        if not p.name:
            raise InvalidArgument(f"model.params[{i}].name is empty; expected a state_dict key")
        if p.name in seen:
            raise InvalidArgument(f"model.params[{i}].name {p.name!r} appears twice")
        seen.add(p.name)
        if any(d < 1 for d in p.shape):
            raise InvalidArgument(
                f"model.params[{i}] ({p.name!r}) has shape {list(p.shape)}; "
                "every dimension must be >= 1"
            )
        entries.append((p.name, list(p.shape)))
    buffer_layout_of_model(model, seen)
    _validate_files(model)
    return ParamLayout(entries)


def buffer_layout_of_model(model: co_pb2.ModelSpec, taken: set[str] | None = None) -> BufferLayout:
    """The buffer layout a model spec describes; InvalidArgument naming a bad entry."""
    seen = set(taken or ())
    entries = []
    for i, b in enumerate(model.buffers):
        if not b.name or b.name in seen:
            raise InvalidArgument(
                f"model.buffers[{i}].name {b.name!r} is empty or names another entry"
            )
        seen.add(b.name)
        entries.append(
            (b.name, [int(d) for d in b.shape], parse_dtype(b.dtype, f"buffer {b.name!r}"))
        )
    return BufferLayout(entries)


def buffer_layout_of(spec: co_pb2.JobSpec) -> BufferLayout:
    return buffer_layout_of_model(spec.model)


def buffer_ranges(spec: co_pb2.JobSpec, shards: int) -> list[Range]:
    """Each shard's range of the job's buffer vector (empty ranges when it has none)."""
    return BalancedRanges().split(buffer_layout_of(spec).size, shards)


def counter_spans_in(counters: list[tuple[int, int]], shard: Range) -> list[ps_pb2.Span]:
    """The parts of ``counters`` (buffer counters, or held zeros in the parameters) that fall
    in a shard's range, relative to its start."""
    spans = []
    for start, length in counters:
        low, high = max(start, shard.start), min(start + length, shard.end)
        if low < high:
            spans.append(ps_pb2.Span(start=low - shard.start, length=high - low))
    return spans


def check_buffer_size(buffers: BufferLayout, shards: int) -> None:
    per_shard = -(-buffers.size // max(1, shards)) * 8
    if per_shard > MAX_BUFFER_BYTES_PER_SHARD:
        raise InvalidArgument(
            f"the model's buffers hold {buffers.size} values, {per_shard >> 10} KiB per shard "
            f"in every push (at most {MAX_BUFFER_BYTES_PER_SHARD >> 10} KiB): use more "
            "shards, or register constant tensors with register_buffer(..., persistent=False)"
        )


def _validate_files(model: co_pb2.ModelSpec) -> None:
    names = [f.module for f in model.files]
    total = len(model.source.encode()) + sum(len(f.source.encode()) for f in model.files)
    if total > MAX_SOURCE_BYTES:
        raise InvalidArgument(
            f"the shipped code is {total >> 10} KiB; at most {MAX_SOURCE_BYTES >> 10} KiB: "
            "keep data and weights out of the model's modules"
        )
    for name in [model.module, *names]:
        if name and not all(part.isidentifier() for part in name.split(".")):
            raise InvalidArgument(f"module name {name!r} is not a Python module path")
    if len(set(names)) != len(names) or model.module in names:
        raise InvalidArgument(f"the shipped modules {sorted(names)} name a module twice")
    for f in model.files:
        try:
            compile(f.source, f.path or f.module, "exec")
        except (SyntaxError, ValueError) as e:
            raise InvalidArgument(f"shipped module {f.module!r} does not compile: {e}") from e


def initial_state(
    data: bytes | bytearray, layout: ParamLayout, buffers: BufferLayout
) -> dict[str, torch.Tensor]:
    tensors = state.loads(data, "the model's initial state")
    for slot in layout.slots:
        _check_entry(tensors, slot.name, slot.shape, torch.float32, "trainable parameter")
    for b in buffers.slots:
        _check_entry(tensors, b.name, b.shape, b.dtype, "buffer")
    return tensors


def _check_entry(
    tensors: dict[str, torch.Tensor],
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    what: str,
) -> None:
    t = tensors.get(name)
    if t is None:
        raise InvalidArgument(f"the model's initial state has no {what} {name!r}")
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise InvalidArgument(
            f"the model's initial state has {what} {name!r} as {t.dtype} of shape "
            f"{list(t.shape)}; the spec says {dtype} of shape {list(shape)}"
        )


def hold_zero_spans(spec: co_pb2.JobSpec, layout: ParamLayout) -> list[tuple[int, int]]:
    """(offset, length) in the flat vector of each parameter ``spec.hold_zeros`` names (a
    pruned model's fine-tune); InvalidArgument for a name that is no trainable parameter."""
    slots = {s.name: s for s in layout.slots}
    unknown = [n for n in spec.hold_zeros if n not in slots]
    if unknown:
        raise InvalidArgument(
            f"hold_zeros names {unknown}, which are not trainable parameters of the model "
            f"(it has {sorted(slots)[:8]}...)"
        )
    if len(set(spec.hold_zeros)) != len(spec.hold_zeros):
        raise InvalidArgument(f"hold_zeros names a parameter twice: {list(spec.hold_zeros)}")
    return [(slots[n].offset, slots[n].numel) for n in spec.hold_zeros]


def layout_of(spec: co_pb2.JobSpec) -> ParamLayout:
    """The flat-vector layout of a stored (already validated) spec."""
    return ParamLayout([(p.name, list(p.shape)) for p in spec.model.params])

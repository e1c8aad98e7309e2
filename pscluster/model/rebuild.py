"""A job's model and loss rebuilt from its spec: what a worker runs, and what the SDK tries
before it sends anything.

The SDK's dry run and every worker call the same functions, so a model that builds, loads
its state and computes its loss at submit is one that builds on the workers too.
"""

from __future__ import annotations

import torch
from torch import nn

from pscluster.errors import InvalidArgument
from pscluster.model import objective, state
from pscluster.model.buffers import BufferLayout, dtype_name, parse_dtype
from pscluster.model.bundle import CodeBundle
from pscluster.model.hosted import host_tables, hosting
from pscluster.model.layout import ParamLayout
from pscluster.model.loader import LoadedBundle
from pscluster.model.source import parse_kwargs
from pscluster.v1 import coordinator_pb2 as co_pb2


class ModelMismatch(InvalidArgument):
    """The model built from the submitted source does not match the submitted layout."""


def param_layout(model: co_pb2.ModelSpec) -> ParamLayout:
    return ParamLayout([(p.name, tuple(p.shape)) for p in model.params])


def buffer_layout(model: co_pb2.ModelSpec) -> BufferLayout:
    return BufferLayout(
        [
            (b.name, tuple(b.shape), parse_dtype(b.dtype, f"buffer {b.name!r}"))
            for b in model.buffers
        ]
    )


def describe(module: nn.Module) -> tuple[list[co_pb2.ParamInfo], list[co_pb2.ParamInfo]]:
    """The trainable parameters and the shared buffers of ``module``, as the spec lists them."""
    params = ParamLayout.of_module(module)
    buffers = BufferLayout.of_module(module)
    return (
        [co_pb2.ParamInfo(name=s.name, shape=s.shape) for s in params.slots],
        [
            co_pb2.ParamInfo(name=s.name, shape=s.shape, dtype=dtype_name(s.dtype))
            for s in buffers.slots
        ],
    )


def load_code(spec: co_pb2.ModelSpec) -> LoadedBundle:
    """The job's shipped code, imported once in isolation (model class and loss come from it)."""
    return LoadedBundle(CodeBundle.from_proto(spec))


def trained_model(spec: co_pb2.ModelSpec, blob: bytearray) -> nn.Module:
    """A finished model from its shipped code (imported in a bundle of its own) with the
    saved state in ``blob`` loaded (strict), as a user builds the model they fetched: what
    scores a predict job's rows and what teaches a distillation job's student."""
    code = load_code(spec)
    model = code.model_class(spec.class_name)(**parse_kwargs(spec.kwargs_json))
    try:
        model.load_state_dict(state.views(blob, "the model's state"), strict=True)
    except RuntimeError as e:
        raise ModelMismatch(f"the model's state does not load into {spec.class_name}: {e}") from e
    return model


def build_model(
    spec: co_pb2.ModelSpec, initial: dict[str, torch.Tensor], code: LoadedBundle
) -> nn.Module:
    """The user's model from the shipped code, checked against the spec, in its initial
    state; its sparse embeddings hosted (:mod:`pscluster.model.hosted`: no rows here)."""
    with hosting():
        model = code.model_class(spec.class_name)(**parse_kwargs(spec.kwargs_json))
    built_tables = [t.to_proto() for t in host_tables(model)]
    if built_tables != list(spec.tables):
        raise ModelMismatch(
            f"the model built from the shipped code has the tables {built_tables}, but the job "
            f"was submitted with {list(spec.tables)}: its constructor must build the same model"
        )
    built_params, built_buffers = describe(model)
    _same("trainable parameters", built_params, list(spec.params))
    _same("buffers", built_buffers, list(spec.buffers))
    tables = {t.name for t in spec.tables}
    dense = {k: v for k, v in initial.items() if k not in tables}  # tables start on the shards
    try:
        model.load_state_dict(dense, strict=True)
    except RuntimeError as e:
        raise ModelMismatch(f"the initial state does not load into the model: {e}") from e
    return model


def _same(what: str, built: list[co_pb2.ParamInfo], sent: list[co_pb2.ParamInfo]) -> None:
    def rows(infos: list[co_pb2.ParamInfo]) -> list[tuple[str, tuple[int, ...], str]]:
        return [(i.name, tuple(i.shape), i.dtype) for i in infos]

    if rows(built) != rows(sent):
        raise ModelMismatch(
            f"the model built from the shipped code has {what} {rows(built)}, but the job was "
            f"submitted with {rows(sent)}: its constructor must build the same model every time"
        )


def loss_function(spec: co_pb2.JobSpec, code: LoadedBundle) -> objective.LossFn:
    """The job's loss: a built-in one, or the user's function from the shipped code."""
    if objective.loss_name(spec.loss) != objective.CUSTOM:
        return objective.builtin_loss(spec.loss)
    fn = code.lookup(spec.loss_function)
    if not callable(fn):
        raise InvalidArgument(f"loss_function {spec.loss_function!r} is not a function")

    def custom(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = fn(out, y)
        if not (isinstance(value, torch.Tensor) and value.numel() == 1):
            raise InvalidArgument(
                f"the loss function {spec.loss_function!r} returned "
                f"{type(value).__name__}; it must return a scalar tensor"
            )
        return value.reshape(())

    return custom

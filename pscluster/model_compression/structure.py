"""Where structured pruning may cut, found with torch.fx, and the physically smaller model.

Removing output neuron i of a layer (the *producer*) is only exact if every place its outputs
go can drop index i too: the next Linear or Conv (the *consumer*) loses input column i, and
what lies between them must map a zero channel to a zero channel (ReLU, GELU, tanh, dropout,
pooling, flatten) or be per-channel itself (BatchNorm, whose scale and shift are pruned with
the neuron). Anything else on the way (an addition with a skip connection, a concatenation,
a reshape with a fixed size, the model's output) makes the producer unsliceable. The
model's graph comes from ``torch.fx.symbolic_trace``; a model it cannot trace cannot be
pruned structurally, and that is said before anything runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

PRODUCERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
# Modules and functions that turn a zero channel into a zero channel, channel by channel.
_ZERO_KEEPING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.ELU, nn.Hardtanh,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_ZERO_KEEPING_FUNCTIONS: set[Callable[..., object]] = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.gelu, torch.tanh, F.tanh, F.silu, F.elu,
    F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
}  # fmt: skip
_ZERO_KEEPING_METHODS = {"relu", "tanh", "contiguous"}
_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Cut:
    """A producer whose outputs may be removed: the consumers whose inputs follow them, the
    BatchNorms between (sliced along), and whether a flatten lies between (then each output
    channel is a block of the consumer's inputs)."""

    producer: str
    consumers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    flattened: bool = False


@dataclass(frozen=True)
class Plan:
    cuts: tuple[Cut, ...]
    skipped: dict[str, str]  # producer -> why it cannot be sliced


def plan(model: nn.Module) -> Plan:
    """The cuts structured pruning can make in ``model``; ValueError if it cannot trace the
    model or finds none (saying why for each layer)."""
    name = type(model).__name__
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # fx raises many kinds on data-dependent Python
        raise ValueError(
            f"structured pruning needs a model torch.fx can trace, and {name} cannot be "
            f"traced ({type(e).__name__}: {e}); prune it unstructured (structured=False)"
        ) from e
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    cuts, skipped = [], {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], PRODUCERS):
            continue
        found = _follow(node, modules, calls)
        if isinstance(found, Cut):
            cuts.append(found)
        else:
            skipped[node.target] = found
    if not cuts:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no Linear or Conv layer"
        raise ValueError(f"structured pruning finds no layer of {name} it can slice ({reasons})")
    return Plan(tuple(cuts), skipped)


def _follow(
    start: fx.Node, modules: Mapping[str, nn.Module], calls: Mapping[str, int]
) -> Cut | str:
    """The cut at ``start`` (a producer's call), or why there is none."""
    producer = str(start.target)
    if calls[producer] > 1 or _grouped(modules[producer]):
        return "it is called more than once or is a grouped convolution"
    consumers: list[str] = []
    norms: list[str] = []
    flattened = False
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user.op == "output":
                return "its outputs are (part of) the model's output"
            if _only_input(user) is not node:
                return f"its outputs meet other values in {_describe(user)}"
            kind = _kind(user, modules)
            if kind == "consumer" and calls[str(user.target)] == 1:
                consumer = modules[str(user.target)]
                if not _matches(modules[producer], consumer, flattened):
                    return f"its outputs reach {_describe(user)} along another dimension"
                consumers.append(str(user.target))
                continue
            if kind == "norm":
                norms.append(str(user.target))
            elif kind == "flatten" and not flattened and isinstance(modules[producer], nn.Conv2d):
                flattened = True
            elif kind != "zero":
                return f"its outputs go to {_describe(user)}, which slicing cannot follow"
            frontier.append(user)
    if not consumers:
        return "none of its outputs reach another layer"
    return Cut(producer, tuple(consumers), tuple(norms), flattened)


def _only_input(node: fx.Node) -> fx.Node | None:
    """The one graph value ``node`` reads (None if it reads several)."""
    inputs = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    return inputs[0] if len(inputs) == 1 else None


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"the module {node.target}"
    if node.op == "call_method":
        return f"the method .{node.target}()"
    return f"the function {getattr(node.target, '__name__', node.target)}"


def _kind(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, PRODUCERS) and not _grouped(module):
            return "consumer" if node.args and node.args[0] in node.all_input_nodes else "other"
        if isinstance(module, _NORMS) and module.affine:
            return "norm"
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return "flatten"
        return "zero" if isinstance(module, _ZERO_KEEPING_MODULES) else "other"
    if node.op == "call_function":
        if node.target is torch.flatten and _flatten_args(node, skip=1):
            return "flatten"
        return "zero" if node.target in _ZERO_KEEPING_FUNCTIONS else "other"
    if node.op == "call_method":
        if node.target == "flatten" and _flatten_args(node, skip=1):
            return "flatten"
        return "zero" if node.target in _ZERO_KEEPING_METHODS else "other"
    return "other"


def _flatten_args(node: fx.Node, skip: int) -> bool:
    """flatten(x, 1) (start_dim 1, end_dim -1), whichever way its arguments are passed."""
    start = node.args[skip] if len(node.args) > skip else node.kwargs.get("start_dim", 0)
    end = node.args[skip + 1] if len(node.args) > skip + 1 else node.kwargs.get("end_dim", -1)
    return bool(start == 1 and end == -1)


def _matches(producer: nn.Module, consumer: nn.Module, flattened: bool) -> bool:
    """Whether ``consumer`` reads ``producer``'s outputs along the dimension they fill: a
    Linear's last one, a Conv's channels (a flattened Conv2d's: blocks of a Linear's)."""
    if isinstance(producer, nn.Linear):
        return isinstance(consumer, nn.Linear) and not flattened
    if flattened:
        return isinstance(consumer, nn.Linear)
    return type(consumer) is type(producer)


def _grouped(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1


def slice_model(
    model: nn.Module, cuts: tuple[Cut, ...], kept: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A copy of ``model`` with each cut's producer keeping only the rows ``kept[producer]``
    (bool over its outputs), and its BatchNorms and consumers sliced to match."""
    small = copy.deepcopy(model)
    modules = dict(small.named_modules())
    with torch.no_grad():
        for cut in cuts:
            keep = kept[cut.producer]
            _slice_outputs(modules[cut.producer], keep)
            for norm in cut.norms:
                _slice_norm(modules[norm], keep)
            for name in cut.consumers:
                _slice_inputs(modules[name], keep, cut.flattened)
    return small


def _slice_outputs(module: nn.Module, keep: torch.Tensor) -> None:
    _set(module, "weight", _tensor(module, "weight")[keep])
    if getattr(module, "bias", None) is not None:
        _set(module, "bias", _tensor(module, "bias")[keep])
    _set_size(module, "out_features" if isinstance(module, nn.Linear) else "out_channels", keep)


def _slice_norm(module: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias"):
        _set(module, name, _tensor(module, name)[keep])
    for buffer in ("running_mean", "running_var"):
        if getattr(module, buffer, None) is not None:
            setattr(module, buffer, _tensor(module, buffer)[keep].clone())
    _set_size(module, "num_features", keep)


def _slice_inputs(module: nn.Module, keep: torch.Tensor, flattened: bool) -> None:
    weight = _tensor(module, "weight")
    size = weight.shape[1]
    if flattened:
        if size % keep.numel():
            raise ValueError(
                f"a flatten feeds {size} inputs from {keep.numel()} channels: not whole blocks"
            )
        keep = keep.repeat_interleave(size // keep.numel())
    _set(module, "weight", weight[:, keep])
    _set_size(module, "in_features" if isinstance(module, nn.Linear) else "in_channels", keep)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    setattr(module, name, nn.Parameter(value.clone()))


def _set_size(module: nn.Module, attribute: str, keep: torch.Tensor) -> None:
    setattr(module, attribute, int(keep.sum()))

"""Model code travels as source: a :class:`~pscluster.model.bundle.CodeBundle` of the user's
own modules, imported on the worker in isolation (:mod:`pscluster.model.loader`).

Sending source rather than a pickle means a worker never unpickles anything from the network.
``build`` keeps the older form working: one module's source, run as an anonymous module.
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

from torch import nn

from pscluster.errors import InvalidArgument
from pscluster.model.bundle import CodeBundle
from pscluster.model.loader import LoadedBundle


def module_source(model_cls: type[nn.Module]) -> str:
    """The source of the whole module defining ``model_cls`` (helpers and imports included).

    Kept for callers that ship one module; :func:`pscluster.model.bundle.collect` also ships
    the local modules it imports, and only the model's definitions from a script.
    """
    module = sys.modules.get(model_cls.__module__)
    if module is None:
        raise InvalidArgument(f"cannot find the module of {model_cls.__qualname__}")
    try:
        return inspect.getsource(module)
    except (OSError, TypeError) as e:
        raise InvalidArgument(
            f"cannot read the source of {model_cls.__qualname__}'s module {module.__name__!r}: "
            "define the model in a .py file (not an interactive session)"
        ) from e


def load_class(source: str, class_name: str) -> type[nn.Module]:
    """Execute ``source`` as a new anonymous module and return its ``class_name`` (an nn.Module)."""
    return LoadedBundle(CodeBundle(module="", source=source)).model_class(class_name)


def build(source: str, class_name: str, kwargs_json: str) -> nn.Module:
    """The model ``class_name(**kwargs)`` from one module's source (the anonymous form)."""
    return build_from_bundle(CodeBundle(module="", source=source), class_name, kwargs_json)


def build_from_bundle(bundle: CodeBundle, class_name: str, kwargs_json: str) -> nn.Module:
    """The model ``class_name(**kwargs)`` defined by the main module of ``bundle``."""
    kwargs = parse_kwargs(kwargs_json)
    return LoadedBundle(bundle).model_class(class_name)(**kwargs)


def parse_kwargs(kwargs_json: str) -> dict[str, Any]:
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"model kwargs are not valid JSON: {e}") from e
    if not isinstance(kwargs, dict):
        raise InvalidArgument("model kwargs must be a JSON object")
    return kwargs

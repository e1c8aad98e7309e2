"""Model code travels as source: the module that defines the class, run in a fresh namespace.

Sending source rather than a pickle means a worker never unpickles anything from the network,
and the user's class can live in their own file (``inspect.getsource`` of its module).
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from typing import Any

from torch import nn

from pscluster.transport.errors import InvalidArgument


def module_source(model_cls: type[nn.Module]) -> str:
    """The source of the whole module defining ``model_cls`` (helpers and imports included)."""
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


def load_class(
    source: str, class_name: str, module_name: str = "psc_user_model"
) -> type[nn.Module]:
    """Execute ``source`` as a new module and return its ``class_name`` (an nn.Module)."""
    module = types.ModuleType(module_name)
    module.__file__ = f"<{module_name}>"
    # Registered while it runs so that dataclasses, pickling-free typing tricks and
    # `from __future__ import annotations` resolve names in the module as they would on disk.
    sys.modules[module_name] = module
    try:
        exec(compile(source, f"<{module_name}>", "exec"), module.__dict__)
    finally:
        sys.modules.pop(module_name, None)
    cls = module.__dict__.get(class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InvalidArgument(f"the model source defines no nn.Module named {class_name!r}")
    return cls


def build(source: str, class_name: str, kwargs_json: str) -> nn.Module:
    kwargs = parse_kwargs(kwargs_json)
    return load_class(source, class_name)(**kwargs)


def parse_kwargs(kwargs_json: str) -> dict[str, Any]:
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"model kwargs are not valid JSON: {e}") from e
    if not isinstance(kwargs, dict):
        raise InvalidArgument("model kwargs must be a JSON object")
    return kwargs

"""``path/to/file.py:name`` references to the user's code, loaded for the SDK and job files.

The file is imported under a name unique to its path and kept in ``sys.modules``: the SDK
ships what it defines by reading its source (``inspect``), which finds a definition's file
through its module there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from pathlib import Path

from pscluster.client.errors import InvalidJobError

# By path and modification time: a file edited between two submits is imported again.
_LOADED: dict[tuple[Path, int], types.ModuleType] = {}


class CodeRefError(InvalidJobError):
    """The reference is malformed, or its file is missing or does not import."""


def is_file_ref(ref: str) -> bool:
    file_part, sep, attr = ref.rpartition(":")
    return bool(sep and file_part.endswith(".py") and attr)


def load_ref(ref: str, base: Path, what: str) -> object:
    """The object ``ref`` ("path/file.py:name", relative to ``base``) names; ``what`` says
    where the reference came from in errors."""
    file_part, sep, attr = ref.rpartition(":")
    if not sep or not file_part or not attr:
        raise CodeRefError(f"{what} is {ref!r}; expected 'path/to/file.py:Name'")
    file = (base / file_part).resolve()
    if not file.is_file():
        raise CodeRefError(f"{what}: no file {file}")
    key = (file, file.stat().st_mtime_ns)
    module = _LOADED.get(key) or _load(what, file)
    _LOADED[key] = module
    if not hasattr(module, attr):
        raise CodeRefError(f"{what}: {file.name} defines no {attr!r}")
    return getattr(module, attr)


def _load(what: str, file: Path) -> types.ModuleType:
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    name = f"psc_job_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise CodeRefError(f"{what}: cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file's folder is importable while it runs, as it would be for `python file.py`.
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise CodeRefError(f"{what}: importing {file.name} raised {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(file.parent))
    return module

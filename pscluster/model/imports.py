"""Following a module's imports to the user's own files: what a job's code bundle ships.

A module is the user's (and ships) when its file lies under one of the bundle's roots (the
folder the model is imported from, or ``code_dir``) and not in the Python installation, a
virtualenv, site-packages or pscluster itself: the workers have those installed.
"""

from __future__ import annotations

import ast
import functools
import keyword
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pscluster.errors import InvalidArgument

log = logging.getLogger(__name__)

_PSCLUSTER = Path(__file__).resolve().parents[1]
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "node_modules"}


@dataclass(frozen=True)
class ShippedFile:
    """One module of the bundle: its import name, its source, and where it came from."""

    module: str
    source: str
    package: bool = False  # an __init__.py, or a folder without one: it may have submodules
    path: str = ""  # relative to the folder it is imported from, e.g. "mypkg/blocks.py"


def importable(name: str) -> bool:
    """Whether ``name`` can be imported by that name (``a.b``; not ``my-model`` or ``__main__``)."""
    parts = name.split(".")
    return name != "__main__" and all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)


@functools.cache
def _environment() -> tuple[Path, ...]:
    """Folders whose modules the workers' own installation provides."""
    paths = sysconfig.get_paths()
    dirs = {Path(paths["stdlib"]), Path(paths["platstdlib"]), _PSCLUSTER}
    if sys.prefix != sys.base_prefix:  # a virtualenv: everything in it was installed
        dirs.add(Path(sys.prefix))
    # Not all of sys.base_prefix: a system Python's /usr would also hold /usr/src/app.
    return tuple(d.resolve() for d in dirs)


class Collector:
    """The shipped files found so far, and the walk over their imports."""

    def __init__(self, roots: Sequence[Path], max_bytes: int, max_files: int) -> None:
        self.roots = list(dict.fromkeys(r.resolve() for r in roots))
        self.max_bytes, self.max_files = max_bytes, max_files
        self.files: dict[str, ShippedFile] = {}
        self._queue: list[str] = []
        self._warned: set[str] = set()

    def is_local(self, path: Path) -> bool:
        return not _installed(path) and any(path.is_relative_to(r) for r in self.roots)

    def add(self, module: str, file: Path, package: bool, source: str | None = None) -> None:
        """Ship ``module`` from ``file``, then every local module it imports, recursively."""
        self._register(module, file, package, source)
        while self._queue:
            name = self._queue.pop()
            for imported in sorted(_imports(self.files[name])):
                found = self._locate(imported)
                if found is not None:
                    self._register(imported, *found)

    def add_tree(self, tree: Path) -> None:
        for module, file, package in _tree_modules(tree):
            self.add(module, file, package)

    def finish(self) -> tuple[ShippedFile, ...]:
        _check_limits(list(self.files.values()), self.max_bytes, self.max_files)
        return tuple(self.files[name] for name in sorted(self.files))

    def _register(self, module: str, file: Path, package: bool, source: str | None = None) -> None:
        if module in self.files:
            return
        if len(self.files) >= self.max_files:
            _check_limits(
                [*self.files.values(), ShippedFile(module, "")], self.max_bytes, self.max_files
            )
        text = read_source(file, self.max_bytes) if source is None else source
        self.files[module] = ShippedFile(module, text, package, _relative(module, file, package))
        self._queue.append(module)
        parent = module.rpartition(".")[0]
        folder = file.parent.parent if package else file.parent
        if parent and parent not in self.files:
            init = folder / "__init__.py"
            if folder.name == parent.rpartition(".")[2] and init.is_file():
                self._register(parent, init, True)
            else:  # a namespace package: an empty package entry, then its own parents
                self._register(parent, folder / "__init__.py", True, source="")

    def _locate(self, name: str) -> tuple[Path, bool] | None:
        """The local file of module ``name``, or None when it is not the user's own code."""
        top = sys.modules.get(name.partition(".")[0])
        if name not in sys.modules and top is not None and installed_module(top):
            return None  # an installed package's submodule that nobody imported yet
        if name in sys.modules:
            return self._loaded(name, sys.modules[name])
        for root in self.roots:
            base = root.joinpath(*name.split("."))
            if (base / "__init__.py").is_file():
                return base / "__init__.py", True
            if base.with_name(base.name + ".py").is_file():
                return base.with_name(base.name + ".py"), False
        return None

    def _loaded(self, name: str, module: ModuleType) -> tuple[Path, bool] | None:
        file = getattr(module, "__file__", None)
        if not isinstance(file, str):  # built in, frozen, or a namespace (shipped as a parent)
            return None
        path = Path(file).resolve()
        if self.is_local(path) and path.suffix == ".py":
            return path, path.name == "__init__.py"
        if not _installed(path) and name not in self._warned:
            self._warned.add(name)
            where = "is compiled" if path.suffix != ".py" else "lies outside the model's folder"
            log.warning(
                "module %s (%s) %s and is not shipped: workers must have it installed, or pass "
                "code_dir= a folder holding it",
                name,
                path,
                where,
            )
        return None


def installed_module(module: ModuleType) -> bool:
    """Whether ``module`` comes with Python or an installed package (built-in ones included)."""
    file = getattr(module, "__file__", None)
    paths = [file] if isinstance(file, str) else list(getattr(module, "__path__", None) or [])
    return not paths or all(_installed(Path(p).resolve()) for p in paths)


def _installed(path: Path) -> bool:
    if {"site-packages", "dist-packages"} & set(path.parts):
        return True
    return any(path.is_relative_to(d) for d in _environment())


def _imports(file: ShippedFile) -> set[str]:
    """Every module name ``file`` may import, at module level or inside functions."""
    try:
        tree = ast.parse(file.source, file.path)
    except SyntaxError:  # shipped as it is: it fails on the workers as it does here
        return set()
    package = file.module if file.package else file.module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 >= len(parts):
                    continue  # beyond the top-level package: fails here as well
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            names |= {base} if base else set()
            names |= {f"{base}.{a.name}" if base else a.name for a in node.names if a.name != "*"}
    return {n for n in names if importable(n)}


def _tree_modules(tree: Path) -> Iterator[tuple[str, Path, bool]]:
    """(module, file, is package) of every .py below ``tree``, skipping environments."""
    for folder, dirs, files in os.walk(tree):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in _SKIP_DIRS
            and not (here / d / "pyvenv.cfg").exists()
        )
        for name in sorted(f for f in files if f.endswith(".py")):
            parts = (here / name).relative_to(tree).with_suffix("").parts
            package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if package else parts)
            if module and importable(module):
                yield module, here / name, package


def _relative(module: str, file: Path, package: bool) -> str:
    """The file's path from the folder it is imported from: a/b.py for ``a.b``."""
    depth = module.count(".") + 1 + (1 if package else 0)
    return "/".join(file.parts[-depth:])


def read_source(file: Path, max_bytes: int) -> str:
    try:
        size = file.stat().st_size
        if size > max_bytes:
            raise InvalidArgument(
                f"{file} is {size} bytes, over the {max_bytes}-byte limit of shipped code: move "
                "data out of .py files, or pass code_dir= a folder holding only the model's code"
            )
        return file.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise InvalidArgument(f"cannot read {file}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise InvalidArgument(
            f"{file} is not UTF-8 text (byte {e.start} is not valid): save it as UTF-8, or move "
            "it out of the folder whose code is shipped"
        ) from e


def _check_limits(files: list[ShippedFile], max_bytes: int, max_files: int) -> None:
    total = sum(len(f.source.encode()) for f in files)
    if len(files) <= max_files and total <= max_bytes:
        return
    biggest = sorted(files, key=lambda f: len(f.source.encode()), reverse=True)[:5]
    listed = ", ".join(f"{f.path or f.module} ({len(f.source.encode())} bytes)" for f in biggest)
    raise InvalidArgument(
        f"the model's code is {len(files)} files and {total} bytes; at most {max_files} files "
        f"and {max_bytes} bytes are shipped. Biggest: {listed}. Pass code_dir= a smaller folder "
        "holding only the model's code, or move data out of .py files"
    )

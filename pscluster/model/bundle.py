"""The user's model code as workers receive it: the module defining the model and every local
module it imports, as source.

``inspect.getsource`` of one module was not enough: a model importing a sibling file
(``from layers import Block``) was accepted and then failed on the worker, and a model defined
in a script ran the whole script on every worker. :func:`collect` follows the imports to the
user's own files (never installed packages: the workers have those) and, for a script, keeps
only what defines the model (see :mod:`pscluster.model.script`).

Example::

    bundle = collect(Net, extra=[focal_loss])
    bundle.to_proto(job.model)
"""

from __future__ import annotations

import ast
import functools
import keyword
import logging
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pscluster.model.script import extract_definitions
from pscluster.transport.errors import InvalidArgument
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)

# What a script's extracted definitions are shipped as (inside its package when it ran as
# `python -m pkg.script`, so that its relative imports still resolve).
SCRIPT_MODULE = "psc_main"
_PSCLUSTER = Path(__file__).resolve().parents[1]
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "node_modules"}


@dataclass(frozen=True)
class ShippedFile:
    """One module of the bundle: its import name, its source, and where it came from."""

    module: str
    source: str
    package: bool = False  # an __init__.py, or a folder without one: it may have submodules
    path: str = ""  # relative to the folder it is imported from, e.g. "mypkg/blocks.py"


@dataclass(frozen=True)
class CodeBundle:
    """The modules a job's model needs: ``source`` is the module defining the model, imported
    as ``module`` ("" runs it as an anonymous module, as older SDKs did), and ``files`` are the
    other modules, never the main one again (the coordinator refuses a module named twice).
    The main module is a package when some file is its submodule.
    """

    module: str
    source: str
    files: tuple[ShippedFile, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    def to_proto(self, model_spec: co_pb2.ModelSpec) -> None:
        """Fill ``source``, ``module`` and ``files`` of ``model_spec`` (other fields untouched)."""
        model_spec.source = self.source
        model_spec.module = self.module
        del model_spec.files[:]
        model_spec.files.extend(
            co_pb2.SourceFile(module=f.module, source=f.source, package=f.package, path=f.path)
            for f in self.files
        )

    @classmethod
    def from_proto(cls, model_spec: co_pb2.ModelSpec) -> CodeBundle:
        """The bundle a spec carries; InvalidArgument if its module names do not fit together."""
        files = tuple(
            ShippedFile(module=f.module, source=f.source, package=f.package, path=f.path)
            for f in model_spec.files
        )
        return cls(module=model_spec.module, source=model_spec.source, files=files)


def collect(
    obj: type | Callable[..., object],
    *,
    extra: Sequence[object] = (),
    code_dir: str | Path | None = None,
    max_bytes: int = 4 << 20,
    max_files: int = 500,
) -> CodeBundle:
    """The bundle that rebuilds ``obj`` (the model class) and ``extra`` objects on a worker.

    Ships the module defining each of them and, recursively, every local module they import:
    one whose file lies under the folder the model is imported from or under ``code_dir``, and
    not in the Python installation, a virtualenv or site-packages. With ``code_dir`` every
    ``.py`` below it is shipped too. A definition living in a script (``__main__``) is shipped
    alone with what it uses, as :data:`SCRIPT_MODULE`; :func:`shipped_ref` says where an
    object ends up. InvalidArgument if the code is over ``max_bytes`` or ``max_files``.
    """
    for name, value in (("max_bytes", max_bytes), ("max_files", max_files)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidArgument(f"{name} must be a positive int, got {value!r}")
    # An extra from an installed library (torch.nn.functional.l1_loss) is on the workers.
    origins = [_origin(o) for o in (obj, *(e for e in extra if not _installed_object(e)))]
    tree = _code_dir(code_dir)
    roots = [
        *([tree] if tree else []),
        *(o.root for o in origins),
        *(o.file.parent for o in origins),
    ]
    collector = _Collector(roots, max_bytes, max_files)
    scripts = sorted({o.file for o in origins if o.module is None})
    if len(scripts) > 1:
        raise InvalidArgument(
            "the model and the extra objects come from more than one script "
            f"({', '.join(map(str, scripts))}); move the extra objects into an importable module"
        )
    for script in scripts:
        mine = [o for o in origins if o.file == script]
        names = sorted({o.qualname.partition(".")[0] for o in mine})
        source = extract_definitions(_read(script, max_bytes), names, str(script))
        collector.add(_script_module(mine[0].package), script, False, source=source)
    for o in origins:
        if o.module is not None and (o is origins[0] or collector.is_local(o.file)):
            collector.add(o.module, o.file, o.file.name == "__init__.py")
    if tree:
        collector.add_tree(tree)
    files = collector.finish()
    main = shipped_module(obj)
    source = next(f.source for f in files if f.module == main)
    rest = tuple(f for f in files if f.module != main)
    return CodeBundle(module=main, source=source, files=rest)


def shipped_module(obj: object) -> str:
    """The module ``obj`` is found in once collected: its own, or :data:`SCRIPT_MODULE` when
    it comes from a script."""
    o = _origin(obj)
    return o.module or _script_module(o.package)


def shipped_ref(obj: object) -> str:
    """Where ``obj`` is found in a collected bundle, as "module:qualname" (what a custom loss's
    ``loss_function`` names)."""
    return f"{shipped_module(obj)}:{_origin(obj).qualname}"


def importable(name: str) -> bool:
    """Whether ``name`` can be imported by that name (``a.b``; not ``my-model`` or ``__main__``)."""
    parts = name.split(".")
    return name != "__main__" and all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)


@dataclass(frozen=True)
class _Origin:
    module: str | None  # its import name; None: a script, whose definitions are extracted
    package: str  # a script's package when it ran as `python -m pkg.script`
    file: Path
    root: Path  # the folder its import name is relative to
    qualname: str


def _origin(obj: object) -> _Origin:
    name, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (isinstance(name, str) and isinstance(qualname, str)):
        raise InvalidArgument(f"{obj!r} is not a class or a function: cannot find its source")
    if "<locals>" in qualname:
        raise InvalidArgument(
            f"{qualname} is defined inside a function; define it at the top level of a .py file"
        )
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        raise InvalidArgument(
            f"cannot read the source of {qualname}: module {name!r} has no .py file; define it "
            "in a .py file (not an interactive session or a compiled module)"
        )
    path = Path(file).resolve()
    if importable(name):
        return _Origin(name, "", path, _import_root(path, name), qualname)
    if getattr(module, qualname.partition(".")[0], None) is None:
        # Its definitions are read from that file: make sure it is the file that defined it.
        raise InvalidArgument(
            f"{qualname} says it comes from module {name!r} ({path}), which does not define it: "
            "define it in a .py file and import it from there"
        )
    spec_name = getattr(getattr(module, "__spec__", None), "name", "") or ""
    package = spec_name.rpartition(".")[0] if importable(spec_name) else ""
    root = _import_root(path, spec_name) if package else path.parent
    return _Origin(None, package, path, root, qualname)


def _installed_object(obj: object) -> bool:
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    return module is not None and module.__name__ != "__main__" and _installed_module(module)


def _import_root(path: Path, name: str) -> Path:
    """The folder ``name`` is imported from (R for R/a/b.py as ``a.b``), else the file's own."""
    folder = path.parent.parent if path.name == "__init__.py" else path.parent
    for part in reversed(name.split(".")[:-1]):
        if folder.name != part:
            return path.parent
        folder = folder.parent
    return folder


def _script_module(package: str) -> str:
    return f"{package}.{SCRIPT_MODULE}" if package else SCRIPT_MODULE


def _code_dir(code_dir: str | Path | None) -> Path | None:
    if code_dir is None:
        return None
    if not isinstance(code_dir, (str, Path)):
        raise InvalidArgument(f"code_dir must be a folder path, got {type(code_dir).__name__}")
    path = Path(code_dir).expanduser().resolve()
    if not path.is_dir():
        raise InvalidArgument(f"code_dir {str(code_dir)!r} is not a folder")
    return path


@functools.cache
def _environment() -> tuple[Path, ...]:
    """Folders whose modules the workers' own installation provides."""
    paths = sysconfig.get_paths()
    dirs = {Path(paths["stdlib"]), Path(paths["platstdlib"]), _PSCLUSTER}
    if sys.prefix != sys.base_prefix:  # a virtualenv: everything in it was installed
        dirs.add(Path(sys.prefix))
    # Not all of sys.base_prefix: a system Python's /usr would also hold /usr/src/app.
    return tuple(d.resolve() for d in dirs)


class _Collector:
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
        text = _read(file, self.max_bytes) if source is None else source
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
        if name not in sys.modules and top is not None and _installed_module(top):
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


def _installed_module(module: ModuleType) -> bool:
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


def _read(file: Path, max_bytes: int) -> str:
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


def _validate(bundle: CodeBundle) -> None:
    if not isinstance(bundle.files, tuple):
        raise InvalidArgument("CodeBundle.files must be a tuple of ShippedFile")
    if bundle.module and not importable(bundle.module):
        raise InvalidArgument(f"the model's module name {bundle.module!r} is not importable")
    by_name: dict[str, ShippedFile] = {}
    for f in bundle.files:
        if not importable(f.module):
            raise InvalidArgument(
                f"shipped file {f.path!r} has an invalid module name {f.module!r}"
            )
        if f.module in by_name:
            raise InvalidArgument(f"module {f.module!r} is shipped twice")
        by_name[f.module] = f
    if bundle.module in by_name:
        raise InvalidArgument(
            f"module {bundle.module!r} is shipped twice: as the model's module and as a file"
        )
    for name in [*by_name, bundle.module]:
        parent = name.rpartition(".")[0]
        is_package = parent == bundle.module or (parent in by_name and by_name[parent].package)
        if parent and not is_package:
            raise InvalidArgument(
                f"module {name!r} is shipped without its package {parent!r}: ship the package's "
                "__init__.py (or an empty package entry) as well"
            )

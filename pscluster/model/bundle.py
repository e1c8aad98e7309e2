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

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pscluster.errors import InvalidArgument
from pscluster.model.imports import (
    Collector,
    ShippedFile,
    importable,
    installed_module,
    read_source,
)
from pscluster.model.script import extract_definitions
from pscluster.v1 import coordinator_pb2 as co_pb2

log = logging.getLogger(__name__)

# What a script's extracted definitions are shipped as (inside its package when it ran as
# `python -m pkg.script`, so that its relative imports still resolve).
SCRIPT_MODULE = "psc_main"


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
    collector = Collector(roots, max_bytes, max_files)
    scripts = sorted({o.file for o in origins if o.module is None})
    if len(scripts) > 1:
        raise InvalidArgument(
            "the model and the extra objects come from more than one script "
            f"({', '.join(map(str, scripts))}); move the extra objects into an importable module"
        )
    for script in scripts:
        mine = [o for o in origins if o.file == script]
        names = sorted({o.qualname.partition(".")[0] for o in mine})
        source = extract_definitions(read_source(script, max_bytes), names, str(script))
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
    return module is not None and module.__name__ != "__main__" and installed_module(module)


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

"""A job's shipped code, imported on a worker without leaking into other jobs.

Two jobs may each ship their own ``layers.py``, and a shipped module may share a name with
one the worker has installed. So a bundle's modules are served by a finder that exists only
while the bundle is being imported, and they leave ``sys.modules`` again afterwards (whatever
held those names before is put back). Imports that run later, inside a function
(``def forward(...): from layers import act``), go through an ``__import__`` private to the
bundle's modules, which puts the bundle's modules back for the duration of that import.

Each file's source is registered in ``linecache`` as ``<psc:PATH@DIGEST>``, so tracebacks on
workers show the user's lines, and ``inspect.getsource`` works on their functions. (Not on
their classes: inspect finds a class's file through ``sys.modules``, which the bundle leaves.)

Example::

    loaded = LoadedBundle(CodeBundle.from_proto(spec.model))
    model_cls = loaded.model_class(spec.model.class_name)
    loss = loaded.lookup(spec.loss_function)
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import linecache
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

from torch import nn

from pscluster.errors import InvalidArgument
from pscluster.model.bundle import CodeBundle
from pscluster.model.imports import ShippedFile, importable

# What an anonymous bundle's source runs as (the name older releases gave it, too).
ANONYMOUS = "psc_user_model"
# sys.modules and sys.meta_path are process-wide: one bundle changes them at a time.
_LOCK = threading.RLock()
_import = builtins.__import__


class LoadedBundle:
    """A bundle's modules, imported once; ``main`` is the module defining the model."""

    def __init__(self, bundle: CodeBundle) -> None:
        self.name = bundle.module or ANONYMOUS
        files = {f.module: f for f in bundle.files}
        package = any(name.startswith(f"{self.name}.") for name in files)
        path = self.name.replace(".", "/") + ("/__init__.py" if package else ".py")
        files[self.name] = ShippedFile(self.name, bundle.source, package, path)
        self._files = files
        self._modules: dict[str, ModuleType] = {}
        self._hidden: dict[str, ModuleType] = {}
        self._depth = 0
        scoped = {**builtins.__dict__, "__import__": self._scoped_import}
        filenames = {name: _register_lines(f) for name, f in files.items()}
        self._finder = _Finder(files, filenames, scoped)
        with self._active():
            self.main = importlib.import_module(self.name)

    def lookup(self, ref: str) -> object:
        """The object ``ref`` ("module:qualname") names in this bundle, e.g. "losses:focal"."""
        module_name, sep, qualname = ref.partition(":")
        if not sep or not qualname or (module_name and not importable(module_name)):
            raise InvalidArgument(f"{ref!r} is not a reference 'module:name' to shipped code")
        module_name = module_name or self.name
        if module_name not in self._files:
            raise InvalidArgument(
                f"{ref!r}: module {module_name!r} is not in the shipped code; it has "
                f"{', '.join(sorted(self._files))}"
            )
        with self._active():
            obj: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            if not hasattr(obj, part):
                raise InvalidArgument(f"{ref!r}: module {module_name!r} defines no {qualname!r}")
            obj = getattr(obj, part)
        return obj

    def model_class(self, class_name: str) -> type[nn.Module]:
        cls = self.main.__dict__.get(class_name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise InvalidArgument(f"the model source defines no nn.Module named {class_name!r}")
        return cls

    def _owns(self, name: str) -> bool:
        """Whether ``name`` is the bundle's: one of its modules, or below one of its packages."""
        if name in self._files:
            return True
        top = self._files.get(name.partition(".")[0])
        return top is not None and top.package

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        with _LOCK:
            if self._depth == 0:
                self._swap_in()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._swap_out()

    def _swap_in(self) -> None:
        self._hidden = {n: sys.modules.pop(n) for n in list(sys.modules) if self._owns(n)}
        sys.modules.update(self._modules)
        sys.meta_path.insert(0, self._finder)

    def _swap_out(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self._finder)
        for name in [n for n in list(sys.modules) if self._owns(n)]:
            module = sys.modules.pop(name)
            if name in self._files:
                self._modules[name] = module
        sys.modules.update(self._hidden)
        self._hidden = {}

    def _scoped_import(
        self,
        name: str,
        globals: Mapping[str, object] | None = None,
        locals: Mapping[str, object] | None = None,
        fromlist: Sequence[str] = (),
        level: int = 0,
    ) -> ModuleType:
        """``__import__`` as the bundle's own modules see it."""
        if level == 0 and not self._owns(name):
            return _import(name, globals, locals, fromlist, level)
        with self._active():
            return _import(name, globals, locals, fromlist, level)


def load_bundle(bundle: CodeBundle) -> ModuleType:
    """Import ``bundle`` in isolation and return its main module (a fresh one every call)."""
    return LoadedBundle(bundle).main


def load_object(bundle: CodeBundle, ref: str) -> object:
    """The object ``ref`` ("module:qualname", e.g. a custom loss) names in ``bundle``."""
    return LoadedBundle(bundle).lookup(ref)


def load_class(bundle: CodeBundle, class_name: str) -> type[nn.Module]:
    """The nn.Module class ``class_name`` defined by the bundle's main module."""
    return LoadedBundle(bundle).model_class(class_name)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves exactly the bundle's modules; anything else is left to the other finders."""

    def __init__(
        self, files: dict[str, ShippedFile], filenames: dict[str, str], scoped: dict[str, Any]
    ) -> None:
        self._files, self._filenames, self._builtins = files, filenames, scoped

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = self._files.get(fullname)
        if file is None:
            return None
        # A package gets an empty search path: its submodules come from the bundle or not at all.
        return importlib.util.spec_from_loader(
            fullname, self, origin=self._filenames[fullname], is_package=file.package
        )

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        filename = self._filenames[name]
        module.__file__ = filename
        module.__dict__["__builtins__"] = self._builtins
        code = compile(self._files[name].source, filename, "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str:
        return self._files[fullname].source


def _register_lines(file: ShippedFile) -> str:
    """Make ``file``'s lines findable by tracebacks and inspect; returns its code filename.

    The digest keeps two jobs' different ``layers.py`` apart; ``mtime`` None tells
    ``linecache.checkcache`` that there is no file on disk to compare with.
    """
    digest = hashlib.sha1(file.source.encode()).hexdigest()[:8]
    filename = f"<psc:{file.path or file.module.replace('.', '/') + '.py'}@{digest}>"
    lines = io.StringIO(file.source, newline=None).readlines()
    linecache.cache[filename] = (len(file.source), None, lines, filename)
    return filename

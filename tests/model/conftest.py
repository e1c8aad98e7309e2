"""Helpers for the model-code tests: user projects written to disk, and fresh processes that
collect a bundle as a user's script would and load it as a worker would."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

# A worker in miniature: load the spec written by the user's process, build the model, run it
# on ones, and report the output's sum and which user module names leaked into sys.modules.
WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from pscluster.model.bundle import CodeBundle
    from pscluster.model.source import build_from_bundle
    from pscluster.v1 import coordinator_pb2 as co_pb2

    spec = co_pb2.ModelSpec.FromString(open(sys.argv[1], "rb").read())
    model = build_from_bundle(CodeBundle.from_proto(spec), spec.class_name, spec.kwargs_json)
    with torch.no_grad():
        out = model(torch.ones(2, 4))
    names = sys.argv[2].split(",")
    print(json.dumps({"sum": float(out.sum()), "leaked": [n for n in names if n in sys.modules]}))
    """
)

# The SDK side in miniature, appended to a user's script or run next to their modules.
WRITE_SPEC = textwrap.dedent(
    """
    def _psc_write_spec(model, path):
        from pscluster.model.bundle import collect
        from pscluster.v1 import coordinator_pb2 as co_pb2

        spec = co_pb2.ModelSpec(class_name=model.__name__, kwargs_json="{}")
        collect(model).to_proto(spec)
        with open(path, "wb") as f:
            f.write(spec.SerializeToString())
    """
)


def write_files(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path: source, dedented) under ``root``; returns ``root``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def import_from(root: Path, name: str) -> ModuleType:
    """Import ``name`` the way a user's script does: its folder on sys.path (use with
    ``clean_imports``)."""
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    return importlib.import_module(name)


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the venv's Python in ``cwd`` with nothing of the test's own sys.path inherited."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"python {args[:1]} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture
def clean_imports(tmp_path: Path) -> Iterator[None]:
    """Drop the user modules a test imported in-process (those from ``tmp_path``), so that the
    next test's ``layers`` is its own."""
    before, path = set(sys.modules), list(sys.path)
    yield
    importlib.invalidate_caches()
    for name in set(sys.modules) - before:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if file.startswith(str(tmp_path)):
            del sys.modules[name]
    sys.path[:] = path

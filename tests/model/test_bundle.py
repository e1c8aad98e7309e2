"""collect(): which of the user's files travel with the model, and the limits on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pscluster.client.spec_file import load_job_file
from pscluster.errors import InvalidArgument
from pscluster.model.bundle import CodeBundle, collect, shipped_ref
from pscluster.model.imports import ShippedFile
from pscluster.model.loader import load_object
from pscluster.model.source import build_from_bundle
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.model.conftest import WORKER, WRITE_SPEC, import_from, run_python, write_files

# A model importing a sibling module and a module of a local package (which itself uses a
# relative import), next to installed and standard-library imports.
PROJECT = {
    "layers.py": """
        from torch import nn

        FACTOR = 2.0


        class Block(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.lin = nn.Linear(n, n)
                nn.init.ones_(self.lin.weight)
                nn.init.zeros_(self.lin.bias)

            def forward(self, x):
                return self.lin(x) * FACTOR
        """,
    "mypkg/__init__.py": "",
    "mypkg/blocks.py": """
        from torch import nn

        from . import util


        class Scale(nn.Module):
            def forward(self, x):
                return x * util.K
        """,
    "mypkg/util.py": "K = 3.0\n",
    "model.py": """
        import json

        import numpy as np
        import torch
        from torch import nn

        from layers import Block
        from mypkg.blocks import Scale


        class Net(nn.Module):
            def __init__(self, n=4):
                super().__init__()
                self.block = Block(n)
                self.scale = Scale()

            def forward(self, x):
                from mypkg import util  # an import that runs on every call, after loading

                return self.scale(self.block(x)) + util.K
        """,
    "submit.py": "import sys\nfrom model import Net\n"
    + WRITE_SPEC
    + "\n_psc_write_spec(Net, sys.argv[1])\n",
}
# ones(2, 4) through Linear(ones, 0) is 4, times FACTOR 2, times K 3, plus K 3: 27 each.
EXPECTED_SUM = 27.0 * 8


@pytest.fixture(scope="module")
def project_spec(tmp_path_factory: pytest.TempPathFactory) -> co_pb2.ModelSpec:
    """The spec a user's ``python submit.py`` produces for PROJECT."""
    root = write_files(tmp_path_factory.mktemp("project"), PROJECT)
    out = root.parent / "spec.bin"
    run_python(["submit.py", str(out)], cwd=root)
    return co_pb2.ModelSpec.FromString(out.read_bytes())


def test_sibling_module_and_local_package_are_shipped(project_spec: co_pb2.ModelSpec) -> None:
    # Prepare
    spec = project_spec

    # Execute
    bundle = CodeBundle.from_proto(spec)

    # Assert
    assert bundle.module == "model"
    assert "from layers import Block" in bundle.source
    assert [(f.module, f.package, f.path) for f in bundle.files] == [
        ("layers", False, "layers.py"),
        ("mypkg", True, "mypkg/__init__.py"),
        ("mypkg.blocks", False, "mypkg/blocks.py"),
        ("mypkg.util", False, "mypkg/util.py"),
    ]


def test_installed_and_standard_library_modules_are_not_shipped(
    project_spec: co_pb2.ModelSpec,
) -> None:
    # Prepare
    shipped = {f.module.partition(".")[0] for f in project_spec.files}

    # Execute
    installed = shipped & {"json", "numpy", "torch", "pscluster"}

    # Assert
    assert installed == set()


def test_bundle_builds_in_a_fresh_process_without_the_project(
    project_spec: co_pb2.ModelSpec, tmp_path: Path
) -> None:
    # Prepare: the worker's folder holds only the spec; the project is not on its path
    spec_file = tmp_path / "spec.bin"
    spec_file.write_bytes(project_spec.SerializeToString())

    # Execute
    done = run_python(
        ["-c", WORKER, str(spec_file), "layers,model,mypkg,mypkg.blocks,mypkg.util"], tmp_path
    )

    # Assert
    report = json.loads(done.stdout)
    assert report == {"sum": EXPECTED_SUM, "leaked": []}


def test_job_file_module_is_shipped_under_its_synthetic_name(
    tmp_path: Path, clean_imports: None
) -> None:
    # Prepare: a job file as `pscluster submit` reads it; the model imports a sibling module
    files = {k: v for k, v in PROJECT.items() if k != "submit.py"}
    write_files(tmp_path, {**files, "job.yaml": "model: model.py:Net\ndata: model.py:load\n"})
    model_cls = load_job_file(tmp_path / "job.yaml").model_class()

    # Execute
    bundle = collect(model_cls)

    # Assert
    assert bundle.module == model_cls.__module__
    assert bundle.module.startswith("psc_job_model_")
    names = [f.module for f in bundle.files]
    assert names == ["layers", "mypkg", "mypkg.blocks", "mypkg.util"]
    model = build_from_bundle(bundle, "Net", "{}")
    assert float(model(torch.ones(2, 4)).sum().detach()) == EXPECTED_SUM


def test_extra_function_is_shipped_with_its_own_imports(
    tmp_path: Path, clean_imports: None
) -> None:
    # Prepare: the loss lives in a module the model never imports
    write_files(
        tmp_path,
        {
            "net.py": "from torch import nn\nclass Net(nn.Linear):\n    pass\n",
            "losses.py": "from weights import W\n"
            "def focal(out, y):\n"
            "    return (out - y).sum() * W\n",
            "weights.py": "W = 5.0\n",
        },
    )
    net, losses = import_from(tmp_path, "net"), import_from(tmp_path, "losses")

    # Execute
    bundle = collect(net.Net, extra=[losses.focal, torch.nn.functional.mse_loss, math.sqrt])
    ref = shipped_ref(losses.focal)

    # Assert
    assert bundle.module == "net"
    assert [f.module for f in bundle.files] == ["losses", "weights"]
    assert ref == "losses:focal"
    focal = load_object(bundle, ref)
    assert callable(focal)
    assert float(focal(torch.ones(3), torch.zeros(3))) == 15.0


def test_code_dir_ships_every_module_but_environments_and_hidden_folders(
    tmp_path: Path, clean_imports: None
) -> None:
    # Prepare
    write_files(
        tmp_path,
        {
            "net.py": "from torch import nn\nclass Net(nn.Linear):\n    pass\n",
            "tools/plots.py": "PLOT = 1\n",
            "configs/__init__.py": "",
            "configs/small.py": "SIZE = 2\n",
            "my-notes.py": "not importable by that name\n",
            ".hidden/secret.py": "X = 1\n",
            "__pycache__/stale.py": "X = 1\n",
            "venv/pyvenv.cfg": "home = /usr\n",
            "venv/lib/thing.py": "X = 1\n",
            "vendor/site-packages/dep.py": "X = 1\n",
        },
    )
    net = import_from(tmp_path, "net")

    # Execute
    bundle = collect(net.Net, code_dir=tmp_path)

    # Assert
    assert [(f.module, f.package) for f in bundle.files] == [
        ("configs", True),
        ("configs.small", False),
        ("tools", True),  # a folder without __init__.py: an empty (namespace) package entry
        ("tools.plots", False),
    ]


@pytest.mark.parametrize(
    ("sizes", "named"),
    [
        ({"big_one.py": 2500, "big_two.py": 2500, "small.py": 10}, ["big_one.py", "big_two.py"]),
        ({"huge.py": 5000}, ["huge.py"]),
    ],
)
def test_code_over_max_bytes_names_the_biggest_files(
    tmp_path: Path, clean_imports: None, sizes: dict[str, int], named: list[str]
) -> None:
    # Prepare
    code = tmp_path / "code"
    files = {name: "#" * (size - 1) + "\n" for name, size in sizes.items()}
    write_files(
        code, {**files, "net.py": "from torch import nn\nclass Net(nn.Linear):\n    pass\n"}
    )
    net = import_from(code, "net")

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        collect(net.Net, code_dir=code, max_bytes=4000)

    # Assert
    message = str(caught.value)
    assert all(name in message for name in named)
    assert "code_dir" in message


def test_code_over_max_files_is_refused(tmp_path: Path, clean_imports: None) -> None:
    # Prepare
    write_files(tmp_path, {f"mod{i}.py": f"X = {i}\n" for i in range(6)})
    write_files(tmp_path, {"net.py": "from torch import nn\nclass Net(nn.Linear):\n    pass\n"})
    net = import_from(tmp_path, "net")

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        collect(net.Net, code_dir=tmp_path, max_files=3)

    # Assert
    assert "at most 3 files" in str(caught.value)
    assert "code_dir" in str(caught.value)


def test_module_that_is_not_utf8_is_named(tmp_path: Path, clean_imports: None) -> None:
    # Prepare: Python imports it (its coding line says latin-1), but we ship UTF-8 text only
    (tmp_path / "legacy.py").write_bytes(b"# -*- coding: latin-1 -*-\nNAME = '\xe9t\xe9'\n")
    write_files(
        tmp_path, {"net.py": "import legacy\nfrom torch import nn\nclass Net(nn.Linear):\n  pass\n"}
    )
    net = import_from(tmp_path, "net")

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        collect(net.Net)

    # Assert
    assert "legacy.py" in str(caught.value)
    assert "UTF-8" in str(caught.value)


def test_class_defined_inside_a_function_is_refused() -> None:
    # Prepare
    def make() -> type:
        class Inner(torch.nn.Module):
            pass

        return Inner

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        collect(make())

    # Assert
    assert "inside a function" in str(caught.value)


def test_proto_round_trip_keeps_every_field() -> None:
    # Prepare
    files = (
        ShippedFile("pkg", "", True, "pkg/__init__.py"),
        ShippedFile("pkg.layers", "Y = 2\n", False, "pkg/layers.py"),
    )
    bundle = CodeBundle(module="pkg.net", source="X = 1\n", files=files)
    spec = co_pb2.ModelSpec(class_name="Net")

    # Execute
    bundle.to_proto(spec)
    again = CodeBundle.from_proto(co_pb2.ModelSpec.FromString(spec.SerializeToString()))

    # Assert
    assert again == bundle
    assert spec.class_name == "Net"


@pytest.mark.parametrize(
    ("files", "module", "expected"),
    [
        ((ShippedFile("pkg.util", "X = 1\n"),), "", "without its package 'pkg'"),
        ((ShippedFile("pkg.util", "X = 1\n"),), "pkg.net", "without its package 'pkg'"),
        ((ShippedFile("a", ""), ShippedFile("a", "")), "", "shipped twice"),
        ((ShippedFile("my-model", ""),), "", "invalid module name"),
        ((ShippedFile("net", "X = 1\n"),), "net", "as the model's module and as a file"),
    ],
)
def test_inconsistent_bundle_is_refused(
    files: tuple[ShippedFile, ...], module: str, expected: str
) -> None:
    # Prepare
    spec = co_pb2.ModelSpec(module=module, source="X = 1\n")
    spec.files.extend(
        co_pb2.SourceFile(module=f.module, source=f.source, package=f.package) for f in files
    )

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        CodeBundle.from_proto(spec)

    # Assert
    assert expected in str(caught.value)


def test_limits_must_be_positive() -> None:
    # Prepare
    model = torch.nn.Linear

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        collect(model, max_files=0)

    # Assert
    assert "max_files must be a positive int" in str(caught.value)

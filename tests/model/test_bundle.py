"""collect(): which of the user's files travel with the model (the limits on them:
test_bundle_limits.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pscluster.client.spec_file import load_job_file
from pscluster.model.bundle import CodeBundle, collect, shipped_ref
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

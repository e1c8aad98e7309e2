"""collect() and CodeBundle: the limits on the user's files, the code they refuse, and the
proto form a bundle travels in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pscluster.errors import InvalidArgument
from pscluster.model.bundle import CodeBundle, collect
from pscluster.model.imports import ShippedFile
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.model.conftest import import_from, write_files


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

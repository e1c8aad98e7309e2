"""Loading shipped code on a worker: isolated per bundle, and readable in tracebacks."""

from __future__ import annotations

import inspect
import sys
import traceback
import types

import pytest
import torch

from pscluster.errors import InvalidArgument
from pscluster.model import source
from pscluster.model.bundle import CodeBundle
from pscluster.model.imports import ShippedFile
from pscluster.model.loader import LoadedBundle, load_bundle, load_class, load_object
from pscluster.model.script import extract_definitions

MODEL = """\
from torch import nn

import layers


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        from layers import late  # imported when called, long after the bundle was loaded

        return layers.act(self.lin(x)) * late()
"""


def _bundle(factor: float, late: float) -> CodeBundle:
    """A model whose ``layers.py`` differs from bundle to bundle."""
    layers = f"""\
FACTOR = {factor}


def act(x):
    if FACTOR < 0:
        raise ValueError("negative factor")
    return x * FACTOR


def late():
    return {late}
"""
    files = (ShippedFile("layers", layers, False, "layers.py"),)
    return CodeBundle(module="net", source=MODEL, files=files)


def _out(model: torch.nn.Module) -> float:
    lin = model.get_submodule("lin")
    assert isinstance(lin, torch.nn.Linear)
    with torch.no_grad():
        torch.nn.init.ones_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        return float(model(torch.ones(1, 2)).sum())


def test_two_bundles_with_their_own_layers_load_side_by_side() -> None:
    # Prepare
    first, second = _bundle(factor=2.0, late=1.0), _bundle(factor=3.0, late=10.0)

    # Execute
    model_a = source.build_from_bundle(first, "Net", "{}")
    model_b = source.build_from_bundle(second, "Net", "{}")

    # Assert: Linear(ones, 0) on ones(1, 2) gives 2 per output, times FACTOR, times late()
    assert (_out(model_a), _out(model_b)) == (8.0, 120.0)
    assert _out(model_a) == 8.0  # model_b's later import did not leak into model_a
    assert "layers" not in sys.modules
    assert "net" not in sys.modules


def test_names_taken_before_loading_are_given_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the worker already has an unrelated module called `layers`
    installed = types.ModuleType("layers")
    monkeypatch.setitem(sys.modules, "layers", installed)
    finders = list(sys.meta_path)

    # Execute
    model = source.build_from_bundle(_bundle(factor=2.0, late=1.0), "Net", "{}")

    # Assert
    assert _out(model) == 8.0
    assert sys.modules["layers"] is installed
    assert sys.meta_path == finders


def test_model_module_with_submodules_is_a_package() -> None:
    # Prepare: the model is defined in mypkg/__init__.py and imports a submodule relatively
    init = "from torch import nn\nfrom .blocks import WIDTH\nclass Net(nn.Linear):\n    pass\n"
    files = (ShippedFile("mypkg.blocks", "WIDTH = 3\n", False, "mypkg/blocks.py"),)
    bundle = CodeBundle(module="mypkg", source=init, files=files)

    # Execute
    model = source.build_from_bundle(bundle, "Net", '{"in_features": 3, "out_features": 1}')

    # Assert
    assert model(torch.ones(1, 3)).shape == (1, 1)
    assert "mypkg" not in sys.modules


def test_package_submodule_that_was_not_shipped_is_not_found() -> None:
    # Prepare
    init = "from .missing import thing\n"
    files = (ShippedFile("pkg", init, True, "pkg/__init__.py"),)
    bundle = CodeBundle(module="pkg.present", source="import pkg\n", files=files)

    # Execute
    with pytest.raises(ModuleNotFoundError) as caught:
        load_bundle(bundle)

    # Assert
    assert "pkg.missing" in str(caught.value)


def test_traceback_names_the_users_file_and_line() -> None:
    # Prepare: act() raises on line 6 of layers.py
    model = source.build_from_bundle(_bundle(factor=-1.0, late=1.0), "Net", "{}")

    # Execute
    with pytest.raises(ValueError) as caught:
        model(torch.ones(1, 2))
    frames = traceback.extract_tb(caught.value.__traceback__)

    # Assert
    assert "layers.py" in frames[-1].filename
    assert frames[-1].lineno == 6
    assert frames[-1].line == 'raise ValueError("negative factor")'
    assert "net.py" in frames[-2].filename
    assert frames[-2].line == "return layers.act(self.lin(x)) * late()"


def test_traceback_of_an_extracted_script_points_at_the_script_line() -> None:
    # Prepare: the class sits under the main guard on line 7, its raise on line 9
    script = (
        "import torch\n"
        "data = torch.load('/only/on/the/laptop.pt')\n"
        "\n"
        "if __name__ == '__main__':\n"
        "    import argparse\n"
        "\n"
        "    class Net(torch.nn.Module):\n"
        "        def forward(self, x):\n"
        "            raise RuntimeError('boom')\n"
        "\n"
        "    train(Net(), data)\n"
    )
    extracted = extract_definitions(script, ["Net"], "train.py")
    model_cls = load_class(CodeBundle("psc_main", extracted), "Net")

    # Execute
    with pytest.raises(RuntimeError) as caught:
        model_cls()(torch.ones(1))
    last = traceback.extract_tb(caught.value.__traceback__)[-1]

    # Assert
    assert "psc_main.py" in last.filename
    assert (last.lineno, last.line) == (9, "raise RuntimeError('boom')")


def test_getsource_shows_the_shipped_function() -> None:
    # Prepare
    loaded = LoadedBundle(_bundle(factor=2.0, late=1.0))

    # Execute
    act = loaded.lookup("layers:act")
    text = inspect.getsource(act)  # type: ignore[arg-type]

    # Assert
    assert text.startswith("def act(x):")


def test_anonymous_source_still_builds() -> None:
    # Prepare: what older SDKs send, and what tests elsewhere build models from
    model_source = (
        "import torch\n"
        "from torch import nn\n"
        "class Tiny(nn.Module):\n"
        "    def __init__(self, n_in, n_out):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(n_in, n_out)\n"
        "    def forward(self, x):\n"
        "        import math\n"
        "        return self.fc(x) * math.pi\n"
    )

    # Execute
    model = source.build(model_source, "Tiny", '{"n_in": 4, "n_out": 3}')

    # Assert
    assert type(model).__module__ == "psc_user_model"
    assert model(torch.ones(1, 4)).shape == (1, 3)
    assert "psc_user_model" not in sys.modules


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("nowhere:act", "module 'nowhere' is not in the shipped code"),
        ("layers:missing", "defines no 'missing'"),
        ("act", "not a reference 'module:name'"),
    ],
)
def test_bad_object_reference_says_what_is_wrong(ref: str, expected: str) -> None:
    # Prepare
    bundle = _bundle(factor=2.0, late=1.0)

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        load_object(bundle, ref)

    # Assert
    assert expected in str(caught.value)


def test_missing_model_class_keeps_its_message() -> None:
    # Prepare
    bundle = _bundle(factor=2.0, late=1.0)

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        load_class(bundle, "act")

    # Assert
    assert "the model source defines no nn.Module named 'act'" in str(caught.value)

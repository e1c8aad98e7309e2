"""A model defined in a script: only what defines it is shipped, and the rest never runs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from pscluster.errors import InvalidArgument
from pscluster.model.bundle import CodeBundle
from pscluster.model.loader import load_object
from pscluster.model.script import extract_definitions
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.model.conftest import WORKER, WRITE_SPEC, run_python, write_files

GUARDED = '''
"""Train the net (the user's own script)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from layers import Block

MARKER = Path({marker!r})
HIDDEN = 4
MARKER.write_text("top-level code ran")


def scale(x):
    return x * SCALE


SCALE = 3.0

if __name__ == "__main__":
    import argparse

    WIDTH = HIDDEN

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block(WIDTH)

        def forward(self, x):
            data = x + 0  # a local that shares its name with nothing kept
            return scale(self.block(data))

    def my_loss(out, y):
        return ((out - y) ** 2).mean() * SCALE

    {write_spec}
    print(json.dumps(shipped_ref(my_loss)))
    _psc_write_spec_with(Net, [my_loss], sys.argv[1])
    MARKER.write_text("the main guard ran")
    sys.exit(0)
'''

UNGUARDED = """
import sys
from pathlib import Path

import torch
from torch import nn

from layers import Block

MARKER = Path({marker!r})


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block(4)

    def forward(self, x):
        return self.block(x) * 3.0

{write_spec}
_psc_write_spec(Net, sys.argv[1])
MARKER.write_text("top-level code ran")
raise SystemExit(0)
"""

LAYERS = """
from torch import nn


class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)
        nn.init.ones_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, x):
        return self.lin(x)
"""

WRITE_WITH_EXTRA = textwrap.indent(
    textwrap.dedent(
        """
        from pscluster.model.bundle import collect, shipped_ref

        def _psc_write_spec_with(model, extra, path):
            from pscluster.v1 import coordinator_pb2 as co_pb2

            spec = co_pb2.ModelSpec(class_name=model.__name__, kwargs_json="{}")
            collect(model, extra=extra).to_proto(spec)
            with open(path, "wb") as f:
                f.write(spec.SerializeToString())
        """
    ),
    "    ",
).strip()


def _user_run(tmp_path: Path, script: str) -> tuple[co_pb2.ModelSpec, Path, str]:
    """Run the user's ``python train.py`` and return its spec, marker file and stdout."""
    project, marker = tmp_path / "project", tmp_path / "marker.txt"
    write_spec = WRITE_WITH_EXTRA if "_psc_write_spec_with" in script else WRITE_SPEC
    text = script.format(marker=str(marker), write_spec=write_spec)
    write_files(project, {"train.py": text, "layers.py": LAYERS})
    done = run_python(["train.py", str(tmp_path / "spec.bin")], cwd=project)
    spec = co_pb2.ModelSpec.FromString((tmp_path / "spec.bin").read_bytes())
    return spec, marker, done.stdout


@pytest.mark.parametrize("script", [GUARDED, UNGUARDED], ids=["main-guard", "no-guard"])
def test_script_model_builds_on_a_worker_without_running_the_script(
    tmp_path: Path, script: str
) -> None:
    # Prepare: the user's run writes the marker; a worker must not write it again
    spec, marker, _ = _user_run(tmp_path, script)
    assert marker.exists()
    marker.unlink()
    worker = tmp_path / "worker"
    worker.mkdir()

    # Execute
    done = run_python(["-c", WORKER, str(tmp_path / "spec.bin"), "layers,psc_main"], worker)

    # Assert: ones(2, 4) through Linear(ones, 0) is 4 each, times 3, over 8 elements
    assert json.loads(done.stdout) == {"sum": 96.0, "leaked": []}
    assert not marker.exists()
    bundle = CodeBundle.from_proto(spec)
    assert bundle.module == "psc_main"
    assert [(f.module, f.path) for f in bundle.files] == [("layers", "layers.py")]
    assert "sys.exit" not in bundle.source


def test_script_extra_function_is_shipped_with_the_model(tmp_path: Path) -> None:
    # Prepare
    spec, _, stdout = _user_run(tmp_path, GUARDED)

    # Execute
    ref = json.loads(stdout)
    loss = load_object(CodeBundle.from_proto(spec), ref)

    # Assert
    assert ref == "psc_main:my_loss"
    assert callable(loss)
    assert float(loss(torch.ones(2), torch.zeros(2))) == 3.0


def test_main_guard_keeps_what_the_class_uses_at_its_line_numbers() -> None:
    # Prepare
    source = GUARDED.format(marker="/nonexistent/marker", write_spec="pass")

    # Execute
    extracted = extract_definitions(source, ["Net"], "train.py")

    # Assert
    kept = [line for line in extracted.splitlines() if line.strip()]
    assert kept[:6] == [
        "from __future__ import annotations",
        "from torch import nn",
        "from layers import Block",
        "HIDDEN = 4",
        "def scale(x):",
        "    return x * SCALE",
    ]
    assert "SCALE = 3.0" in kept
    assert "WIDTH = HIDDEN" in kept
    assert "class Net(nn.Module):" in kept
    for dropped in ("MARKER", "import argparse", "import json", "sys.exit", "my_loss", "Path"):
        assert not any(dropped in line for line in kept), dropped
    original = source.splitlines()
    for number, line in enumerate(extracted.splitlines()):
        if line.strip():
            assert original[number].strip() == line.strip()


def test_reversed_main_guard_is_recognised() -> None:
    # Prepare
    source = (
        "import torch\n"
        "if '__main__' == __name__:\n"
        "    class Net(torch.nn.Module):\n"
        "        pass\n"
        "    run()\n"
    )

    # Execute
    extracted = extract_definitions(source, ["Net"], "s.py")

    # Assert
    assert extracted == "import torch\n\nclass Net(torch.nn.Module):\n    pass\n"


def test_top_level_code_without_a_guard_is_dropped() -> None:
    # Prepare
    source = textwrap.dedent(
        """
        import torch
        data = torch.load("/data/that/is/not/on/workers.pt")
        class Net(torch.nn.Module):
            pass
        for epoch in range(3):
            train(Net)
        raise RuntimeError("training ran on a worker")
        """
    )

    # Execute
    extracted = extract_definitions(source, ["Net"], "train.py")
    namespace: dict[str, Any] = {}
    exec(compile(extracted, "train.py", "exec"), namespace)

    # Assert
    assert isinstance(namespace["Net"](), torch.nn.Module)
    assert "data" not in namespace
    assert "raise" not in extracted


def test_a_local_name_does_not_pull_in_a_module_level_statement() -> None:
    # Prepare: `data` inside forward is a local; the module-level `data` must stay behind
    source = textwrap.dedent(
        """
        data = load_everything()
        class Net:
            def forward(self, x):
                data = x * 2
                return [data for data in (data,)]
        """
    )

    # Execute
    extracted = extract_definitions(source, ["Net"], "train.py")

    # Assert
    assert "load_everything" not in extracted


def test_guarded_imports_and_same_line_statements() -> None:
    # Prepare
    source = textwrap.dedent(
        """
        try:
            import apex
        except ImportError:
            apex = None
        import math; start_training()
        class Net:
            SIZE = math.pi if apex is None else 0
        """
    )

    # Execute
    extracted = extract_definitions(source, ["Net"], "train.py")

    # Assert
    assert "except ImportError:" in extracted
    assert "import math\n" in extracted
    assert "start_training" not in extracted


def test_class_inside_a_function_is_refused_with_what_to_do() -> None:
    # Prepare
    source = "def main():\n    class Net:\n        pass\n"

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        extract_definitions(source, ["Net"], "train.py")

    # Assert
    message = str(caught.value)
    assert "train.py" in message
    assert "module level or directly under" in message
    assert "not inside a function" in message


def test_script_that_does_not_parse_is_named() -> None:
    # Prepare
    source = "class Net(:\n"

    # Execute
    with pytest.raises(InvalidArgument) as caught:
        extract_definitions(source, ["Net"], "train.py")

    # Assert
    assert "train.py line 1" in str(caught.value)

"""`pscluster --help`, `jobs` or `status` answer without loading torch (seconds on a small
machine): the CLI's modules import only what their tables need, and torch comes in with
the commands that build or read a model."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import pscluster.client.cli
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_the_cli_starts_without_torch() -> None:
    # Execute: in a fresh interpreter (this one has torch loaded already)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()

    # Assert
    assert out == "[]", f"importing the CLI loaded torch: {out[:200]}"

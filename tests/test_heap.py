"""Startup objects frozen out of the collector; what comes later is still collected."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc, weakref
import torch  # what a server imports: the bulk of what is frozen
from pscluster.heap import freeze_startup_objects

frozen = freeze_startup_objects()

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle: only the collector frees it
gone = weakref.ref(a)
del a, b
gc.collect()
print(frozen, gone() is None)
"""


def test_startup_objects_are_frozen_and_later_cycles_still_collected() -> None:
    # Execute: in a process of its own (freezing is for the life of a process)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()

    # Assert
    assert int(out[0]) > 50_000, "torch's objects were not frozen"
    assert out[1] == "True", "a cycle made after the freeze was not collected"

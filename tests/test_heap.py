"""Startup objects frozen out of the collector; what comes later is still collected."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


BLOCKS = """
import threading, torch
from pscluster.heap import return_large_blocks

if not return_large_blocks(16 << 20):
    print("unsupported")
    raise SystemExit

def rss_mb():
    status = open("/proc/self/status").read().split("VmRSS:")[1]
    return int(status.split()[0]) // 1024

barrier = threading.Barrier(6)

def churn():  # as a shard's gRPC threads apply pushes: 24 MiB temporaries, at once
    barrier.wait()
    for _ in range(3):
        block = torch.empty(6 << 20).fill_(1.0)
        del block
    barrier.wait()

before = rss_mb()
threads = [threading.Thread(target=churn) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss_mb() - before)
"""


def test_large_blocks_freed_on_many_threads_go_back_to_the_system() -> None:
    # Execute: in a process of its own (the allocator's settings are for its life). Without
    # the call, glibc kept ~290 MB of these blocks in the threads' arenas here.
    out = subprocess.run(
        [sys.executable, "-c", BLOCKS], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()

    # Assert
    if out == "unsupported":
        pytest.skip("the C library has no glibc mallopt")
    assert int(out) < 16, f"{out} MB of freed 24 MiB blocks stayed in the process"

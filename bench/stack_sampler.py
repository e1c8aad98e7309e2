"""A sampling profiler inside a process under load, for where py-spy is not installed.

``start(path)`` runs a thread that, while the file ``path + ".on"`` exists, takes every
other thread's Python stack (``sys._current_frames``) ``hz`` times a second and counts the
stacks, and writes them to ``path`` as folded stacks (``frame;frame;... count``, outermost
first, the format flame-graph tools read) every few seconds and at exit. Frames are
``file:function:line``, so a thread blocked on a lock shows the line of its ``with lock:``.
It only reads frames: what the process does is unchanged but for the sampler's own time
(about a millisecond per sample with ~80 threads, taken under the GIL).

bench/coordinator_scale.py ``--profile`` starts the coordinator under it::

    python -c "import stack_sampler; stack_sampler.start('/tmp/c.folded'); import runpy; \
runpy.run_module('pscluster.coordinator', run_name='__main__', alter_sys=True)" --port ...
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections import Counter
from types import CodeType, FrameType

_MAX_DEPTH = 48
_DUMP_SECONDS = 5.0


def start(path: str, hz: float = 20.0) -> threading.Thread:
    counts: Counter[str] = Counter()
    names: dict[tuple[CodeType, int], str] = {}
    lock = threading.Lock()

    def name(frame: FrameType) -> str:
        key = (frame.f_code, frame.f_lineno)
        found = names.get(key)
        if found is None:
            code = frame.f_code
            found = names[key] = f"{_short(code.co_filename)}:{code.co_name}:{frame.f_lineno}"
        return found

    def sample(me: int) -> None:
        for tid, frame in sys._current_frames().items():
            if tid == me:
                continue
            stack: list[str] = []
            f: FrameType | None = frame
            while f is not None and len(stack) < _MAX_DEPTH:
                stack.append(name(f))
                f = f.f_back
            with lock:
                counts[";".join(reversed(stack))] += 1
        with lock:
            counts["<rounds>"] += 1  # samples per thread = count / rounds

    def dump() -> None:
        with lock:
            lines = [f"{stack} {n}\n" for stack, n in counts.most_common()]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            out.writelines(lines)
        os.replace(tmp, path)

    def run() -> None:
        me = threading.get_ident()
        every = 1.0 / hz
        next_dump = time.monotonic() + _DUMP_SECONDS
        while True:
            time.sleep(every)
            if os.path.exists(f"{path}.on"):
                sample(me)
            if time.monotonic() >= next_dump:
                dump()
                next_dump = time.monotonic() + _DUMP_SECONDS

    atexit.register(dump)
    thread = threading.Thread(target=run, name="stack-sampler", daemon=True)
    thread.start()
    return thread


def _short(filename: str) -> str:
    """pscluster/coordinator/tasks.py, grpc/_server.py, threading.py: from the package on."""
    for marker in ("/pscluster/", "/site-packages/"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return f"pscluster/{tail}" if marker == "/pscluster/" else tail
    return os.path.basename(filename)

"""CPU time and memory of processes by role, sampled from /proc while a benchmark runs.

A thread reads ``/proc/<pid>/stat`` (user + system ticks) and ``/proc/<pid>/status`` (VmRSS,
Threads) of every process of each role twice a second, and ``/proc/stat`` for the machine, so
that CPU% over any window is the ticks between its first and last sample. Roles are given as
functions returning pids, so a restarted process (a new pid) is followed; a pid's ticks count
only between its own samples, summed over the pids a role had in the window.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pscluster.client.local import LocalCluster

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    pid: int
    ticks: int  # user + system
    rss_kb: int
    threads: int


def read(pid: int) -> Sample | None:
    """One sample of ``pid``, or None once it has exited."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 (tiny file, read at once)
        status = open(f"/proc/{pid}/status").read()  # noqa: SIM115
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    rss = threads = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return Sample(time.monotonic(), pid, ticks, rss, threads)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all cores since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


@dataclass
class ProcSampler:
    roles: dict[str, Callable[[], list[int]]]
    every: float = 0.5
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    machine: list[tuple[float, int, int]] = field(default_factory=list)  # t, busy, total
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ProcSampler:
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every):
                return

    def sample(self) -> None:
        for role, pids in self.roles.items():
            for pid in pids():
                s = read(pid)
                if s is not None:
                    self.samples.setdefault(role, []).append(s)
        busy, total = machine_ticks()
        self.machine.append((time.monotonic(), busy, total))

    def cpu_percent(self, role: str, t0: float, t1: float) -> float:
        """CPU of a role's processes over [t0, t1], in % of one core."""
        first: dict[int, Sample] = {}
        last: dict[int, Sample] = {}
        for s in self.samples.get(role, []):
            if t0 <= s.t <= t1:
                first.setdefault(s.pid, s)
                last[s.pid] = s
        ticks = sum(last[p].ticks - first[p].ticks for p in first)
        return 100.0 * ticks / TICK / max(t1 - t0, 1e-9)

    def peak(self, role: str, t0: float, t1: float, what: str = "rss_kb") -> int:
        """The largest per-process ``what`` (rss_kb, threads) of a role over [t0, t1]."""
        inside = [getattr(s, what) for s in self.samples.get(role, []) if t0 <= s.t <= t1]
        return max(inside, default=0)

    def peak_sum(self, t0: float, t1: float) -> int:
        """The largest RSS (kB) of every sampled process together over [t0, t1]: what the
        machine had to hold at once, which per-process peaks overstate when they come at
        different moments."""
        inside = sorted(
            (s for samples in self.samples.values() for s in samples if t0 <= s.t <= t1),
            key=lambda s: s.t,
        )
        latest: dict[int, int] = {}
        best = 0
        for s in inside:
            latest[s.pid] = s.rss_kb
            best = max(best, sum(latest.values()))
        return best

    def total(self, role: str, t0: float, t1: float, what: str = "rss_kb") -> int:
        """``what`` summed over a role's processes at the last sample within [t0, t1]."""
        at: dict[int, Sample] = {}
        for s in self.samples.get(role, []):
            if t0 <= s.t <= t1:
                at[s.pid] = s
        return sum(getattr(s, what) for s in at.values())

    def machine_percent(self, t0: float, t1: float) -> float:
        """Every core's busy time over [t0, t1], in % of one core (200% = both of 2 cores)."""
        inside = [m for m in self.machine if t0 <= m[0] <= t1]
        if len(inside) < 2:
            return 0.0
        (_, b0, n0), (_, b1, n1) = inside[0], inside[-1]
        cores = os.cpu_count() or 1
        return 100.0 * cores * (b1 - b0) / max(n1 - n0, 1)


def children(pid: int) -> list[int]:
    """The pids a process started (a worker's DataLoader processes)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cluster_sampler(cluster: LocalCluster, *, loaders: bool = False) -> ProcSampler:
    """A started sampler of a local cluster's processes by role, and of this one ("client");
    ``loaders`` adds the workers' loader processes as a role of their own."""

    def pids(handles: list[Any]) -> list[int]:
        return [h.popen.pid for h in handles if h.popen is not None]

    roles: dict[str, Callable[[], list[int]]] = {
        "coordinator": lambda: pids([cluster.coordinator]),
        "shard": lambda: pids(cluster.shard_handles),
        "worker": lambda: pids(cluster.workers),
    }
    if loaders:
        roles["loader"] = lambda: [c for w in pids(cluster.workers) for c in children(w)]
    roles["client"] = lambda: [os.getpid()]
    return ProcSampler(roles).start()

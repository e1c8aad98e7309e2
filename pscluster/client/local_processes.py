"""The processes of a local cluster once they run: where they are, and what a test or the
``pscluster up`` foreground loop does to them (stop them in order, kill one, start it again,
watch for one that exits).

:class:`~pscluster.client.local.LocalCluster` decides what to launch and how (ports, variables,
the order of the starts and the waits) on top of this; here nothing depends on how a process
was launched, only on its handle, so the fault-injection calls read apart from the launch.
"""

from __future__ import annotations

import signal
import threading

from pscluster.client import processes
from pscluster.client.processes import ProcessHandle


class LocalProcesses:
    """The coordinator, shard and worker handles of a local cluster, and control over them.

    ``start_timeout`` bounds how long a restarted process may take to come up again.
    """

    def __init__(self, start_timeout: float) -> None:
        self.start_timeout = start_timeout
        self.coordinator: ProcessHandle | None = None
        self.shard_handles: list[ProcessHandle] = []
        self.workers: list[ProcessHandle] = []

    @property
    def address(self) -> str:
        """The coordinator's host:port, for Client and PSC_COORDINATOR."""
        if self.coordinator is None or self.coordinator.address is None:
            raise RuntimeError("the cluster is not started")
        return self.coordinator.address

    @property
    def shard_addresses(self) -> list[str]:
        return [h.address for h in self.shard_handles if h.address]

    def handles(self) -> list[ProcessHandle]:
        coordinator = [self.coordinator] if self.coordinator else []
        return [*self.shard_handles, *coordinator, *self.workers]

    def stop_processes(self, grace: float) -> None:
        """Stop workers first (so they do not retry against vanished servers), then the
        coordinator, then the shards."""
        processes.stop_all(self.workers, grace)
        if self.coordinator is not None:
            processes.stop_all([self.coordinator], grace)
        processes.stop_all(self.shard_handles, grace)

    def kill_worker(self, index: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send ``sig`` to worker ``index`` (SIGKILL: a crash) and wait until it has exited."""
        if not 0 <= index < len(self.workers):
            raise IndexError(f"no worker {index}; workers are 0..{len(self.workers) - 1}")
        self.kill(self.workers[index], sig, timeout)

    def kill(self, handle: ProcessHandle, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        processes.kill(handle, sig, timeout)

    def restart(self, handle: ProcessHandle) -> ProcessHandle:
        """Start a stopped process again with the same role, port and environment (e.g. a
        coordinator after a crash, to test recovery from its database)."""
        return processes.restart(handle, self.start_timeout)

    def supervise(self, stop: threading.Event, poll: float = 0.5) -> ProcessHandle | None:
        """Block until ``stop`` is set (None) or a coordinator or shard exits (its handle).

        A worker that exits is reported by the coordinator's status and is not fatal.
        """
        while not stop.wait(poll):
            for h in [*self.shard_handles, *([self.coordinator] if self.coordinator else [])]:
                if not h.alive():
                    return h
        return None

"""An embedded cluster on this machine: a coordinator, N shards and M workers as processes.

Used by ``pscluster up --local`` and by tests::

    with LocalCluster(shards=2, workers=2, state_dir=tmp_path) as cluster:
        client = cluster.client()
        ...
        cluster.kill_worker(0)            # fault injection
        cluster.add_worker()

Ports are picked free on the loopback interface unless given. Every process logs to
``<state_dir>/logs/<name>.log`` and finds the others through the same ``PSC_*`` variables a
compose or Kubernetes deployment sets, so local mode exercises the real configuration path.
While it runs, ``<state_dir>/cluster.json`` records the processes, so that ``pscluster down``
(another process) can stop a detached cluster and a second ``up`` on the same state directory
(which would share the coordinator's database) is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from pscluster.client import local_launch, processes
from pscluster.client.local_processes import LocalProcesses
from pscluster.client.local_state import (
    STATE_FILE,
    read_state,
    refuse_if_running,
    stop_detached,
    write_state,
)
from pscluster.client.processes import ProcessHandle, StartError

if TYPE_CHECKING:  # the SDK imports torch; `pscluster up` and `down` do not need it
    from pscluster.client.sdk import Client

__all__ = [
    "DEFAULT_STATE_DIR",
    "STATE_FILE",
    "LocalCluster",
    "ProcessHandle",
    "StartError",
    "read_state",
    "stop_detached",
]

DEFAULT_STATE_DIR = Path(".pscluster/local")


class LocalCluster(LocalProcesses):
    """Start, watch and stop the processes of a cluster on this machine.

    ``port`` 0 picks a free port for the coordinator too. ``env`` adds or overrides
    environment variables of every process (e.g. ``{"PSC_WORKER_TIMEOUT_SECONDS": "2"}``).
    ``start_timeout`` bounds how long each process may take to come up; ``grace`` is how
    long processes get to exit after SIGTERM before they are killed. ``metrics`` (also on
    when ``PSC_METRICS_PORT`` is set in the environment or ``env``) gives every process its
    own free port for Prometheus metrics: see :attr:`metrics_urls` and ``cluster.json``.
    ``register_shards`` starts the coordinator with no shard list and the shards after it,
    each registering under its name (``shard-0``, ...), as a compose or Kubernetes cluster of
    registering shards does; otherwise the coordinator is given the shards' addresses.
    ``durable`` False keeps the shards' jobs in memory only (no log, no checkpoints: a
    restarted shard comes back empty), as a DDP run keeps its state: benchmarks against it.
    """

    def __init__(
        self,
        shards: int = 2,
        workers: int = 3,
        *,
        state_dir: str | Path = DEFAULT_STATE_DIR,
        port: int = 0,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 60.0,
        grace: float = 5.0,
        metrics: bool = False,
        register_shards: bool = False,
        durable: bool = True,
    ) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0 (pick a free one) or 1..65535, got {port}")
        if start_timeout <= 0 or grace < 0:
            raise ValueError("start_timeout must be > 0 and grace >= 0 seconds")
        super().__init__(start_timeout)
        self.num_shards = shards
        self.num_workers = workers
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.host = host
        self.extra_env = dict(env or {})
        self.grace = grace
        self.register_shards = register_shards
        self.durable = durable
        self._detached = False
        self._started = False
        # One PSC_METRICS_PORT would have every process bind the same port: each gets its own.
        self.metrics = metrics or "PSC_METRICS_PORT" in {**os.environ, **self.extra_env}
        self.metrics_ports: dict[str, int] = {}  # process name -> its metrics port

    # --- addresses (the coordinator's and the shards': LocalProcesses) ---
    @property
    def metrics_urls(self) -> dict[str, str]:
        """Each process's Prometheus endpoint by name (shard-0, coordinator, worker-0, ...)."""
        return {
            name: f"http://{self.host}:{port}/metrics" for name, port in self.metrics_ports.items()
        }

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    # --- lifecycle ---
    def start(self) -> LocalCluster:
        """Start shards, then the coordinator, then workers; wait until all are ready.

        Raises StartError (after stopping whatever did start) if a process exits or is not
        ready within ``start_timeout``.
        """
        if self._started:
            raise RuntimeError("this LocalCluster was already started")
        refuse_if_running(self.state_dir)
        self._started = True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            # The state file is rewritten after each start, so that `pscluster down` finds every
            # process even if this launcher is killed half-way.
            self._start_servers()
            for _ in range(self.num_workers):
                self.add_worker(wait=False)
            if self.num_workers:
                self.wait_for_workers(self.num_workers, self.start_timeout, self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_servers(self) -> None:
        """Shards, then the coordinator given their list; or, when shards register, the
        coordinator first (its address is what they need) and the shards until all are live."""
        if self.register_shards:
            self.coordinator = self._start_server("coordinator", 0, self.port)
            self._write_state()
        for i in range(self.num_shards):
            self.shard_handles.append(self._start_server("shard", i, 0))
            self._write_state()
        if self.register_shards:
            with self.client() as client:
                local_launch.wait_for_shards(
                    client,
                    self.num_shards,
                    self.start_timeout,
                    self.shard_handles,
                    self.state_dir / "logs",
                )
            return
        self.coordinator = self._start_server("coordinator", 0, self.port)
        self._write_state()

    def stop(self, grace: float | None = None) -> None:
        """Stop workers first (so they do not retry against vanished servers), then the
        coordinator, then the shards. Does nothing for a detached cluster."""
        if self._detached:
            return
        self.stop_processes(self.grace if grace is None else grace)
        if self._started:
            self.state_file.unlink(missing_ok=True)

    def detach(self) -> Path:
        """Leave the processes running after this object is gone; ``stop_detached`` ends them."""
        self._write_state()
        for h in self.handles():
            h.close_log()
        self._detached = True
        return self.state_file

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- more shards and workers (killing and restarting them: LocalProcesses) ---
    def add_shard(self) -> ProcessHandle:
        """One more registering shard (``shard-N``), once the coordinator lists it live; jobs
        move onto it with ``client.scale_shards``."""
        if not self.register_shards:
            raise RuntimeError("add_shard needs LocalCluster(register_shards=True)")
        handle = self._start_server("shard", len(self.shard_handles), 0)
        self.shard_handles.append(handle)
        self._write_state()
        with self.client() as client:
            local_launch.wait_for_shards(
                client,
                len(self.shard_handles),
                self.start_timeout,
                self.shard_handles,
                self.state_dir / "logs",
            )
        return handle

    def add_worker(self, wait: bool = False, env: dict[str, str] | None = None) -> ProcessHandle:
        """Start one more worker; ``wait`` blocks until the coordinator counts it alive.
        ``env`` sets this worker's own variables (e.g. ``{"PSC_SLOWDOWN": "5"}``: a
        straggler)."""
        index = len(self.workers)
        handle = ProcessHandle(
            role="worker",
            index=index,
            argv=["-m", "pscluster.worker"],
            env={
                **self._env(local_launch.torch_threads_env(self.num_workers)),
                **(env or {}),
                **self._metrics_env(f"worker-{index}"),
            },
            log_path=self.state_dir / "logs" / f"worker-{index}.log",
        )
        handle.start()
        self.workers.append(handle)
        if not self._detached:
            self._write_state()
        if wait:
            alive = sum(1 for w in self.workers if w.alive())
            self.wait_for_workers(alive, self.start_timeout, [handle])
        return handle

    def wait_for_workers(
        self, count: int, timeout: float, watch: Sequence[ProcessHandle] = ()
    ) -> None:
        """Block until the coordinator reports ``count`` live workers.

        StartError after ``timeout`` seconds, or at once if a process in ``watch`` (the
        workers just started) exits meanwhile.
        """
        with self.client() as client:
            local_launch.wait_for_workers(client, count, timeout, watch, self.state_dir / "logs")

    def client(self) -> Client:
        """A Client connected to this cluster's coordinator (close it, or use ``with``)."""
        from pscluster.client.sdk import Client

        # The cluster's own PSC_* variables (its admin token, its TLS files), so that a cluster
        # started with ``env={"PSC_ADMIN_TOKEN": ...}`` is reachable without more setup.
        settings = processes.settings_from_env(
            self._env({}), coordinator=self.address, rpc_timeout_seconds=10.0
        )
        return Client(self.address, settings=settings)

    # --- internals ---
    def _start_server(self, role: str, index: int, port: int) -> ProcessHandle:
        def handle_on(bound: int) -> ProcessHandle:
            return self._server_handle(role, index, bound)

        return local_launch.start_server(handle_on, port, self.host, self.start_timeout, self.grace)

    def _server_handle(self, role: str, index: int, port: int) -> ProcessHandle:
        # Subclasses (fault-injection proxies, benchmarks) adjust a server's launch here.
        launch = local_launch.server_launch(
            role, index, self.host, port, self.state_dir, self.shard_addresses,
            durable=self.durable,
        )  # fmt: skip
        return ProcessHandle(
            role=role,
            index=index,
            argv=launch.argv,
            env={**self._env(launch.env), **self._metrics_env(launch.name)},
            log_path=self.state_dir / "logs" / f"{launch.name}.log",
            address=launch.address,
        )

    def _env(self, role_env: dict[str, str]) -> dict[str, str]:
        cluster_env = {
            "PSC_HOST": self.host,
            "PSC_STATE_DIR": str(self.state_dir),
            "PSC_SHARDS": ",".join(self.shard_addresses),
        }
        if self.coordinator is not None:
            cluster_env["PSC_COORDINATOR"] = self.address
        return processes.child_env(os.environ, {**cluster_env, **role_env, **self.extra_env})

    def _metrics_env(self, name: str) -> dict[str, str]:
        if not self.metrics:
            return {}
        port = processes.free_ports(self.host, 1)[0]
        self.metrics_ports[name] = port
        return {"PSC_METRICS_PORT": str(port)}

    def _write_state(self) -> None:
        address = self.coordinator.address if self.coordinator else None
        write_state(
            self.state_file, address, self.shard_addresses, self.handles(), self.metrics_urls
        )

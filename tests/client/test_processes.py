"""Starting, health-checking and stopping real child processes of a local cluster."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from pscluster.client import local, processes
from pscluster.client.processes import ProcessHandle, StartError
from tests.support import wait_for


def handle(
    tmp_path: Path, code: str, name: str = "worker", address: str | None = None
) -> ProcessHandle:
    return ProcessHandle(
        role=name,
        index=0,
        argv=["-c", code],
        env=processes.child_env({}, {}),
        log_path=tmp_path / "logs" / f"{name}.log",
        address=address,
    )


def wait_for_log(h: ProcessHandle, text: str, timeout: float = 20.0) -> None:
    wait_for(
        lambda: text in h.log_tail(),
        timeout,
        what=f"{text!r} in the log of {h.name}",
        context=h.log_tail,
    )


def test_free_ports_are_distinct() -> None:
    ports = processes.free_ports("127.0.0.1", 5)

    assert len(set(ports)) == 5
    assert all(0 < p < 65536 for p in ports)


def test_process_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    # Prepare
    h = handle(
        tmp_path, "import sys; print('config is wrong: PSC_X'); sys.exit(3)", "shard", "127.0.0.1:1"
    )

    # Execute
    h.start()
    with pytest.raises(StartError) as info:
        processes.wait_serving(h, timeout=20.0)
    h.close_log()

    # Assert
    message = str(info.value)
    assert "exited with code 3" in message
    assert "config is wrong: PSC_X" in message


def test_process_that_never_serves_times_out(tmp_path: Path, dead_address: str) -> None:
    h = handle(tmp_path, "import time; time.sleep(60)", "shard", dead_address)
    h.start()
    try:
        start = time.monotonic()
        with pytest.raises(StartError, match=r"was not serving on .* after 1\.5 s"):
            processes.wait_serving(h, timeout=1.5)
        assert time.monotonic() - start < 10
    finally:
        processes.stop_all([h], grace=1.0)
    assert not h.alive()


def test_a_real_shard_becomes_healthy_and_stops_on_sigterm(tmp_path: Path) -> None:
    # Prepare
    port = processes.free_ports("127.0.0.1", 1)[0]
    h = ProcessHandle(
        role="shard",
        index=0,
        argv=["-m", "pscluster.server", "--port", str(port)],
        env=processes.child_env({}, {"PSC_HOST": "127.0.0.1"}),
        log_path=tmp_path / "shard.log",
        address=f"127.0.0.1:{port}",
    )

    # Execute
    h.start()
    try:
        processes.wait_serving(h, timeout=60.0)
    finally:
        processes.stop_all([h], grace=10.0)

    # Assert: it exited by itself on SIGTERM, within the grace period.
    assert h.returncode() is not None
    assert h.returncode() != -signal.SIGKILL


def test_stop_all_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    h = handle(
        tmp_path,
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    )
    h.start()
    wait_for_log(h, "ready")

    start = time.monotonic()
    processes.stop_all([h], grace=0.5)

    assert h.returncode() == -signal.SIGKILL
    assert time.monotonic() - start < 10


def test_stop_detached_stops_recorded_processes_and_forgets_them(tmp_path: Path) -> None:
    # Prepare: a process recorded as a detached cluster would record it.
    h = handle(tmp_path, "import time  # pscluster worker stand-in\ntime.sleep(60)")
    h.start()
    record = {
        "address": "127.0.0.1:1",
        "processes": [{"name": "worker-0", "role": "worker", "pid": h.pid, "address": None}],
    }
    (tmp_path / local.STATE_FILE).write_text(json.dumps(record))
    assert local.read_state(tmp_path) is not None

    # Execute
    stopped = local.stop_detached(tmp_path, grace=5.0)

    # Assert
    assert stopped == ["worker-0"]
    assert h.wait(5.0)
    assert not (tmp_path / local.STATE_FILE).exists()
    assert local.stop_detached(tmp_path) == []
    h.close_log()


def test_state_of_a_dead_cluster_is_dropped(tmp_path: Path) -> None:
    h = handle(tmp_path, "pass  # pscluster")
    h.start()
    h.wait(20.0)
    record = {"processes": [{"name": "worker-0", "role": "worker", "pid": h.pid}]}
    (tmp_path / local.STATE_FILE).write_text(json.dumps(record))

    assert local.read_state(tmp_path) is None
    assert not (tmp_path / local.STATE_FILE).exists()
    h.close_log()

"""The fault proxy itself: it forwards, delays, and cuts replies when told to."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults.proxy import FaultProxy, Faults


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def roundtrip(address: str, payload: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    """What came back; b"" if the connection was closed (or reset) without a reply."""
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(payload)
            return s.recv(4096)
    except ConnectionError:
        return b""


def test_a_clean_proxy_forwards_both_ways_with_its_latency(echo: str) -> None:
    with FaultProxy(echo, Faults(latency=0.05)) as proxy:
        started = time.monotonic()
        assert roundtrip(proxy.address, b"ping") == b"ping"
        assert time.monotonic() - started >= 0.04  # at least half the latency, twice
        assert (proxy.counters.bytes_up, proxy.counters.bytes_down) == (4, 4)


def test_a_cut_reply_reached_the_server_but_not_the_client(echo: str) -> None:
    with FaultProxy(echo, Faults(cut_reply_rate=1.0)) as proxy:
        assert roundtrip(proxy.address, b"ping") == b""  # closed without the reply
        assert proxy.counters.bytes_up == 4 and proxy.counters.replies_cut == 1


def test_a_paused_proxy_refuses_connections_until_resumed(echo: str) -> None:
    with FaultProxy(echo) as proxy:
        proxy.pause()
        assert roundtrip(proxy.address, b"ping") == b""
        proxy.resume()
        assert roundtrip(proxy.address, b"ping") == b"ping"
        assert proxy.counters.refused == 1


@pytest.mark.parametrize("field,value", [("latency", -1.0), ("drop_rate", 1.5)])
def test_bad_fault_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Faults(**{field: value})

"""A TCP proxy that makes a network flaky: latency, dropped connections, lost replies.

Put in front of a server (clients dial the proxy, the proxy dials the server), it forwards
bytes both ways, one thread per direction per connection, and injects faults:

- ``latency``: each forwarded read waits this long (+-50 %), in both directions;
- ``drop_rate``: after each forwarded read, the connection is closed with this probability;
- ``cut_reply_rate``: a read from the server (a reply) is thrown away and the connection
  closed with this probability; the request before it did reach the server, so the client
  sees a failed call that was in fact carried out, and must retry it (a push's retry must
  then be recognised as a duplicate, not applied twice);
- :meth:`FaultProxy.pause` / :meth:`FaultProxy.resume`: refuse every connection for a while.

gRPC speaks HTTP/2 over one connection for many calls, so a cut fails every call in flight
on it; that is what a real broken connection does too. Counters say what was injected.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)
_READ_BYTES = 64 * 1024


@dataclass
class Faults:
    latency: float = 0.0
    drop_rate: float = 0.0
    cut_reply_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {self.latency}")
        for name in ("drop_rate", "cut_reply_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {rate}")


@dataclass
class Counters:
    connections: int = 0
    refused: int = 0
    dropped: int = 0  # connections closed at random
    replies_cut: int = 0  # connections closed with a reply thrown away
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client


class FaultProxy:
    """Listens on ``host``:port 0 at construction; :attr:`upstream` may be set later (the
    server's address is often known only after the proxy's has been handed out)."""

    def __init__(
        self,
        upstream: str = "",
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        seed: int = 0,
    ) -> None:
        self.upstream = upstream
        self.faults = faults or Faults()
        self.counters = Counters()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._paused = False
        self._stop = threading.Event()
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)  # so that close() is noticed without a connection
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    # --- control ---
    def pause(self) -> None:
        """Cut every connection and refuse new ones until :meth:`resume`."""
        with self._lock:
            self._paused = True
            sockets = list(self._sockets)
        for s in sockets:
            _close(s)

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            _close(s)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- forwarding ---
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refuse = self._paused or not self.upstream
                if refuse:
                    self.counters.refused += 1
            if refuse:
                _close(client)
                continue
            host, port = self.upstream.rsplit(":", 1)
            try:
                server = socket.create_connection((host, int(port)), timeout=5)
            except OSError as e:
                log.info("proxy: upstream %s unreachable: %s", self.upstream, e)
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self.counters.connections += 1
                self._sockets.update((client, server))
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up), name="fault-proxy-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(_READ_BYTES)
                if not data:
                    break
                faults = self.faults
                with self._lock:
                    delay = faults.latency * self._random.uniform(0.5, 1.5)
                    cut = not up and self._random.random() < faults.cut_reply_rate
                    drop = self._random.random() < faults.drop_rate
                    if cut:
                        self.counters.replies_cut += 1
                    elif drop:
                        self.counters.dropped += 1
                if cut:
                    break  # the reply is lost; the request went through
                if delay:
                    self._stop.wait(delay)
                # Counted as they are handed on, not after: a peer that has read them (and a
                # test that then looks) must find them counted.
                with self._lock:
                    if up:
                        self.counters.bytes_up += len(data)
                    else:
                        self.counters.bytes_down += len(data)
                dst.sendall(data)
                if drop:
                    break
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.difference_update((src, dst))
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    """Close at once (linger 0: a reset, as a broken link gives, not an orderly close)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.shutdown(socket.SHUT_RDWR)  # wakes the other direction's thread blocked in recv
    except OSError:
        pass
    with contextlib.suppress(OSError):
        s.close()

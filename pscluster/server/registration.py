"""A shard announces itself to the coordinator: its stable id and the address to dial.

Started when the shard is given the coordinator's address (PSC_COORDINATOR or
``--coordinator``); without one the shard only serves, for a coordinator that lists it in
PSC_SHARDS. The announcement is repeated every heartbeat: it is the shard's liveness, and it
is how a restarted coordinator (which knows the shards from its store, but not whether they
are up) learns again that the shard is there. It runs on its own thread and never blocks the
shard's serving: a coordinator that is down only delays the next announcement.
"""

from __future__ import annotations

import logging
import threading

import grpc

from pscluster.config import Settings
from pscluster.transport.channel import open_channel
from pscluster.transport.retry import period
from pscluster.v1 import coordinator_pb2 as co_pb2
from pscluster.v1 import coordinator_pb2_grpc as co_grpc

log = logging.getLogger(__name__)

# Longest one announcement may take: a coordinator that does not answer in this is retried
# at the next beat, not waited on.
_CALL_SECONDS = 5.0
_LEAVE_SECONDS = 2.0


def registers(settings: Settings) -> bool:
    """Whether this shard registers: its coordinator's address was given (not the default)."""
    return "coordinator" in settings.model_fields_set


class Registrar:
    """Registers the shard now and every heartbeat the coordinator asks for, until stopped."""

    def __init__(self, settings: Settings, shard_id: str, address: str) -> None:
        self.shard_id = shard_id
        self.address = address
        self.coordinator = settings.coordinator
        self.registered = threading.Event()  # set by the first accepted announcement
        self._interval = settings.heartbeat_seconds
        self._channel = open_channel(settings.coordinator, settings)
        self._stub = co_grpc.CoordinatorStub(self._channel)  # type: ignore[no-untyped-call]
        self._stop = threading.Event()
        self._last_problem = ""
        self._thread = threading.Thread(target=self._run, name="shard-registrar", daemon=True)

    def start(self) -> Registrar:
        self._thread.start()
        return self

    def stop(self, leave: bool = True) -> None:
        """Stop announcing; ``leave`` tells the coordinator at once, so that the id is free for
        the shard's successor without waiting out the coordinator's timeout. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=_CALL_SECONDS + 1)
        if leave and self.registered.is_set():
            try:
                # Briefly: a shard stopping must not wait on a coordinator that is gone too.
                self._announce(leaving=True, timeout=_LEAVE_SECONDS)
            except grpc.RpcError as e:
                log.info("could not tell the coordinator this shard leaves: %s", e)
        self._channel.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self._announce(leaving=False)
            except grpc.RpcError as e:
                self._failed(e)
            else:
                self._accepted(reply)
            self._stop.wait(period(self._interval))

    def _announce(self, leaving: bool, timeout: float = _CALL_SECONDS) -> co_pb2.RegisterShardReply:
        request = co_pb2.RegisterShardRequest(
            shard_id=self.shard_id, address=self.address, leaving=leaving
        )
        reply: co_pb2.RegisterShardReply = self._stub.RegisterShard(request, timeout=timeout)
        return reply

    def _accepted(self, reply: co_pb2.RegisterShardReply) -> None:
        if reply.heartbeat_seconds > 0:
            self._interval = reply.heartbeat_seconds
        if not self.registered.is_set() or self._last_problem:
            moved = f" (it was at {reply.previous_address})" if reply.previous_address else ""
            log.info(
                "registered as shard %s at %s with the coordinator %s%s",
                self.shard_id,
                self.address,
                self.coordinator,
                moved,
            )
        self._last_problem = ""
        self.registered.set()

    def _failed(self, error: grpc.RpcError) -> None:
        code = error.code()  # type: ignore[attr-defined]
        problem = f"{code.name}: {error.details()}"  # type: ignore[attr-defined]
        if problem == self._last_problem:
            return  # said once; the state has not changed
        self._last_problem = problem
        # A coordinator not up yet (or restarting) is routine; a refusal is the operator's.
        level = logging.INFO if code == grpc.StatusCode.UNAVAILABLE else logging.ERROR
        log.log(
            level,
            "shard %s at %s could not register with %s (%s); retrying every %.1f s",
            self.shard_id,
            self.address,
            self.coordinator,
            problem,
            self._interval,
        )

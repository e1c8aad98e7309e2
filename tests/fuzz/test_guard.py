"""DecodeGuard on small servers built here: undecodable requests get INVALID_ARGUMENT naming the
expected message, reach no servicer, and leave well-formed calls alone; and the real shard and
coordinator servicers behind the guard answer every RPC's garbage the same way."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pscluster.coordinator.app import Coordinator
from pscluster.coordinator.servicer import CoordinatorServicer
from pscluster.server.servicer import ParameterServerServicer, add_to_server
from pscluster.server.shard import Shard
from pscluster.transport import framing
from pscluster.transport.errors import grpc_errors
from pscluster.transport.guard import DecodeGuard
from pscluster.v1 import coordinator_pb2_grpc as co_grpc
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from tests.fuzz.conftest import (
    UNGUARDED_DETAILS,
    CoordinatorUnderTest,
    ShardUnderTest,
    fuzz,
    fuzz_settings,
)
from tests.fuzz.raw import PS, Raw
from tests.support import COORDINATOR_RPCS, SHARD_RPCS, Rpc

# Bytes no message parses: a tag whose varint never ends.
GARBAGE = b"\xff\xff\xff\xff\xff"
# A length-delimited field 1 that announces more bytes than follow.
TRUNCATED = b"\x0a\x05ab"
# Field 1 as invalid UTF-8: undecodable where field 1 is a string (job_id, worker_id, ...).
INVALID_UTF8 = b"\x0a\x02\xff\xfe"
STATS = ps_pb2.JobStatsRequest


class Recorder:
    """Fake handlers under the real ParameterServer's method names (so the guard finds the
    message names in the descriptor pool), recording what reached them."""

    def __init__(self) -> None:
        self.seen: list[object] = []
        self.applied = 0
        self.lock = threading.Lock()

    def note(self, item: object) -> None:
        with self.lock:
            self.seen.append(item)

    def unary(self, request: ps_pb2.JobStatsRequest, context: grpc.ServicerContext) -> bytes:
        self.note(request)
        return request.job_id.encode()

    def server_stream(
        self, request: ps_pb2.JobStatsRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        self.note(request)
        yield b"one"
        yield b"two"

    @grpc_errors
    def push(self, requests: Iterator[object], context: grpc.ServicerContext) -> bytes:
        items = list(requests)  # a push acts only on a stream it read in full
        for item in items:
            self.note(item)
        with self.lock:
            self.applied += 1
        return str(len(items)).encode()

    def swallowing(self, requests: Iterator[object], context: grpc.ServicerContext) -> bytes:
        try:
            for item in requests:
                self.note(item)
        except Exception:  # a careless servicer that answers anyway
            pass
        return b"fine"

    def bidi(self, requests: Iterator[STATS], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            self.note(request)
            yield request.job_id.encode()


def _identity(reply: bytes) -> bytes:
    return reply


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _serve(recorder: Recorder, *, guarded: bool) -> tuple[grpc.Server, Raw]:
    handlers = {
        "GetJobStats": grpc.unary_unary_rpc_method_handler(
            recorder.unary, STATS.FromString, _identity
        ),
        "Pull": grpc.unary_stream_rpc_method_handler(
            recorder.server_stream, STATS.FromString, _identity
        ),
        "Push": grpc.stream_unary_rpc_method_handler(
            recorder.push, framing.parser(ps_pb2.PushChunk.FromString), _identity
        ),
        "InitJob": grpc.stream_unary_rpc_method_handler(
            recorder.swallowing, framing.parser(ps_pb2.InitJobChunk.FromString), _identity
        ),
    }
    bidi = {"Echo": grpc.stream_stream_rpc_method_handler(recorder.bidi, STATS.FromString)}
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[DecodeGuard()] if guarded else [],
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("pscluster.v1.ParameterServer", handlers),
            grpc.method_handlers_generic_handler("fuzz.Bidi", bidi),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, Raw(f"127.0.0.1:{port}")


@pytest.fixture
def guarded(recorder: Recorder) -> Iterator[Raw]:
    server, raw = _serve(recorder, guarded=True)
    yield raw
    raw.close()
    server.stop(0)


def _push_stream(*tail: bytes) -> list[bytes]:
    header = ps_pb2.PushChunk(header=ps_pb2.PushHeader(job_id="j", worker_id="w", length=1))
    return [header.SerializeToString(), framing.frame(b"\0\0\0\0"), *tail]


def test_unary_garbage_is_invalid_argument_and_reaches_no_handler(
    guarded: Raw, recorder: Recorder
) -> None:
    # Execute
    outcome = guarded.unary(PS + "GetJobStats", GARBAGE)
    # Assert
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.details.startswith("request is not a valid JobStatsRequest: ")
    assert recorder.seen == []


def test_well_formed_calls_pass_through(guarded: Raw, recorder: Recorder) -> None:
    request = STATS(job_id="j7").SerializeToString()
    assert guarded.unary(PS + "GetJobStats", request).replies == [b"j7"]
    assert guarded.server_stream(PS + "Pull", request).replies == [b"one", b"two"]
    assert guarded.client_stream(PS + "Push", _push_stream()).replies == [b"2"]
    bidi = guarded.channel.stream_stream("/fuzz.Bidi/Echo", None, None)
    assert list(bidi(iter([request, request]), timeout=10)) == [b"j7", b"j7"]
    assert recorder.applied == 1


def test_server_stream_garbage_is_invalid_argument(guarded: Raw, recorder: Recorder) -> None:
    outcome = guarded.server_stream(PS + "Pull", TRUNCATED)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "JobStatsRequest" in outcome.details
    assert outcome.replies == [] and recorder.seen == []


def test_garbage_mid_stream_refuses_the_whole_stream(guarded: Raw, recorder: Recorder) -> None:
    # Prepare: a framed custom deserializer (the shard's), garbage after good chunks.
    requests = _push_stream(GARBAGE, framing.frame(b"more"))
    # Execute
    outcome = guarded.client_stream(PS + "Push", requests)
    # Assert: INVALID_ARGUMENT (not INTERNAL from @grpc_errors), and nothing was applied.
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert outcome.details.startswith("request is not a valid PushChunk: ")
    assert recorder.applied == 0


def test_garbage_first_in_stream(guarded: Raw, recorder: Recorder) -> None:
    outcome = guarded.client_stream(PS + "Push", [TRUNCATED])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert recorder.applied == 0 and recorder.seen == []


def test_a_servicer_that_swallows_the_error_is_overruled(guarded: Raw, recorder: Recorder) -> None:
    outcome = guarded.client_stream(PS + "InitJob", [GARBAGE])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "InitJobChunk" in outcome.details


def test_bidi_garbage_names_the_deserializers_message(guarded: Raw, recorder: Recorder) -> None:
    # "fuzz.Bidi" is in no descriptor pool: the name comes from STATS.FromString's class.
    bidi = guarded.channel.stream_stream("/fuzz.Bidi/Echo", None, None)
    good = STATS(job_id="a").SerializeToString()
    replies: list[bytes] = []
    with pytest.raises(grpc.RpcError) as raised:
        for reply in bidi(iter([good, GARBAGE, good]), timeout=10):
            replies.append(reply)
    assert isinstance(raised.value, grpc.Call)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "JobStatsRequest" in (raised.value.details() or "")
    assert replies == [b"a"]


def test_unknown_methods_stay_unimplemented(guarded: Raw) -> None:
    assert guarded.unary(PS + "NoSuchMethod", b"").code == grpc.StatusCode.UNIMPLEMENTED


def test_without_the_guard_grpc_answers_internal(recorder: Recorder) -> None:
    """Why the guard exists: this is what every server answers to garbage without it."""
    server, raw = _serve(recorder, guarded=False)
    try:
        outcome = raw.unary(PS + "GetJobStats", GARBAGE)
        assert outcome.code == grpc.StatusCode.INTERNAL
        assert outcome.details == UNGUARDED_DETAILS
    finally:
        raw.close()
        server.stop(0)


# --- the real servicers behind the guard: what the servers answer once it is wired ---

# Every RPC of both services, as the protos declare them.
EVERY_RPC = sorted([*SHARD_RPCS.values(), *COORDINATOR_RPCS.values()], key=lambda r: r.path)
NO_STRING_FIELDS = ("ListJobs", "ClusterStatus", "ListShards")  # any bytes as field 1: unknown


@pytest.fixture(scope="module")
def guarded_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Raw]:
    """The real shard and coordinator servicers on one server with the guard."""
    tmp: Path = tmp_path_factory.mktemp("guarded")
    settings = fuzz_settings(tmp)
    coordinator = Coordinator(settings)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[DecodeGuard()])
    add_to_server(ParameterServerServicer(Shard(), settings), server)  # registered methods too
    co_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(coordinator), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    raw = Raw(f"127.0.0.1:{port}")
    yield raw
    raw.close()
    server.stop(0)
    coordinator.close()


@pytest.mark.parametrize("payload", [GARBAGE, TRUNCATED, INVALID_UTF8])
def test_every_rpc_answers_garbage_with_invalid_argument(
    guarded_services: Raw, payload: bytes
) -> None:
    for rpc in EVERY_RPC:
        if rpc.name in NO_STRING_FIELDS and payload == INVALID_UTF8:
            continue
        code = guarded_services.call(rpc, [payload]).code
        assert code == grpc.StatusCode.INVALID_ARGUMENT, rpc.path


@fuzz(150)
@given(rpc=st.sampled_from(EVERY_RPC), payload=st.binary())
def test_random_bytes_never_internal_behind_the_guard(
    guarded_services: Raw, rpc: Rpc, payload: bytes
) -> None:
    code = guarded_services.call(rpc, [payload]).code
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (rpc.path, payload)


def test_end_to_end_undecodable(shard: ShardUnderTest, coordinator: CoordinatorUnderTest) -> None:
    """The servers as serve() builds them answer garbage with INVALID_ARGUMENT."""
    for rpc in SHARD_RPCS.values():
        code = shard.raw.call(rpc, [GARBAGE]).code
        assert code == grpc.StatusCode.INVALID_ARGUMENT, rpc.name
    for rpc in COORDINATOR_RPCS.values():
        code = coordinator.raw.call(rpc, [GARBAGE]).code
        assert code == grpc.StatusCode.INVALID_ARGUMENT, rpc.name

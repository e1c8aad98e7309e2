"""Hand-framed data chunks are exactly what protobuf would write and read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pscluster.transport import framing
from pscluster.v1 import parameter_server_pb2 as ps_pb2


@given(st.binary(max_size=70_000))
def test_frame_is_the_protobuf_serialization_and_parses_back(payload: bytes) -> None:
    raw = framing.frame(payload)
    assert raw == ps_pb2.PushChunk(data=payload).SerializeToString()
    assert ps_pb2.PullChunk.FromString(raw).data == payload
    view = framing.data_of(raw)
    assert view is not None and bytes(view) == payload


def test_control_messages_and_odd_encodings_go_to_protobuf() -> None:
    header = ps_pb2.PushChunk(header=ps_pb2.PushHeader(job_id="j", length=3)).SerializeToString()
    assert framing.data_of(header) is None
    assert framing.data_of(b"") is None
    assert framing.data_of(b"\x12\x05abc") is None  # announces more than it carries
    assert framing.data_of(b"\x12\x01ab") is None  # data followed by something else
    assert framing.data_of(b"\x12\x80") is None  # an unfinished varint
    parse = framing.parser(ps_pb2.PushChunk.FromString)
    message = parse(header)
    assert isinstance(message, ps_pb2.PushChunk) and message.header.length == 3


def test_frames_split_a_buffer_into_chunks() -> None:
    payload = memoryview(bytes(range(256)) * 10)
    pieces = [framing.data_of(f) for f in framing.frames(payload, 1000)]
    assert [len(p) for p in pieces if p is not None] == [1000, 1000, 560]
    assert b"".join(bytes(p) for p in pieces if p is not None) == bytes(payload)
    assert framing.serializer(b"raw") == b"raw"

"""A push's payload sent in buckets from the last to the first (pscluster.worker.overlap) is
put back in order exactly, whatever the sizes; anything else is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pscluster.errors import InvalidArgument
from pscluster.transport import wire


def last_first(payload: bytes, bucket: int, chunk: int) -> list[bytes]:
    """The chunks a worker sends: each bucket in chunks of at most ``chunk``, last first."""
    out = []
    for start in reversed(range(0, len(payload), bucket)):
        part = payload[start : start + bucket]
        out += [part[i : i + chunk] for i in range(0, len(part), chunk)]
    return out


@given(
    size=st.integers(0, 5000),
    bucket=st.integers(1, 700),
    chunk=st.integers(1, 900),
)
def test_buckets_last_first_are_put_back_in_order(size: int, bucket: int, chunk: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    received = bytearray(size)

    wire.fill_buckets_last_first(received, last_first(payload, bucket, chunk), bucket)

    assert bytes(received) == payload


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([b"\x00" * 4, b"\x00" * 4], "ended inside the bucket at byte 0"),
        ([b"\x00" * 4, b"\x00" * 6, b"\x00" * 6], "spans the end of the bucket [0, 8)"),
        ([b"\x00" * 4, b"\x00" * 8, b"\x00" * 8, b"\x00"], "more than the announced 12"),
    ],
)
def test_a_stream_that_does_not_fit_its_buckets_is_refused(
    chunks: list[bytes], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace(")", r"\)")):
        wire.fill_buckets_last_first(bytearray(12), chunks, 8)

"""How many bytes a push may carry and what it counts: checked on the header, before any
payload is received, so an oversized announcement costs the shard no memory."""

from __future__ import annotations

from pscluster.compression import Compressor
from pscluster.errors import InvalidArgument
from pscluster.server.domain import PushHeader
from pscluster.transport import wire


def check_payload_size(codec: Compressor, header: PushHeader) -> None:
    """InvalidArgument unless ``header.payload_bytes`` can hold a valid payload."""
    if header.codec == "none":
        expected = header.length * wire.itemsize(header.dtype)
        if header.payload_bytes not in (0, expected):
            raise InvalidArgument(
                f"push announces {header.payload_bytes} payload bytes; {header.length} "
                f"values of its dtype are {expected} (or send 0)"
            )
        return
    limit = codec.max_payload_bytes(header.length)
    if not 1 <= header.payload_bytes <= limit:
        raise InvalidArgument(
            f"push announces {header.payload_bytes} payload bytes; a {header.codec} payload "
            f"of {header.length} values has 1..{limit}"
        )


def payload_bytes(header: PushHeader) -> int:
    """The bytes a (validated) push put on the wire."""
    if header.codec == "none":
        return header.length * wire.itemsize(header.dtype)
    return header.payload_bytes

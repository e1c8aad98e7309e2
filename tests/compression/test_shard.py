"""Compressed pushes through a real shard over a socket: applied as decoded, counted in bytes,
and refused (INVALID_ARGUMENT, parameters untouched) when corrupt or of another codec."""

from __future__ import annotations

import struct

import grpc
import pytest
import torch

from pscluster.compression import NAMES, CompressionSettings, make_compressor
from pscluster.v1 import common_pb2
from tests.compression.conftest import LR, CodecShard

N = 64


def start(shard: CodecShard, job_id: str, name: str, ratio: float = 0.1) -> torch.Tensor:
    values = torch.linspace(-1, 1, N)
    shard.init_job(job_id, values, common_pb2.CompressionConfig(name=name, ratio=ratio))
    return values


@pytest.mark.parametrize("name", NAMES)
def test_compressed_push_applies_what_decodes(shard: CodecShard, name: str) -> None:
    # Prepare
    values = start(shard, f"job-{name}", name)
    codec = make_compressor(CompressionSettings(name=name, ratio=0.1))
    grad = torch.randn(N, generator=torch.Generator().manual_seed(3))
    payload = bytes(codec.compress(grad, codec.new_state(N), 0).payload)
    # Execute
    reply = shard.push(f"job-{name}", name, payload, N)
    # Assert
    expected = values - LR * codec.decompress(payload, N)
    assert torch.allclose(shard.values(f"job-{name}"), expected, atol=1e-6)
    stats = shard.stats(f"job-{name}")
    assert reply.version == 1 and stats.pushes_applied == 1
    assert stats.bytes_pushed == len(payload)
    assert stats.bytes_pushed_raw == 4 * N


def test_topk_push_is_counted_at_its_compressed_size(shard: CodecShard) -> None:
    start(shard, "job", "topk", ratio=0.05)
    codec = make_compressor(CompressionSettings(name="topk", ratio=0.05))
    for _ in range(3):
        payload = bytes(codec.compress(torch.randn(N), codec.new_state(N), 0).payload)
        shard.push("job", "topk", payload, N)
    stats = shard.stats("job")
    assert stats.bytes_pushed == 3 * (4 + 8 * 4)  # k = ceil(0.05 * 64) = 4 entries
    assert stats.bytes_pushed_raw == 3 * 4 * N


def _ok_int8() -> bytes:
    return struct.pack("<I", 16) + struct.pack("<4f", 0.1, 0.1, 0.1, 0.1) + b"\1" * N


CORRUPT = [
    ("topk", struct.pack("<I", 1) + struct.pack("<If", N, 1.0), "below 64"),
    ("topk", struct.pack("<I", 2) + struct.pack("<IIff", 5, 5, 1.0, 1.0), "increasing"),
    ("topk", struct.pack("<I", 3) + struct.pack("<II", 1, 2), "need"),
    ("topk", struct.pack("<I", 65) + b"\0" * 8, "announces 65 entries"),
    ("dgc", struct.pack("<I", 2) + struct.pack("<IIff", 9, 3, 1.0, 1.0), "increasing"),
    ("int8", _ok_int8()[:-5], "need"),
    (
        "int8",
        struct.pack("<I", 16) + struct.pack("<4f", 0.1, float("nan"), 0.1, 0.1) + b"\1" * N,
        "NaN",
    ),
    ("int8", struct.pack("<I", 0) + b"\1" * N, "chunk size 0"),
    ("fp16", b"\0" * (2 * N - 2), "expected 64 values"),
    ("bf16", b"\0" * (2 * N + 2), "has 1..128"),
]


@pytest.mark.parametrize(("name", "payload", "message"), CORRUPT)
def test_corrupt_payload_is_refused_and_changes_nothing(
    shard: CodecShard, name: str, payload: bytes, message: str
) -> None:
    # Prepare
    start(shard, "job", name)
    before = shard.stats("job").checksum
    # Execute
    with pytest.raises(grpc.RpcError) as err:
        shard.push("job", name, payload, N)
    # Assert
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    stats = shard.stats("job")
    assert stats.checksum == before and stats.version == 0
    assert stats.pushes_rejected["invalid"] == 1
    # The same job still takes a good push afterwards.
    codec = make_compressor(CompressionSettings(name=name, ratio=0.1))
    good = bytes(codec.compress(torch.ones(N), codec.new_state(N), 0).payload)
    assert shard.push("job", name, good, N).version == 1


@pytest.mark.parametrize(
    ("codec", "payload_bytes", "message"),
    [
        ("fp16", None, "codec 'fp16' but job job was set up for 'topk'"),
        ("none", None, "codec 'none' but job job was set up for 'topk'"),
        ("zstd", None, "codec 'zstd'"),
        ("topk", 0, "payload bytes"),
        ("topk", 4 + 8 * N + 1, "payload bytes"),
        ("topk", 100, "stream ended after 12 of the announced 100 bytes"),
    ],
)
def test_push_with_another_codec_or_size_is_refused(
    shard: CodecShard, codec: str, payload_bytes: int | None, message: str
) -> None:
    start(shard, "job", "topk")
    before = shard.stats("job").checksum
    payload = struct.pack("<I", 1) + struct.pack("<If", 0, 1.0)
    with pytest.raises(grpc.RpcError) as err:
        shard.push("job", codec, payload, N, payload_bytes=payload_bytes)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    stats = shard.stats("job")
    assert stats.checksum == before and stats.pushes_rejected["invalid"] == 1


def test_nan_values_in_a_sparse_payload_are_refused_as_nonfinite(shard: CodecShard) -> None:
    start(shard, "job", "topk")
    before = shard.stats("job").checksum
    payload = struct.pack("<I", 1) + struct.pack("<If", 3, float("nan"))
    with pytest.raises(grpc.RpcError) as err:
        shard.push("job", "topk", payload, N)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stats = shard.stats("job")
    assert stats.checksum == before and stats.pushes_rejected["nonfinite"] == 1


def test_unknown_codec_in_the_job_config_is_refused(shard: CodecShard) -> None:
    with pytest.raises(grpc.RpcError) as err:
        start(shard, "job", "zstd")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "compression.name 'zstd' is unknown" in (err.value.details() or "")

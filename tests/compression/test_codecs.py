"""Property tests of every codec: round trips, error bounds, top-k, error feedback, DGC."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pscluster.compression import NAMES, CompressionSettings, make_compressor
from pscluster.compression.dgc import DeepGradientCompression
from pscluster.compression.fp16 import FP16_MAX
from pscluster.compression.int8 import Int8
from pscluster.compression.registry import codec_name, parse_settings
from pscluster.compression.topk import TopK
from pscluster.errors import InvalidArgument
from pscluster.v1 import common_pb2

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32)
GRADIENTS = arrays(np.float32, st.integers(1, 300), elements=FINITE)
NONEMPTY = arrays(np.float32, st.integers(1, 300), elements=FINITE)
MODERATE = arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e3, 1e3, width=32))
RATIOS = st.floats(0.001, 1.0)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy())


def roundtrip(name: str, g: torch.Tensor) -> torch.Tensor:
    codec = make_compressor(CompressionSettings(name=name))
    encoded = codec.compress(g, codec.new_state(g.numel()), 0)
    assert len(encoded.payload) <= codec.max_payload_bytes(g.numel())
    return codec.decompress(bytes(encoded.payload), g.numel())


@settings(deadline=None)  # shared 2-core machine: timings vary widely
@given(GRADIENTS)
def test_none_round_trips_exactly(a: np.ndarray) -> None:
    g = t(a)
    assert torch.equal(roundtrip("none", g), g)


@settings(deadline=None)  # shared 2-core machine: timings vary widely
@given(GRADIENTS)
def test_fp16_within_half_precision(a: np.ndarray) -> None:
    g = t(a).double()
    out = roundtrip("fp16", t(a)).double()
    clamped = g.clamp(-FP16_MAX, FP16_MAX)
    bound = torch.maximum(clamped.abs() * 2**-11, torch.full_like(g, 2**-25))
    assert bool(((out - clamped).abs() <= bound).all())
    assert bool(torch.isfinite(out).all())


@settings(deadline=None)  # shared 2-core machine: timings vary widely
@given(GRADIENTS)
def test_bf16_within_bfloat_precision(a: np.ndarray) -> None:
    g = t(a).double()
    out = roundtrip("bf16", t(a)).double()
    bound = torch.maximum(g.abs() * 2**-8, torch.full_like(g, 2**-133))
    assert bool(((out - g).abs() <= bound).all())
    assert bool(torch.isfinite(out).all())


@settings(deadline=None)  # shared 2-core machine: timings vary widely
@given(MODERATE, st.integers(1, 64))
def test_int8_within_one_scale_per_chunk(a: np.ndarray, chunk: int) -> None:
    g = t(a)
    codec = Int8(chunk=chunk, seed=0)
    out = codec.decompress(codec.compress(g, {}, 0).payload, g.numel())
    for start in range(0, g.numel(), chunk):
        part = g[start : start + chunk].double()
        scale = float(part.abs().max()) / 127
        err = (out[start : start + chunk].double() - part).abs()
        assert float(err.max()) <= scale * (1 + 1e-5) + 1e-30


def test_int8_rounding_is_unbiased() -> None:
    # Stochastic rounding: the mean of many encodings approaches the value itself.
    g = torch.tensor([1.0, 0.3, -0.77, 0.011])
    codec = Int8(chunk=4, seed=1)
    mean = torch.stack([codec.decompress(codec.compress(g, {}, 0).payload, 4) for _ in range(4000)])
    assert torch.allclose(mean.mean(0), g, atol=2e-3)


@settings(deadline=None)  # shared 2-core machine: timings vary widely
@given(NONEMPTY, RATIOS)
def test_topk_keeps_exactly_the_k_largest(a: np.ndarray, ratio: float) -> None:
    g = t(a)
    codec = TopK(ratio)
    out = codec.decompress(codec.compress(g, codec.new_state(g.numel()), 0).payload, g.numel())
    k = min(g.numel(), max(1, math.ceil(ratio * g.numel())))
    kept = out != 0
    # Entries that are 0 in g may or may not be "kept"; every nonzero kept one is exact.
    assert torch.equal(out[kept], g[kept])
    assert int(kept.sum()) <= k
    dropped = g.abs()[~kept]
    if kept.any() and dropped.numel():
        assert float(out.abs()[kept].min()) >= float(dropped.max())
    # The payload announces exactly k entries.
    assert (
        struct.unpack_from("<I", codec.compress(g, codec.new_state(g.numel()), 0).payload)[0] == k
    )


@settings(deadline=None)  # shared 2-core machine: timings vary widely
@given(st.lists(MODERATE, min_size=1, max_size=4), RATIOS)
def test_error_feedback_conserves_the_sum(grads: list[np.ndarray], ratio: float) -> None:
    n = grads[0].size
    codec = TopK(ratio)
    state = codec.new_state(n)
    for a in grads:
        g = t(np.resize(a, n))
        old = state["residual"].clone()
        encoded = codec.compress(g, state, 0)
        assert torch.equal(state["residual"], old)  # the caller's state is untouched
        sent = codec.decompress(encoded.payload, n)
        assert torch.equal(sent + encoded.state["residual"], g + old)
        state = encoded.state


@settings(deadline=None)  # shared 2-core machine: timings vary widely
@given(st.lists(MODERATE, min_size=1, max_size=4), RATIOS, st.floats(0.0, 0.99))
def test_dgc_momentum_correction_and_masking(
    grads: list[np.ndarray], ratio: float, momentum: float
) -> None:
    n = grads[0].size
    codec = DeepGradientCompression(ratio, momentum=momentum)
    state = codec.new_state(n)
    for a in grads:
        g = t(np.resize(a, n))
        u = state["momentum"] * momentum + g
        v = state["accumulated"] + u
        encoded = codec.compress(g, state, epoch=5)
        sent = codec.decompress(encoded.payload, n)
        new_u, new_v = encoded.state["momentum"], encoded.state["accumulated"]
        # What is sent plus what stays accumulated is exactly v = v_old + u.
        assert torch.equal(sent + new_v, v)
        # Momentum-factor masking: where an entry was sent, its momentum and accumulation reset.
        mask = sent != 0
        assert bool((new_u[mask] == 0).all()) and bool((new_v[mask] == 0).all())
        assert torch.equal(new_u[~mask], u[~mask])
        assert int((sent != 0).sum()) <= max(1, math.ceil(ratio * n))
        state = encoded.state


@settings(deadline=None)  # shared 2-core machine: timings vary widely
@given(NONEMPTY, st.floats(0.01, 100.0))
def test_dgc_clips_the_whole_gradient(a: np.ndarray, clip: float) -> None:
    g = t(a).clamp(-1e15, 1e15)
    out = DeepGradientCompression(0.1, clip_norm=clip).prepare(g)
    norm = float(torch.linalg.vector_norm(out.double()))
    assert norm <= clip * (1 + 1e-4) or torch.equal(out, g)


def test_dgc_warmup_raises_sparsity_exponentially() -> None:
    codec = DeepGradientCompression(0.001, warmup_epochs=4)
    assert [codec.density(e) for e in range(6)] == [
        0.25,
        0.0625,
        0.015625,
        0.00390625,
        0.001,
        0.001,
    ]
    assert DeepGradientCompression(0.1, warmup_epochs=4).density(3) == 0.1


@pytest.mark.parametrize("name", NAMES)
def test_registry_builds_every_codec_by_name(name: str) -> None:
    assert make_compressor(CompressionSettings(name=name)).name == name


def test_unknown_names_and_bad_ratios_fail_loudly() -> None:
    with pytest.raises(InvalidArgument, match=r"compression\.name 'zstd' is unknown"):
        codec_name("zstd")
    with pytest.raises(InvalidArgument, match=r"compression\.ratio"):
        parse_settings(common_pb2.CompressionConfig(name="topk", ratio=1.5))
    with pytest.raises(InvalidArgument, match=r"compression\.momentum"):
        parse_settings(common_pb2.CompressionConfig(name="dgc", momentum=1.0))
    with pytest.raises(InvalidArgument, match=r"compression\.clip_norm"):
        parse_settings(common_pb2.CompressionConfig(name="dgc", clip_norm=float("nan")))
    assert parse_settings(common_pb2.CompressionConfig()).name == "none"
    assert parse_settings(common_pb2.CompressionConfig(name="topk")).ratio == 0.01


CORRUPT = [
    ("int8", b"", "4-byte chunk size"),
    ("int8", struct.pack("<I", 0) + b"\0" * 12, "chunk size 0"),
    ("int8", struct.pack("<I", 4) + b"\0" * 7, "need"),
    ("int8", struct.pack("<I", 8) + struct.pack("<f", float("nan")) + b"\1" * 8, "NaN"),
    ("int8", struct.pack("<I", 8) + struct.pack("<f", -1.0) + b"\1" * 8, "negative"),
    ("int8", struct.pack("<I", 8) + struct.pack("<f", 1.0) + b"\x80" * 8, "-128"),
    ("topk", b"\1", "4-byte count"),
    ("topk", struct.pack("<I", 9), "announces 9 entries"),
    ("topk", struct.pack("<I", 2) + struct.pack("<II", 1, 2), "need"),
    ("topk", struct.pack("<I", 1) + struct.pack("<If", 8, 1.0), "below 8"),
    ("topk", struct.pack("<I", 2) + struct.pack("<IIff", 3, 3, 1.0, 1.0), "increasing"),
    ("dgc", struct.pack("<I", 2) + struct.pack("<IIff", 5, 2, 1.0, 1.0), "increasing"),
    ("fp16", b"\0" * 15, "expected 8 values"),
    ("none", b"\0" * 31, "expected 8 values"),
]


@pytest.mark.parametrize(("name", "payload", "message"), CORRUPT)
def test_corrupt_payloads_are_invalid_arguments(name: str, payload: bytes, message: str) -> None:
    codec = make_compressor(CompressionSettings(name=name))
    with pytest.raises(InvalidArgument, match=message):
        codec.decompress(payload, 8)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(NAMES), NONEMPTY, st.integers(1, 40))
def test_truncated_payloads_never_decode(name: str, a: np.ndarray, cut: int) -> None:
    g = t(a).clamp(-1e3, 1e3)
    codec = make_compressor(CompressionSettings(name=name, ratio=0.5))
    payload = bytes(codec.compress(g, codec.new_state(g.numel()), 0).payload)
    with pytest.raises(InvalidArgument):
        codec.decompress(payload[: max(0, len(payload) - cut)], g.numel())

"""Gradient compression between workers and shards: codecs behind one ``Compressor`` protocol.

A worker compresses each shard's slice of its gradient (keeping any error-feedback state per
job and shard range, see :mod:`pscluster.worker.compressed`); the shard decompresses by the
codec named in the push and checks it is the job's. Choose a codec by name with
:func:`make_compressor`.
"""

from pscluster.compression.base import CodecState, CompressionSettings, Compressor, Encoded
from pscluster.compression.registry import NAMES, codec_name, make_compressor, parse_settings

__all__ = [
    "NAMES",
    "CodecState",
    "CompressionSettings",
    "Compressor",
    "Encoded",
    "codec_name",
    "make_compressor",
    "parse_settings",
]

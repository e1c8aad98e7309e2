"""``bf16``: bfloat16, float32's range with 8 significand bits. Error: relative 2**-8."""

from __future__ import annotations

from pscluster.compression.half import HalfPrecision
from pscluster.v1 import common_pb2

# The largest finite bfloat16; float32 values above it would round to Inf.
BF16_MAX = 3.3895313892515355e38


class BFloat16(HalfPrecision):
    name = "bf16"
    dtype = common_pb2.DTYPE_BFLOAT16
    max_value = BF16_MAX

"""``fp16``: IEEE half precision. Error: relative 2**-11 for |x| >= 2**-14, absolute 2**-25
below (subnormals); values beyond +-65504 are clamped to it."""

from __future__ import annotations

from pscluster.compression.half import HalfPrecision
from pscluster.v1 import common_pb2

FP16_MAX = 65504.0


class Float16(HalfPrecision):
    name = "fp16"
    dtype = common_pb2.DTYPE_FLOAT16
    max_value = FP16_MAX

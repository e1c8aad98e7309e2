"""splitmix64, the one 64-bit mix every id hash in pscluster uses: a dynamic table's index
positions, which shard owns a hashed id, and the initial values of a dynamic row."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """splitmix64 of each id: sequential or strided ids spread over all 64 bits, so any bits
    of the result (the top ones for a position, the low ones for a shard) are well mixed."""
    z = ids.astype(np.uint64)
    with np.errstate(over="ignore"):  # wraparound is the point of the arithmetic
        z += GAMMA
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z

"""A dynamic row's initial values, drawn from (seed, id) alone, and the sort-based id helpers
of dynamic tables (np.unique is slow on large int64 arrays)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from pscluster.hashing import GAMMA, mix64

I64 = npt.NDArray[np.int64]
TWO_PI = 2.0 * np.pi


def initial_rows(seed: int, ids: npt.ArrayLike, dim: int, std: float) -> torch.Tensor:
    """N(0, std) rows (float32) that depend on (seed, id) alone: each id starts a splitmix64
    stream at mix64(id ^ mix64(seed)); each 64-bit output is two 32-bit uniforms, made into
    two normals (a pair of columns) by Box-Muller. So a row is the same whatever batch, order
    or shard first touched it, and recovery re-creates it bit for bit. (On another CPU, numpy's
    vectorised float64 log/sin/cos may differ in a last bit, which the float32 cast hides in
    all but ~1 value in 2**28.)"""
    ids = np.asarray(ids, np.int64).reshape(-1)
    key = mix64(np.array([seed % 2**64], np.uint64).view(np.int64))
    start = mix64((ids.view(np.uint64) ^ key).view(np.int64))
    pairs = np.arange((dim + 1) // 2, dtype=np.uint64)
    with np.errstate(over="ignore"):  # the stream's additions wrap by design
        h = mix64((start[:, None] + GAMMA * pairs).view(np.int64))
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32  # in (0, 1): log is finite
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
    radius = np.sqrt(-2.0 * np.log(u1)) * std
    out = np.empty((ids.size, 2 * pairs.size), np.float64)
    out[:, 0::2] = radius * np.cos(TWO_PI * u2)
    out[:, 1::2] = radius * np.sin(TWO_PI * u2)
    return torch.from_numpy(out[:, :dim].astype(np.float32))


def distinct(ids: I64) -> I64:
    """Distinct ids (>= 0), ascending: a sort, as np.unique is slow on large int64 arrays."""
    ordered = np.sort(ids)
    distinct: I64 = ordered[np.diff(ordered, prepend=-1) != 0]
    return distinct


def first_appearances(ids: I64) -> I64:
    """Distinct ids in the order they first appear."""
    order = np.argsort(ids, kind="stable")
    starts = np.diff(ids[order], prepend=-1) != 0
    firsts: I64 = ids[np.sort(order[starts])]
    return firsts

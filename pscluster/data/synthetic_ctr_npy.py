"""The synthetic CTR data of :mod:`pscluster.data.synthetic_ctr` written as ``npy`` shards.

Apart from the generator because this is the only part that touches the disk: the generator
stays pure (rows from a spec and a stream), and writing a split is a loop over its shards,
one in memory at a time, whatever the number of rows.

Layout written by :func:`write_npy`, read by the ``npy`` source as named inputs::

    <out>/train/x.dense-00000.npy   (rows, 13) float32
    <out>/train/x.sparse-00000.npy  (rows, 26) int64
    <out>/train/y-00000.npy         (rows,)    float32 (0 or 1: bce_with_logits targets)

The source turns ``x.<name>`` arrays into a dict passed as keyword arguments, so a model reads
them with no unpacking: ``def forward(self, *, dense, sparse)``. One packed x array was the
alternative, but float32 cannot hold ids above 2**24 and int64 would need the dense values in
fixed point; named inputs keep each part in its own dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pscluster.data.synthetic_ctr import TEST_STREAM, CtrSpec, generate, planted_bias, rank_auc


def _clear(folder: Path) -> None:
    """Remove shards an earlier, larger run left: the source would read them as data."""
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in ("x-*.npy", "x.*.npy", "y-*.npy", "x.npy", "y.npy"):
        for stale in folder.glob(pattern):
            stale.unlink()


def write_npy(
    spec: CtrSpec, out: Path, rows: int, shard_rows: int, test_rows: int
) -> dict[str, Any]:
    """Write ``<out>/train`` and ``<out>/test`` shard by shard (memory: one shard); returns
    rows, shards, bytes and positive rate per split and the test split's Bayes AUC."""
    if rows < 1 or test_rows < 1 or shard_rows < 1:
        raise ValueError(f"rows, test_rows and shard_rows must be >= 1: {rows, test_rows}")
    report: dict[str, Any] = {}
    test: list[tuple[np.ndarray, np.ndarray]] = []
    for split, total, first_stream in (("train", rows, 0), ("test", test_rows, TEST_STREAM)):
        folder = out / split
        _clear(folder)
        written, positives, shard = 0, 0.0, 0
        for shard, first in enumerate(range(0, total, shard_rows)):
            batch = generate(spec, min(shard_rows, total - first), first_stream + shard)
            for name, array in (("x.dense", batch.dense), ("x.sparse", batch.sparse)):
                np.save(folder / f"{name}-{shard:05d}.npy", array)
                written += (folder / f"{name}-{shard:05d}.npy").stat().st_size
            np.save(folder / f"y-{shard:05d}.npy", batch.label)
            written += (folder / f"y-{shard:05d}.npy").stat().st_size
            positives += float(batch.label.sum())
            if split == "test":
                test.append((batch.label, batch.prob))
        report[split] = {
            "rows": total,
            "shards": shard + 1,
            "bytes": written,
            "positive_rate": round(positives / total, 4),
        }
    label, prob = (np.concatenate(parts) for parts in zip(*test, strict=True))
    ceiling = rank_auc(label, prob) if 0 < label.sum() < len(label) else None
    return {**report, "bias": planted_bias(spec), "bayes_auc": ceiling}

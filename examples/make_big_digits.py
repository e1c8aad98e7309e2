"""Write a digits dataset larger than memory, for the ``npy`` and ``parquet`` data sources.

    python examples/make_big_digits.py --out data/digits-big --gigabytes 2.2
    python examples/make_big_digits.py --out data/digits-big-pq --gigabytes 2.2 --format parquet

Each sample is one of scikit-learn's 8x8 digits (shipped with it, no download) upsampled to
1x32x32, shifted by up to two pixels, its intensity scaled and Gaussian noise added: so the
set is not the same 1797 images over and over, and a model must generalise to score. The
digits are split first (a held-out fifth makes the test split), so no test sample is drawn
from a digit the train split saw. Shards of about 64 MB are generated and written one at a
time, so memory stays at one shard whatever the size asked for:

    <out>/train/x-00000.npy  (rows, 1, 32, 32) float32    <out>/train/y-00000.npy  (rows,) int64
    <out>/test/x-00000.npy ...                            (npy)
    <out>/train/part-00000.parquet: x fixed_size_list<float>[1024], y int64   (parquet)

``<out>/manifest.json`` records the sizes and which of the 1797 digits each split drew from.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

SIDE = 32
ROW_BYTES = SIDE * SIDE * 4 + 8  # x float32 + y int64
ROW_GROUP = 4096  # Parquet rows per row group
MAX_SHIFT = 2
CHUNK = 2048  # rows generated at once


def upsample(images: np.ndarray) -> np.ndarray:
    """(n, 8, 8) in 0..16 -> (n, 32, 32) float32 in 0..1, bilinear (W @ image @ W.T)."""
    src = (np.arange(SIDE) + 0.5) * images.shape[1] / SIDE - 0.5
    lo = np.clip(np.floor(src).astype(int), 0, images.shape[1] - 1)
    hi = np.clip(lo + 1, 0, images.shape[1] - 1)
    frac = np.clip(src - lo, 0.0, 1.0)
    w = np.zeros((SIDE, images.shape[1]), dtype=np.float32)
    np.add.at(w, (np.arange(SIDE), lo), 1 - frac)
    np.add.at(w, (np.arange(SIDE), hi), frac)
    return (w @ (images.astype(np.float32) / 16.0) @ w.T).astype(np.float32)


def split_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the digits the train and the test split draw from (a fifth held out)."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    held = n // 5
    return np.sort(order[held:]), np.sort(order[:held])


def generate(
    base: np.ndarray, labels: np.ndarray, pool: np.ndarray, rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` samples drawn from the ``pool`` digits: shifted, scaled and noisy. Made
    ``CHUNK`` rows at a time into the output, so the temporaries stay small beside it."""
    x = np.empty((rows, 1, SIDE, SIDE), dtype=np.float32)
    y = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        pick = pool[rng.integers(0, len(pool), n)]
        pad = ((0, 0), (MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT))
        windows = np.lib.stride_tricks.sliding_window_view(
            np.pad(base[pick], pad), (SIDE, SIDE), axis=(1, 2)
        )
        dy, dx = rng.integers(0, 2 * MAX_SHIFT + 1, (2, n))
        out = x[start : start + n, 0]
        out[:] = windows[np.arange(n), dy, dx]
        out *= rng.uniform(0.7, 1.3, (n, 1, 1)).astype(np.float32)
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(0.08)
        y[start : start + n] = labels[pick]
    return x, y


def _clear(folder: Path) -> None:
    """Remove the shards an earlier, larger run left: a source would read them as data."""
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in ("x-*.npy", "y-*.npy", "x.npy", "y.npy", "part-*.parquet"):
        for stale in folder.glob(pattern):
            stale.unlink()


def _write_shard(folder: Path, shard: int, x: np.ndarray, y: np.ndarray, fmt: str) -> int:
    if fmt == "npy":
        np.save(folder / f"x-{shard:05d}.npy", x)
        np.save(folder / f"y-{shard:05d}.npy", y)
        return (folder / f"x-{shard:05d}.npy").stat().st_size + (
            folder / f"y-{shard:05d}.npy"
        ).stat().st_size
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(x.reshape(-1), type=pa.float32())
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(flat, SIDE * SIDE), "y": y})
    path = folder / f"part-{shard:05d}.parquet"
    # noisy floats do not repeat: a dictionary would only be written and thrown away
    pq.write_table(table, path, row_group_size=ROW_GROUP, use_dictionary=["y"])
    return path.stat().st_size


def shard_rows(shard_bytes: int) -> int:
    """Rows per shard: about ``shard_bytes``, whole Parquet row groups when that is large."""
    rows = max(1, shard_bytes // ROW_BYTES)
    return max(1, round(rows / ROW_GROUP)) * ROW_GROUP if rows >= ROW_GROUP else rows


def write_split(
    folder: Path,
    rows: int,
    per_shard: int,
    fmt: str,
    make: Callable[[int], tuple[np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """Generate and write one split shard by shard; returns what was written."""
    start, written, shards = time.monotonic(), 0, 0
    _clear(folder)
    for shard, first in enumerate(range(0, rows, per_shard)):
        x, y = make(min(per_shard, rows - first))
        written += _write_shard(folder, shard, x, y, fmt)
        shards += 1
    seconds = time.monotonic() - start
    print(
        f"{folder}: {rows} rows in {shards} {fmt} shard(s), {written / 1e6:.1f} MB, {seconds:.1f} s"
    )
    return {"rows": rows, "shards": shards, "bytes": written, "seconds": round(seconds, 2)}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--gigabytes", type=float, help="train split size (default 2.2)")
    size.add_argument("--megabytes", type=float, help="train split size, for small runs")
    parser.add_argument("--format", choices=("npy", "parquet"), default="npy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-rows", type=int, default=2000, help="test split samples")
    parser.add_argument("--shard-mb", type=float, default=64.0, help="about this much a shard")
    args = parser.parse_args(argv)
    if args.megabytes is None and args.gigabytes is None:
        args.gigabytes = 2.2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    from sklearn.datasets import load_digits

    digits = load_digits()
    base, labels = upsample(digits.images), np.asarray(digits.target)
    train_pool, test_pool = split_digits(len(labels), args.seed)
    size = args.megabytes * 1e6 if args.megabytes is not None else args.gigabytes * 1e9
    per_shard = shard_rows(int(args.shard_mb * 1e6))
    rng = np.random.default_rng(args.seed)
    out: Path = args.out
    report = {
        split: write_split(
            out / split,
            rows,
            per_shard,
            args.format,
            partial(generate, base, labels, pool, rng=rng),
        )
        for split, rows, pool in (
            ("train", max(1, int(size // ROW_BYTES)), train_pool),
            ("test", args.test_rows, test_pool),
        )
    }
    manifest = {
        "format": args.format,
        "seed": args.seed,
        **report,
        "train_digits": train_pool.tolist(),
        "test_digits": test_pool.tolist(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    total = sum(r["bytes"] for r in report.values())
    print(
        f"wrote {out}: {total / 1e6:.1f} MB in {sum(r['seconds'] for r in report.values()):.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

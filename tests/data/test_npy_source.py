"""The npy source reads .npy shards memory-mapped, batch by batch, in the order asked for."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pscluster.data.sources.base import DataNotFound
from pscluster.data.sources.npy import NpySource
from pscluster.errors import InvalidArgument

ROWS = (5, 7, 3)


def _save(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    return folder


def _sharded(root: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Three shards of x (rows of 2x3 float64) and y (int32), and their concatenations."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, 2, 3)) for n in ROWS]
    ys = [rng.integers(0, 10, n).astype(np.int32) for n in ROWS]
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        _save(root / split, {f"x-{i:05d}": x, f"y-{i:05d}": y})
    return np.concatenate(xs), np.concatenate(ys)


def test_a_batch_is_the_rows_asked_for_in_their_order(tmp_path: Path) -> None:
    x, y = _sharded(tmp_path)
    samples = NpySource({"path": str(tmp_path)}).open("train")
    assert len(samples) == sum(ROWS) and samples.block_rows == 1
    indices = [14, 0, 6, 5, 13, 4, 6, 11]  # across all shards, unsorted, one twice
    batch = samples.__getitems__(indices)
    assert isinstance(batch.x, torch.Tensor)
    assert batch.x.dtype == torch.float32 and batch.y.dtype == torch.int64
    np.testing.assert_allclose(batch.x.numpy(), x[indices].astype(np.float32))
    np.testing.assert_array_equal(batch.y.numpy(), y[indices])


def test_one_sample_and_an_empty_batch(tmp_path: Path) -> None:
    x, y = _sharded(tmp_path)
    samples = NpySource({"path": str(tmp_path)}).open("train")
    sx, sy = samples[9]
    np.testing.assert_allclose(sx.numpy(), x[9].astype(np.float32))
    assert sy.dtype == torch.int64 and int(sy) == y[9]
    empty = samples.__getitems__([])
    assert isinstance(empty.x, torch.Tensor) and tuple(empty.x.shape) == (0, 2, 3)
    with pytest.raises(IndexError, match="out of range"):
        samples[len(samples)]


def test_unsharded_x_and_y(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10, dtype=np.uint8)
    _save(tmp_path / "test", {"x": x, "y": y})
    samples = NpySource({"path": str(tmp_path)}).open("test")
    batch = samples.__getitems__([3, 1, 2])
    np.testing.assert_array_equal(batch.x, x[[3, 1, 2]])
    np.testing.assert_array_equal(batch.y, [3, 1, 2])


def test_named_inputs_make_a_dict(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = [rng.integers(0, 100, (n, 4)) for n in (4, 6)]
    dense = [rng.normal(size=(n, 3)).astype(np.float32) for n in (4, 6)]
    for i in range(2):
        _save(
            tmp_path / "train",
            {f"x.ids-{i:05d}": ids[i], f"x.dense-{i:05d}": dense[i], f"y-{i:05d}": ids[i][:, 0]},
        )
    samples = NpySource({"path": str(tmp_path)}).open("train")
    batch = samples.__getitems__([9, 0, 5])
    assert isinstance(batch.x, dict) and set(batch.x) == {"ids", "dense"}
    np.testing.assert_array_equal(batch.x["ids"], np.concatenate(ids)[[9, 0, 5]])
    np.testing.assert_array_equal(batch.x["dense"], np.concatenate(dense)[[9, 0, 5]])
    sx, _ = samples[5]
    np.testing.assert_array_equal(sx["ids"], ids[1][1])


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status")


def test_arrays_are_memory_mapped_and_not_read_whole(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    rows, width = 12_800, 1024  # 50 MiB of float32, written in slices
    x = np.lib.format.open_memmap(folder / "x.npy", "w+", np.float32, (rows, width))
    for start in range(0, rows, 1600):
        x[start : start + 1600] = np.arange(start, start + 1600, dtype=np.float32)[:, None]
    x.flush()
    del x
    np.save(folder / "y.npy", np.arange(rows) % 10)
    before = _rss()
    samples = NpySource({"path": str(tmp_path)}).open("train")
    batch = samples.__getitems__(list(range(0, rows, 400)))
    grown = _rss() - before
    assert all(isinstance(a, np.memmap) for shards in samples.arrays.values() for a in shards)
    assert grown < 20 * 2**20, f"opening and reading 32 rows grew RSS by {grown / 2**20:.0f} MiB"
    assert isinstance(batch.x, torch.Tensor)
    np.testing.assert_array_equal(batch.x[:, 0], np.arange(0, rows, 400))


def test_pickled_samples_map_the_files_again(tmp_path: Path) -> None:
    _sharded(tmp_path)
    samples = NpySource({"path": str(tmp_path)}).open("train")
    blob = pickle.dumps(samples)
    assert len(blob) < 2000  # the paths, not the arrays
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.__getitems__([3, 8]).y, samples.__getitems__([3, 8]).y)


def _case(root: Path, files: dict[str, np.ndarray]) -> None:
    _save(root / "train", files)


X4, Y4 = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
ERRORS: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "no x and y": ({"other": X4}, r"no x and y arrays in .*train; expected train/x-00000.npy"),
    "rows differ": ({"x": X4, "y": np.zeros(3)}, r"x.npy has 4 rows but y.npy has 3 .*row for row"),
    "shard rows differ": (
        {"x-00000": X4, "x-00001": X4, "y-00000": Y4, "y-00001": Y4[:2]},
        r"x-00001.npy has 4 rows but y-00001.npy has 2",
    ),
    "shard counts differ": (
        {"x-00000": X4, "x-00001": X4, "y-00000": Y4},
        r"2 shard\(s\) of x but 1 of y",
    ),
    "a gap": ({"x-00000": X4, "x-00002": X4, "y-00000": Y4}, r"x shard 00001 is missing"),
    "both layouts": ({"x": X4, "x-00000": X4, "y": Y4}, r"both x.npy and x-NNNNN.npy"),
    "x and named": ({"x": X4, "x.ids": X4, "y": Y4}, r"both x and named inputs \['ids'\]"),
    "bad name": ({"x.1st": X4, "y": Y4}, r"input name '1st' .* not a Python identifier"),
    "strings": ({"x": np.array(["a", "b", "c", "d"]), "y": Y4}, r"dtype <U1; arrays must hold"),
    "scalar": ({"x": np.array(1.0, np.float32), "y": Y4}, r"x.npy is a scalar"),
    "row shapes": (
        {"x-00000": X4, "x-00001": np.zeros((4, 3)), "y-00000": Y4, "y-00001": Y4},
        r"x-00001.npy has rows of shape \(3,\) but x-00000.npy has \(2,\)",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_a_wrong_layout_says_what_to_fix(tmp_path: Path, case: str) -> None:
    files, message = ERRORS[case]
    _case(tmp_path, files)
    with pytest.raises(InvalidArgument, match=f"^data source 'npy': .*{message}"):
        NpySource({"path": str(tmp_path)}).open("train")


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    ragged = np.array([[1], [1, 2], [3], [4]], dtype=object)
    np.save(tmp_path / "train" / "x.npy", ragged, allow_pickle=True)
    np.save(tmp_path / "train" / "y.npy", Y4)
    with pytest.raises(InvalidArgument, match=r"x.npy cannot be memory-mapped .*not object dtype"):
        NpySource({"path": str(tmp_path)}).open("train")


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match=r"no folder .*/nowhere/train; expected train/x-00000"):
        NpySource({"path": str(tmp_path / "nowhere")}).open("train")
    _sharded(tmp_path)  # the path exists, its test split does not: not only the workers' data
    with pytest.raises(InvalidArgument, match=r"no folder .*/test; expected test/x-00000.npy") as e:
        NpySource({"path": str(tmp_path)}).open("test")
    assert not isinstance(e.value, DataNotFound)
    with pytest.raises(InvalidArgument, match="unknown split 'valid'"):
        NpySource({"path": str(tmp_path)}).open("valid")
    with pytest.raises(InvalidArgument, match=r"needs args \{'path': <folder>\}"):
        NpySource({})


def test_reading_every_row_does_not_leave_the_whole_file_resident(tmp_path: Path) -> None:
    # A 50 MiB split read through, batch by batch, in a random order: rows are copied into
    # each batch, so the process never holds the file (a mapping would keep what it read).
    folder = tmp_path / "train"
    folder.mkdir()
    rows, width = 12_800, 1024
    x = np.lib.format.open_memmap(folder / "x.npy", "w+", np.float32, (rows, width))
    x[:] = 1.0
    x.flush()
    del x
    np.save(folder / "y.npy", np.arange(rows) % 10)
    samples = NpySource({"path": str(tmp_path)}).open("train")
    before = _rss()
    peak = 0
    order = np.random.default_rng(0).permutation(rows)
    for start in range(0, rows, 256):
        batch = samples.__getitems__(order[start : start + 256].tolist())
        assert isinstance(batch.x, torch.Tensor) and float(batch.x.min()) == 1.0
        peak = max(peak, _rss() - before)
    assert peak < 24 * 2**20, f"reading 50 MiB held up to {peak / 2**20:.0f} MiB"

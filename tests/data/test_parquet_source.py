"""The Parquet source reads row groups, each decoded once per batch and kept in a bounded cache."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pscluster.data.sources.base import DataNotFound
from pscluster.data.sources.parquet import ParquetSamples, ParquetSource
from pscluster.errors import InvalidArgument

WIDTH, GROUP = 6, 4  # x values per row, rows per row group


def _table(x: np.ndarray, y: np.ndarray, **extra: Any) -> Any:
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    return pa.table({"x": vectors, "y": y, **extra})


def _write(root: Path, rows: tuple[int, ...] = (10, 6)) -> tuple[np.ndarray, np.ndarray]:
    """Files of ``rows`` rows in groups of 4 (10 rows: 4, 4, 2), and all rows' x and y."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(sum(rows), WIDTH))  # float64: read as float32
    y = rng.integers(0, 10, sum(rows)).astype(np.int32)
    (root / "train").mkdir(parents=True)
    start = 0
    for i, n in enumerate(rows):
        part = slice(start, start + n)
        a, b = x[part, 0] * 2, np.arange(start, start + n)
        table = _table(x[part], y[part], a=a, b=b)
        pq.write_table(table, root / "train" / f"part-{i:05d}.parquet", row_group_size=GROUP)
        start += n
    return x, y


def _open(root: Path, **args: Any) -> ParquetSamples:
    return ParquetSource({"path": str(root), "x": "x", "y": "y", **args}).open("train")


def test_a_batch_is_the_rows_asked_for_in_their_order(tmp_path: Path) -> None:
    x, y = _write(tmp_path)
    samples = _open(tmp_path)
    assert len(samples) == 16 and samples.block_rows == GROUP
    indices = [15, 0, 9, 4, 10, 3, 9, 12]  # every row group, unsorted, one twice
    batch = samples.__getitems__(indices)
    assert isinstance(batch.x, torch.Tensor)
    assert batch.x.dtype == torch.float32 and batch.y.dtype == torch.int64
    np.testing.assert_allclose(batch.x.numpy(), x[indices].astype(np.float32))
    np.testing.assert_array_equal(batch.y.numpy(), y[indices])
    sx, sy = samples[11]
    np.testing.assert_allclose(sx.numpy(), x[11].astype(np.float32))
    assert int(sy) == y[11]


def test_one_file_per_split_and_block_rows(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    pq.write_table(_table(x, np.arange(6)), tmp_path / "test.parquet", row_group_size=3)
    source = ParquetSource({"path": str(tmp_path), "x": "x", "y": "y", "block_rows": 2})
    samples = source.open("test")
    assert samples.block_rows == 2
    np.testing.assert_array_equal(samples.__getitems__([5, 0]).x, x[[5, 0]])


def test_number_columns_stack_and_names_make_a_dict(tmp_path: Path) -> None:
    x, _ = _write(tmp_path)
    stacked = _open(tmp_path, x=["a", "b"]).__getitems__([2, 11])
    assert isinstance(stacked.x, torch.Tensor) and stacked.x.dtype == torch.float32
    np.testing.assert_allclose(stacked.x, np.stack([x[[2, 11], 0] * 2, [2, 11]], 1), rtol=1e-6)
    one = _open(tmp_path, x="b").__getitems__([3])
    assert isinstance(one.x, torch.Tensor) and tuple(one.x.shape) == (1, 1)
    named = _open(tmp_path, x={"pixels": "x", "y": ["a", "b"]}).__getitems__([7, 1])
    assert isinstance(named.x, dict) and set(named.x) == {"pixels", "y"}
    assert tuple(named.x["y"].shape) == (2, 2) and tuple(named.y.shape) == (2,)
    np.testing.assert_allclose(named.x["pixels"], x[[7, 1]].astype(np.float32))


def test_x_is_every_column_but_y_by_default(tmp_path: Path) -> None:
    table = pa.table({"a": [1.0, 2.0], "label": [0, 1], "b": [3, 4]})
    pq.write_table(table, tmp_path / "train.parquet")
    batch = ParquetSource({"path": str(tmp_path), "y": "label"}).open("train").__getitems__([1])
    assert isinstance(batch.x, torch.Tensor)
    np.testing.assert_array_equal(batch.x, [[2.0, 4.0]])


def test_variable_lists_of_one_length_are_vectors(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    ids = pa.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], type=pa.list_(pa.int32()))
    pq.write_table(pa.table({"ids": ids, "y": [0, 1, 2]}), tmp_path / "train" / "a.parquet")
    batch = _open(tmp_path, x="ids").__getitems__([2, 0])
    assert isinstance(batch.x, torch.Tensor) and batch.x.dtype == torch.int64
    np.testing.assert_array_equal(batch.x, [[7, 8, 9], [1, 2, 3]])


Decode = tuple[Any, int, list[str]]


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Decode]]:
    """Every row group decode: (reader, group, columns)."""
    calls: list[Decode] = []
    real = pq.ParquetFile.read_row_group
    opened: dict[int, str] = {}
    real_init = pq.ParquetFile.__init__

    def remember(self: Any, source: Any, *args: Any, **kw: Any) -> None:
        opened[id(self)] = Path(source).name
        real_init(self, source, *args, **kw)

    def spy(self: Any, i: int, columns: list[str] | None = None, **kw: Any) -> Any:
        calls.append((opened[id(self)], i, list(columns or [])))
        return real(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "__init__", remember)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    yield calls


def _named(samples: ParquetSamples, calls: list[Decode]) -> list[tuple[str, int, list[str]]]:
    return [(name, group, columns) for name, group, columns in calls]


def test_a_batch_decodes_the_groups_it_touches_once(tmp_path: Path, decoded: list[Decode]) -> None:
    _write(tmp_path)
    samples = _open(tmp_path, x=["a"])
    samples.__getitems__([5, 9, 4, 8, 6])  # row groups 1 and 2 of the first file
    first = ("part-00000.parquet", 1, ["a", "y"]), ("part-00000.parquet", 2, ["a", "y"])
    assert _named(samples, decoded) == list(first)
    samples.__getitems__([8, 7])  # both cached
    assert len(decoded) == 2
    samples.__getitems__([14])  # the second file's second group (rows 14, 15)
    assert _named(samples, decoded)[-1] == ("part-00001.parquet", 1, ["a", "y"])


def test_the_cache_stays_within_its_bound(tmp_path: Path, decoded: list[Decode]) -> None:
    _write(tmp_path, rows=(40,))  # 10 groups of 4 rows: 4 x (6 x 4 + 8) = 128 bytes each
    samples = _open(tmp_path, cache_mb=300 / 2**20)  # room for 2 groups
    for group in range(10):
        samples.__getitems__([group * GROUP, group * GROUP + 1])
        assert samples.cache_bytes <= 300
    assert len(decoded) == 10 and samples.cache_bytes == 256
    samples.__getitems__([39, 32])  # groups 9 and 8: cached
    assert len(decoded) == 10
    samples.__getitems__([0])  # group 0 was evicted
    assert len(decoded) == 11
    tiny = _open(tmp_path, cache_mb=100 / 2**20)  # no group fits: decoded, never kept
    tiny.__getitems__([0, 1])
    assert tiny.cache_bytes == 0


def test_pickled_or_forked_samples_open_their_own_files(tmp_path: Path) -> None:
    x, _ = _write(tmp_path)
    samples = _open(tmp_path)
    samples.__getitems__([0, 15])  # opens both files here, before the loader forks
    again = pickle.loads(pickle.dumps(samples))
    assert again.cache_bytes == 0
    np.testing.assert_array_equal(again.__getitems__([7]).y, samples.__getitems__([7]).y)
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        samples,  # type: ignore[arg-type]
        batch_sampler=[[3, 12], [15, 1, 8]],
        collate_fn=lambda b: b,
        num_workers=2,
        multiprocessing_context="fork",
    )
    batches = list(loader)
    np.testing.assert_allclose(batches[1].x, x[[15, 1, 8]].astype(np.float32))


def test_missing_splits(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match=r"no folder .*/nowhere/train and no file .*train.pa"):
        _open(tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    with pytest.raises(InvalidArgument, match=r"no .parquet files in .*train; expected train/"):
        _open(tmp_path)
    with pytest.raises(InvalidArgument, match=r"no folder .*test and no file .*test.parquet") as e:
        ParquetSource({"path": str(tmp_path), "y": "y"}).open("test")
    assert not isinstance(e.value, DataNotFound)
    with pytest.raises(InvalidArgument, match="unknown split 'all'"):
        ParquetSource({"path": str(tmp_path), "y": "y"}).open("all")


def _one(root: Path, table: Any) -> None:
    (root / "train").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "train" / "part-00000.parquet")


XS = np.zeros((3, 2))
COLUMN_ERRORS: dict[str, tuple[Any, dict[str, Any], str]] = {
    "no x column": (
        _table(XS, np.arange(3)),
        {"x": "pixels"},
        r"column 'pixels' \(x\) is not in .*part-00000.parquet; its columns are \['x', 'y'\]",
    ),
    "no y column": (
        _table(XS, np.arange(3)),
        {"y": "label"},
        r"column 'label' \(y\) is not in .*; its columns are \['x', 'y'\]",
    ),
    "strings": (
        _table(XS, np.arange(3), s=["a", "b", "c"]),
        {"x": {"text": "s"}},
        r"column 's' \(x\['text'\]\) is string; columns must hold numbers",
    ),
    "a list beside numbers": (
        _table(XS, np.arange(3), a=[1.0, 2.0, 3.0]),
        {"x": ["x", "a"]},
        r"column 'x' is a list; a list column must be the only column of x",
    ),
    "no rows": (_table(XS[:0], np.arange(0)), {}, r"the train split in .* has no rows"),
}


@pytest.mark.parametrize("case", sorted(COLUMN_ERRORS))
def test_wrong_columns_say_what_exists(tmp_path: Path, case: str) -> None:
    table, args, message = COLUMN_ERRORS[case]
    _one(tmp_path, table)
    with pytest.raises(InvalidArgument, match=f"^data source 'parquet': {message}"):
        _open(tmp_path, **args)


def test_nulls_and_ragged_lists_fail_when_read(tmp_path: Path) -> None:
    ragged = pa.array([[1.0], [1.0, 2.0], None], type=pa.list_(pa.float32()))
    _one(tmp_path, pa.table({"x": ragged, "y": [0, 1, 2], "n": [1.0, None, 2.0]}))
    with pytest.raises(InvalidArgument, match=r"column 'x' has null values; fill or drop them"):
        _open(tmp_path).__getitems__([0])
    with pytest.raises(InvalidArgument, match=r"column 'n' has null values"):
        _open(tmp_path, x=["n"]).__getitems__([0])
    _one(tmp_path, pa.table({"x": ragged.fill_null([0.0, 0.0]), "y": [0, 1, 2]}))
    with pytest.raises(InvalidArgument, match=r"column 'x' has lists of lengths 1..2; every row"):
        _open(tmp_path).__getitems__([0])


def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "part-00000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InvalidArgument, match=r"part-00000.parquet is not a readable Parquet"):
        _open(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"y": None}, r"needs args \{'y': <label column>\}"),
        ({"x": 3}, r"args x must be a column name or a list of column names, got 3"),
        ({"x": {"1st": "x"}}, r"args x must map input names \(Python identifiers\) to columns"),
        ({"block_rows": 0}, r"args block_rows must be a positive number, got 0"),
        ({"block_rows": 2.5}, r"args block_rows must be an integer >= 1, got 2.5"),
        ({"cache_mb": "big"}, r"args cache_mb must be a positive number, got 'big'"),
    ],
)
def test_bad_args(tmp_path: Path, args: dict[str, Any], message: str) -> None:
    _write(tmp_path)
    with pytest.raises(InvalidArgument, match=message):
        _open(tmp_path, **args)
    with pytest.raises(InvalidArgument, match=r"needs args \{'path': <folder>\}"):
        ParquetSource({"y": "y"})

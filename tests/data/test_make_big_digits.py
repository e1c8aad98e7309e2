"""examples/make_big_digits.py writes what it says, in both formats, readable by the sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from examples import make_big_digits
from pscluster.data.sources.npy import NpySource
from pscluster.data.sources.parquet import ParquetSource

ROOT = Path(__file__).resolve().parents[2]
ROWS = 3_000_000 // make_big_digits.ROW_BYTES  # --megabytes 3
ARGS = ["--megabytes", "3", "--shard-mb", "1", "--test-rows", "300", "--seed", "5"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same small dataset in both formats."""
    root = tmp_path_factory.mktemp("digits")
    make_big_digits.main(["--out", str(root / "npy"), *ARGS])
    make_big_digits.main(["--out", str(root / "pq"), "--format", "parquet", *ARGS])
    return {"npy": root / "npy", "parquet": root / "pq"}


def _manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return manifest


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_writes_what_it_says(written: dict[str, Path], fmt: str) -> None:
    manifest = _manifest(written[fmt])
    per_shard = 1_000_000 // make_big_digits.ROW_BYTES
    for split, rows in (("train", ROWS), ("test", 300)):
        files = sorted((written[fmt] / split).iterdir())
        assert manifest[split]["rows"] == rows
        assert manifest[split]["shards"] == -(-rows // per_shard)
        assert manifest[split]["bytes"] == sum(f.stat().st_size for f in files)
    if fmt == "npy":
        assert manifest["train"]["bytes"] == pytest.approx(3e6, rel=0.02)
        x = np.load(written[fmt] / "train" / "x-00000.npy", mmap_mode="r")
        assert x.dtype == np.float32 and x.shape == (per_shard, 1, 32, 32)
        assert np.load(written[fmt] / "train" / "y-00000.npy").dtype == np.int64
    else:
        meta = pq.ParquetFile(written[fmt] / "train" / "part-00000.parquet")
        assert meta.metadata.num_rows == per_shard
        assert str(meta.schema_arrow.field("x").type) == "fixed_size_list<element: float>[1024]"
        assert str(meta.schema_arrow.field("y").type) == "int64"


def test_parquet_shards_are_cut_in_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(make_big_digits, "ROW_GROUP", 100)  # 4096 in real runs
    assert make_big_digits.shard_rows(240 * make_big_digits.ROW_BYTES) == 200  # whole groups
    x, y = np.zeros((250, 1, 32, 32), np.float32), np.arange(250)
    make_big_digits._write_shard(tmp_path, 0, x, y, "parquet")
    meta = pq.ParquetFile(tmp_path / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100, 100, 50]


def test_npy_output_opens_with_labels_from_disjoint_digits(written: dict[str, Path]) -> None:
    source = NpySource({"path": str(written["npy"])})
    train, test = source.open("train"), source.open("test")
    assert (len(train), len(test)) == (ROWS, 300)
    batch = train.__getitems__(list(range(ROWS)))
    assert isinstance(batch.x, torch.Tensor) and tuple(batch.x.shape) == (ROWS, 1, 32, 32)
    assert set(batch.y.tolist()) == set(range(10))
    assert len(torch.unique(batch.x.reshape(ROWS, -1), dim=0)) == ROWS  # no two alike
    manifest = _manifest(written["npy"])
    train_digits, test_digits = set(manifest["train_digits"]), set(manifest["test_digits"])
    assert not train_digits & test_digits
    assert len(train_digits | test_digits) == 1797 and len(test_digits) == 1797 // 5


def test_both_formats_hold_the_same_samples(written: dict[str, Path]) -> None:
    npy = NpySource({"path": str(written["npy"])}).open("test")
    parquet = ParquetSource({"path": str(written["parquet"]), "x": "x", "y": "y"}).open("test")
    indices = [299, 0, 150, 42]
    a, b = npy.__getitems__(indices), parquet.__getitems__(indices)
    assert isinstance(a.x, torch.Tensor) and isinstance(b.x, torch.Tensor)
    torch.testing.assert_close(a.x.reshape(4, -1), b.x)
    torch.testing.assert_close(a.y, b.y)


def test_samples_are_shifted_scaled_noisy_digits() -> None:
    base = make_big_digits.upsample(np.full((1, 8, 8), 16.0))
    assert base.shape == (1, 32, 32) and np.allclose(base, 1.0)
    pool = np.array([0])
    x, y = make_big_digits.generate(base, np.array([7]), pool, 50, np.random.default_rng(0))
    assert x.shape == (50, 1, 32, 32) and x.dtype == np.float32 and set(y.tolist()) == {7}
    assert 0.6 < float(x.mean()) < 1.1 and float(x.std()) > 0.05


def test_it_runs_as_a_script(tmp_path: Path) -> None:
    script = ROOT / "examples" / "make_big_digits.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--out",
            str(tmp_path),
            "--megabytes",
            "0.2",
            "--test-rows=10",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert f"{tmp_path / 'train'}: 48 rows in 1 npy shard(s), 0.2 MB" in done.stdout
    assert "wrote" in done.stdout and " s\n" in done.stdout

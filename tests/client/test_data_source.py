"""Client.submit(data=...): a source the workers read, checked at the door like arrays are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pscluster.client.errors import InvalidJobError
from pscluster.client.payload import build_payload
from pscluster.v1 import coordinator_pb2 as co_pb2
from tests.client import user_sources
from tests.client.user_code import Classifier


def submit_args(**changes: Any) -> dict[str, Any]:
    return {"epochs": 1, "batch_size": 4, **changes}


def test_a_function_source_ships_its_code_and_uploads_no_data() -> None:
    payload = build_payload(
        Classifier, None, None, data=user_sources.make_rows, **submit_args(data_args={"rows": 30})
    )
    data = payload.spec.data
    assert (data.source, data.function) == ("function", "tests.client.user_sources:make_rows")
    assert json.loads(data.args_json) == {"rows": 30}
    assert (data.loader_workers, data.prefetch_batches) == (1, 2)
    shipped = {f.module for f in payload.spec.model.files}
    assert "tests.client.user_sources" in shipped
    chunks = list(payload.chunks(1 << 20))
    assert {c.blob.blob for c in chunks if c.HasField("blob")} == {"initial_state"}
    assert chunks[-1].end.blob_bytes == len(payload.initial_state)


def test_a_file_reference_loads_the_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mydata.py").write_text(Path(user_sources.__file__).read_text())
    monkeypatch.chdir(tmp_path)
    payload = build_payload(Classifier, None, None, data="mydata.py:make_rows", **submit_args())
    assert payload.spec.data.function.endswith(":make_rows")


def test_a_built_in_reader_whose_folder_only_the_workers_have_is_left_to_them() -> None:
    payload = build_payload(
        Classifier, None, None, data="npy", **submit_args(data_args={"path": "/data/big"})
    )
    assert payload.spec.data == co_pb2.DataSpec(
        source="npy",
        args_json=json.dumps({"path": "/data/big"}),
        loader_workers=1,
        prefetch_batches=2,
    )


@pytest.mark.parametrize(
    ("data", "changes", "message"),
    [
        (None, {}, "pass the data: train=.*or data=make_dataset"),
        ("npy", {}, r"data='npy' needs data_args=\{'path'"),
        ("csv", {}, "neither a built-in source"),
        ("nofile.py:make", {}, "data: no file"),
        (lambda split: [], {}, "nested or a lambda"),
        (user_sources.Rows, {}, "is not a function"),
        (user_sources.make_rows, {"data_args": {"rows": object()}}, "JSON-serialisable"),
        (user_sources.make_rows, {"loader_workers": -1}, "loader_workers must be an integer"),
        (user_sources.make_nothing, {}, "returned int for split 'train'.*map-style"),
        (user_sources.make_typo, {}, "raised TypeError.*rowz"),
        (user_sources.make_rows, {"data_args": {"label_offset": 5}}, "labels"),
        (user_sources.make_rows, {"data_args": {"nan_row": 2}}, "NaN or infinite"),
        (user_sources.make_rows, {"data_args": {"rows": 0}}, "split is empty"),
    ],
)
def test_mistakes_in_a_source_are_refused_at_submit(
    data: Any, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        build_payload(Classifier, None, None, data=data, **submit_args(**changes))


def test_arrays_and_a_source_together_are_refused() -> None:
    train = ([[0.0] * 4] * 4, [0, 1, 2, 0])
    with pytest.raises(InvalidJobError, match="not both"):
        build_payload(Classifier, train, train, data=user_sources.make_rows, **submit_args())


def test_more_partitions_than_the_sources_blocks_are_refused(tmp_path: Path) -> None:
    # 30 rows in Parquet row groups of 10: 3 blocks, so at most 3 partitions.
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "train").mkdir()
    table = pa.table({"a": [float(i) for i in range(30)], "y": [i % 3 for i in range(30)]})
    pq.write_table(table, tmp_path / "train" / "part-0.parquet", row_group_size=10)
    pq.write_table(table, tmp_path / "test.parquet", row_group_size=10)
    args = {"path": str(tmp_path), "x": ["a", "a", "a", "a"], "y": "y"}
    with pytest.raises(InvalidJobError, match=r"30 rows in 3 block\(s\) of 10.*partitions <= 3"):
        build_payload(
            Classifier, None, None, data="parquet", **submit_args(data_args=args, partitions=4)
        )
    payload = build_payload(
        Classifier, None, None, data="parquet", **submit_args(data_args=args, partitions=3)
    )
    assert payload.spec.data.source == "parquet"

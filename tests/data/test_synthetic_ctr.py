"""Synthetic CTR data: deterministic per shard, Criteo-like in shape, with a true AUC ceiling."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from examples import make_ctr_data
from pscluster.data.sources.npy import NpySource
from pscluster.data.synthetic_ctr import (
    CRITEO_CARDINALITIES,
    DENSE,
    CtrBatch,
    CtrSpec,
    bayes_auc,
    criteo_cardinalities,
    generate,
    zipf_ranks,
)
from pscluster.data.synthetic_ctr_npy import write_npy

TINY = CtrSpec(seed=3, cardinalities=criteo_cardinalities(1e-3))


def _same(a: CtrBatch, b: CtrBatch) -> bool:
    fields = ("dense", "sparse", "label", "prob")
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)


def test_a_stream_is_the_same_rows_whatever_else_was_made() -> None:
    # Prepare
    first = generate(TINY, 40_000, 2)  # more than one CHUNK
    # Execute
    generate(TINY, 500, 0)
    again = generate(TINY, 40_000, 2)
    # Assert
    assert _same(first, again)
    assert not np.array_equal(generate(TINY, 500, 3).sparse, first.sparse[:500])
    other_seed = dataclasses.replace(TINY, seed=4)
    assert not np.array_equal(generate(other_seed, 500, 2).dense, first.dense[:500])


def test_shapes_dtypes_ranges_and_the_positive_rate() -> None:
    for spec in (TINY, CtrSpec(), dataclasses.replace(TINY, positive_rate=0.1)):
        batch = generate(spec, 100_000, 0)
        slots = len(spec.cardinalities)
        assert batch.dense.shape == (100_000, DENSE) and batch.dense.dtype == np.float32
        assert batch.sparse.shape == (100_000, slots) and batch.sparse.dtype == np.int64
        assert batch.label.dtype == np.float32 and set(np.unique(batch.label)) == {0.0, 1.0}
        assert batch.sparse.min() >= 0
        assert (batch.sparse.max(axis=0) < np.array(spec.cardinalities)).all()
        assert batch.dense.min() >= 0 and batch.dense.max() < 20  # log1p of counts: O(1)
        assert batch.label.mean() == pytest.approx(spec.positive_rate, abs=0.01)
        assert batch.prob.mean() == pytest.approx(spec.positive_rate, abs=0.01)


def test_hashed_ids_are_a_renaming_over_the_int64_range() -> None:
    # Prepare
    hashed = dataclasses.replace(TINY, hashed=True)
    # Execute
    raw, mixed = generate(TINY, 20_000, 1), generate(hashed, 20_000, 1)
    # Assert
    assert mixed.sparse.min() >= 0 and mixed.sparse.max() > 2**62
    assert np.array_equal(raw.prob, mixed.prob) and np.array_equal(raw.label, mixed.label)
    for slot in range(raw.sparse.shape[1]):  # one hashed id per raw id, no two slots alike
        pairs = np.unique(np.stack([raw.sparse[:, slot], mixed.sparse[:, slot]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert len(np.intersect1d(mixed.sparse[:, 8], mixed.sparse[:, 19])) == 0


def test_zipf_ranks_follow_the_bounded_power_law() -> None:
    u = np.random.default_rng(0).random(200_000)
    n = np.full_like(u, 100_000, dtype=np.int64)
    for alpha in (0.8, 1.0, 1.1, 1.5):
        ranks = zipf_ranks(u, n, alpha)
        s = 1.0 - alpha  # P(rank < k) = P(x < k + 1) for a density x**-alpha on [1, n + 1)
        cdf = np.log(1001) / np.log(100_001) if s == 0 else (1001**s - 1) / (100_001**s - 1)
        assert (ranks < 1000).mean() == pytest.approx(cdf, abs=0.005)
        assert ranks.min() == 0 and ranks.max() < 100_000


def test_the_hottest_ids_carry_more_of_a_big_slot_as_alpha_grows() -> None:
    big = int(np.argmax(criteo_cardinalities(0.01)))
    shares = []
    for alpha in (0.8, 1.1, 1.4):
        spec = CtrSpec(cardinalities=criteo_cardinalities(0.01), alpha=alpha)
        ids = generate(spec, 50_000, 0).sparse[:, big]
        counts = np.sort(np.bincount(ids, minlength=spec.cardinalities[big]))[::-1]
        shares.append(counts[: spec.cardinalities[big] // 100].sum() / len(ids))  # top 1%
        hottest = np.argsort(np.bincount(ids))[::-1][:10]
        assert set(hottest.tolist()) != set(range(10))  # ranks are permuted, not 0, 1, 2...
    assert shares[1] > 0.5 and shares[0] < shares[1] < shares[2]


def _one_hot_lr_auc(train: CtrBatch, test: CtrBatch) -> float:
    """A logistic regression on the one-hot ids and the standardised dense features."""
    columns = ColumnTransformer(
        [
            ("dense", StandardScaler(), list(range(DENSE))),
            ("ids", OneHotEncoder(handle_unknown="ignore"), list(range(DENSE, DENSE + 26))),
        ]
    )
    model = make_pipeline(columns, LogisticRegression(C=0.5, max_iter=200))
    model.fit(np.hstack([train.dense, train.sparse]), train.label)
    score = model.decision_function(np.hstack([test.dense, test.sparse]))
    return float(roc_auc_score(test.label, score))


def test_a_logistic_regression_nears_but_does_not_pass_the_bayes_auc() -> None:
    # Prepare: ~3400 one-hot columns, so that 40k rows learn most ids' effects
    mini = CtrSpec(seed=3, cardinalities=criteo_cardinalities(1e-4))
    train, test = generate(mini, 40_000, 0), generate(mini, 40_000, 1)
    # Execute
    ceiling, learned = bayes_auc(test), _one_hot_lr_auc(train, test)
    # Assert: it misses the pair and dense-product effects, and can never beat the truth
    assert ceiling == pytest.approx(roc_auc_score(test.label, test.prob), abs=1e-9)
    assert ceiling > 0.75
    assert ceiling - 0.06 < learned < ceiling + 0.005, (learned, ceiling)


def test_default_cardinalities_need_memory_for_rows_not_ids() -> None:
    # Prepare
    generate(CtrSpec(), 10, 0)  # the bias is calibrated once per spec, outside the trace
    tracemalloc.start()
    # Execute
    try:
        batch = generate(CtrSpec(), 1_000_000, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Assert
    output = sum(a.nbytes for a in (batch.dense, batch.sparse, batch.label, batch.prob))
    assert peak - output < 64 * 2**20  # a float64 table of the 10M-id slot alone is 80 MB
    assert sum(CRITEO_CARDINALITIES) * 8 > 4 * 64 * 2**20


def test_the_script_writes_shards_the_npy_source_reads(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "ctr"
    args = ["--out", str(out), "--rows", "2500", "--test-rows", "1200", "--shard-rows", "1000"]
    # Execute
    make_ctr_data.main([*args, "--scale", "0.001", "--seed", "3"])
    # Assert
    manifest = json.loads((out / "manifest.json").read_text())
    assert CtrSpec.from_json(manifest["spec"]) == TINY
    assert manifest["train"]["shards"] == 3 and manifest["test"]["rows"] == 1200
    assert 0.7 < manifest["bayes_auc"] < 1
    samples = NpySource({"path": str(out)}).open("train")
    assert len(samples) == 2500
    batch = samples.__getitems__([2400, 5, 1001])
    shard = generate(TINY, 500, 2)  # the last shard, made alone
    assert isinstance(batch.x, dict) and set(batch.x) == {"dense", "sparse"}
    assert batch.x["dense"].dtype.is_floating_point and batch.x["sparse"].shape == (3, 26)
    np.testing.assert_array_equal(batch.x["sparse"][0].numpy(), shard.sparse[400])
    np.testing.assert_array_equal(batch.x["dense"][0].numpy(), shard.dense[400])
    np.testing.assert_array_equal(batch.y[0].numpy(), shard.label[400])
    assert len(NpySource({"path": str(out)}).open("test")) == 1200


def test_write_npy_reports_and_refuses_bad_sizes(tmp_path: Path) -> None:
    report = write_npy(TINY, tmp_path, rows=300, shard_rows=300, test_rows=300)
    assert report["train"]["bytes"] == sum(f.stat().st_size for f in (tmp_path / "train").iterdir())
    with pytest.raises(ValueError, match="must be >= 1"):
        write_npy(TINY, tmp_path, rows=0, shard_rows=10, test_rows=10)
    with pytest.raises(ValueError, match="two different slots"):
        CtrSpec(pairs=((1, 1),))

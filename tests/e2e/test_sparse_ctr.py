"""Click-through prediction on Criteo-like data (synthetic, with a planted logistic model):
two async workers with the id weights on the shards reach the AUC of the same model trained
in one process with torch's sparse Adagrad, within 0.005."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from pscluster.data.partitions import batches
from pscluster.data.synthetic_ctr import (
    CtrBatch,
    CtrSpec,
    bayes_auc,
    criteo_cardinalities,
    generate,
)
from pscluster.model.objective import rank_auc
from tests.e2e.conftest import start_cluster
from tests.e2e.sparse_models import SlotLogit

pytestmark = pytest.mark.slow

SEED, EPOCHS, BATCH, PARTITIONS, ROWS = 0, 12, 128, 4, 30_000
# About a thousand ids over the 26 slots: every id is seen often enough for the weights to
# converge in 12 epochs, where the AUC no longer depends on the order of the batches.
CARDINALITIES = list(criteo_cardinalities(3e-5))
DENSE_LR, SPARSE_LR = 0.003, 0.1


def arrays(batch: CtrBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    x = {"dense": torch.from_numpy(batch.dense), "sparse": torch.from_numpy(batch.sparse)}
    return x, torch.from_numpy(batch.label)


def one_process_auc(
    train: tuple[dict[str, torch.Tensor], torch.Tensor],
    test: tuple[dict[str, torch.Tensor], torch.Tensor],
) -> float:
    torch.manual_seed(SEED)
    model = SlotLogit(CARDINALITIES)
    dense = torch.optim.Adam(model.dense.parameters(), lr=DENSE_LR)
    sparse = torch.optim.Adagrad(model.ids.parameters(), lr=SPARSE_LR)
    (x, y) = train
    for epoch in range(EPOCHS):
        for partition in range(PARTITIONS):
            for idx in batches(len(y), PARTITIONS, partition, epoch, BATCH, SEED):
                dense.zero_grad()
                sparse.zero_grad()
                out = model(x["dense"][idx], x["sparse"][idx])
                F.binary_cross_entropy_with_logits(out, y[idx]).backward()  # type: ignore[no-untyped-call]
                dense.step()
                sparse.step()
    with torch.no_grad():
        return rank_auc(test[1], model(**test[0]))


def test_two_async_workers_reach_the_single_process_auc(tmp_path: Path) -> None:
    # Prepare
    spec = CtrSpec(seed=1, cardinalities=tuple(CARDINALITIES))
    train_batch, test_batch = generate(spec, ROWS, 0), generate(spec, 10_000, 1)
    train, test = arrays(train_batch), arrays(test_batch)
    expected = one_process_auc(train, test)

    # Execute
    cluster = start_cluster(tmp_path, shards=2, workers=2)
    try:
        with cluster.client() as client:
            job = client.submit(
                model=SlotLogit,
                model_kwargs={"cardinalities": CARDINALITIES},
                train=train,
                test=test,
                loss="bce_with_logits",
                metric="auc",
                mode="async",
                optimizer={"name": "adam", "lr": DENSE_LR},
                sparse_optimizer={"name": "adagrad", "lr": SPARSE_LR},
                epochs=EPOCHS,
                batch_size=BATCH,
                partitions=PARTITIONS,
                seed=SEED,
            )
            info = job.wait(timeout=600)
            state = job.fetch_model()
            metrics = job.metrics()
    finally:
        cluster.stop()

    # Assert: the reported AUC is the fetched model's, and within 0.005 of one process's.
    assert info.state == "completed", info.error
    model = SlotLogit(CARDINALITIES)
    model.load_state_dict(state)
    with torch.no_grad():
        fetched = rank_auc(test[1], model(**test[0]))
    assert info.metric_value == pytest.approx(fetched, abs=1e-6)
    assert abs(fetched - expected) <= 0.005, (fetched, expected)
    assert fetched < bayes_auc(test_batch)
    assert len(metrics.pushes_by_worker) == 2

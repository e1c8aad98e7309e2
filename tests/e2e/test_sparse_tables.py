"""Embedding tables on the shards, end to end: one worker in sync is single-process PyTorch
with torch's own sparse optimizers, mistakes are refused at submit, and the fetched model
holds the trained tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from pscluster.client.errors import InvalidJobError, PSClusterError
from pscluster.client.local import LocalCluster
from pscluster.client.sdk import Client, Job
from pscluster.data.partitions import batches
from pscluster.model.objective import rank_auc
from tests.e2e.conftest import start_cluster
from tests.e2e.sparse_models import MatrixFactorization, MeanBag, Recommender, TinyCTR

SEED, EPOCHS, BATCH, PARTITIONS = 3, 2, 32, 2
Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # 3 shards: every table's rows are spread by id % 3, the dense vector cut in three.
    c = start_cluster(tmp_path_factory.mktemp("sparse"), shards=3, workers=1)
    try:
        yield c
    finally:
        c.stop()


def ctr_data(n: int, seed: int) -> tuple[Inputs, torch.Tensor]:
    """Clicks planted on item and user effects; user 0 is "unknown" (the padding row)."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, 997, (n, 6), generator=g)
    user = torch.randint(0, 50, (n,), generator=g)
    dense = torch.randn(n, 3, generator=g)
    effect = torch.randn(997, generator=g)
    logit = effect[items].sum(1) / 2 + torch.randn(50, generator=g)[user] + dense[:, 0]
    y = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    return (items, user, dense), y


def train_one_process(
    model: nn.Module,
    train: tuple[Inputs, torch.Tensor],
    dense_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    sparse_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    epochs: int = EPOCHS,
) -> dict[str, torch.Tensor]:
    """The one-worker job's batches, in its order, with a dense and a sparse optimizer."""
    tables = [
        p for n, p in model.named_parameters() if n.endswith(("items.weight", "users.weight"))
    ]
    dense = [p for n, p in model.named_parameters() if not any(p is t for t in tables)]
    opts = [dense_opt(dense), sparse_opt(tables)]
    (items, user, feats), y = train
    for epoch in range(epochs):
        for partition in range(PARTITIONS):
            for idx in batches(len(y), PARTITIONS, partition, epoch, BATCH, SEED):
                for opt in opts:
                    opt.zero_grad()
                out = model(items[idx], user[idx], feats[idx])
                F.binary_cross_entropy_with_logits(out, y[idx]).backward()  # type: ignore[no-untyped-call]
                for opt in opts:
                    opt.step()
    return model.state_dict()


SparseOpt = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def hashed_ids() -> tuple[torch.Tensor, torch.Tensor]:
    """2,000 bags of 3 of 300 hashed ids anywhere in int64, the label planted on the first
    id's parity (Recommender's data): 1,500 to train, 500 to test."""
    g = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 2**40, (300,), generator=g)
    items = pool[torch.randint(0, 300, (2000, 3), generator=g)]
    return items, (items[:, 0] % 2).float()


def submit_recommender(
    client: Client, items: torch.Tensor, y: torch.Tensor, **options: object
) -> Job:
    """Recommender on :func:`hashed_ids` (first 1,500 to train), scored by AUC."""
    return client.submit(
        model=Recommender,
        train=(items[:1500], y[:1500]),
        test=(items[1500:], y[1500:]),
        loss="bce_with_logits",
        metric="auc",
        optimizer={"name": "adam", "lr": 0.01},
        sparse_optimizer={"name": "adagrad", "lr": 0.2},
        batch_size=50,
        **options,  # type: ignore[arg-type]
    )


def recommender_auc(
    state: dict[str, torch.Tensor], items: torch.Tensor, y: torch.Tensor
) -> tuple[Recommender, float]:
    """The fetched ``state`` in the user's own Recommender, and its AUC on ``items``."""
    model = Recommender()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model, rank_auc(y, model(items))


def exact_reference(
    torch_sparse: SparseOpt, epochs: int = EPOCHS
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """TinyCTR's initial state (sent as init_from) and what one process trains from it on
    the one-worker job's batches: Adam (lr 0.01) on the dense part, ``torch_sparse`` on the
    tables."""
    torch.manual_seed(SEED)
    model = TinyCTR()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    adam: SparseOpt = lambda p: torch.optim.Adam(p, lr=0.01)  # noqa: E731
    return initial, train_one_process(model, ctr_data(400, 1), adam, torch_sparse, epochs)


def submit_exact(
    client: Client,
    sparse: dict[str, object],
    initial: dict[str, torch.Tensor],
    epochs: int,
    **options: object,
) -> Job:
    """The job :func:`exact_reference` stands for: sync, from ``initial``."""
    return client.submit(
        model=TinyCTR,
        train=ctr_data(400, 1),
        test=ctr_data(100, 2),
        loss="bce_with_logits",
        mode="sync",
        optimizer={"name": "adam", "lr": 0.01},
        sparse_optimizer=sparse,
        epochs=epochs,
        batch_size=BATCH,
        partitions=PARTITIONS,
        seed=SEED,
        init_from=initial,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("sparse", "torch_sparse"),
    [
        ({"name": "adagrad", "lr": 0.1}, lambda p: torch.optim.Adagrad(p, lr=0.1)),
        ({"name": "lazy_adam", "lr": 0.01}, lambda p: torch.optim.SparseAdam(p, lr=0.01)),
    ],
    ids=["adagrad", "lazy_adam"],
)
def test_one_worker_in_sync_is_single_process_torch_with_sparse_gradients(
    one_worker: LocalCluster,
    sparse: dict[str, object],
    torch_sparse: SparseOpt,
) -> None:
    # Prepare: the same initial model here and in the job (its tables sent as init_from).
    initial, expected = exact_reference(torch_sparse)

    # Execute
    with one_worker.client() as client:
        job = submit_exact(client, sparse, initial, EPOCHS)
        info = job.wait(timeout=300)
        remote = job.fetch_model()

    # Assert: tables and dense parameters as torch trained them; the padding row untouched.
    assert info.state == "completed", info.error
    assert remote.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(remote[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert float(remote["users.weight"][0].abs().sum()) == 0.0


def test_the_fetched_model_scores_what_the_job_reported(
    one_worker: LocalCluster, tmp_path: Path
) -> None:
    # Prepare: no init_from (the table starts with the rows its constructor gives it), mean
    # bags.
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 5000, (600, 4), generator=g)
    y = torch.remainder(ids[:, 0], 3)  # the class lives in the first id's row

    # Execute
    with one_worker.client() as client:
        job = client.submit(
            model=MeanBag,
            train=(ids[:500], y[:500]),
            test=(ids[500:], y[500:]),
            mode="async",
            optimizer={"name": "adam", "lr": 0.01},
            sparse_optimizer={"name": "rowwise_adagrad", "lr": 0.5},
            epochs=3,
            batch_size=50,
        )
        info = job.wait(timeout=300)
        state = job.fetch_model()
        looked_up = job.lookup("bag.weight", [4999, 0, 17, 17])
        saved = load_file(job.save_model(tmp_path / "bag.safetensors"))
        metrics = job.metrics()
        with pytest.raises(PSClusterError, match="no table 'bag'"):
            job.lookup("bag", [1])

    # Assert: the fetched tables load into the user's own (unhosted) model and score the same.
    assert info.state == "completed", info.error
    assert torch.equal(looked_up, state["bag.weight"][[4999, 0, 17, 17]])
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], v) for k, v in state.items())
    (table,) = metrics.tables
    assert table.rows == 5000 and sorted(table.rows_per_shard) == [1666, 1667, 1667]
    assert table.imbalance == pytest.approx(1.0, abs=0.01)
    assert 0 < table.rows_pushed <= metrics.pushes_applied * 50 * 4
    assert table.hot_ids and table.hot_ids[0][1] >= table.hot_ids[-1][1]
    model = MeanBag()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(ids[500:]).argmax(1) == y[500:]).float().mean())
    assert info.test_accuracy == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sparse_optimizer": None}, "pass sparse_optimizer"),
        ({"sparse_optimizer": {"name": "adamw", "lr": 0.1}}, "not supported"),
        ({"local_steps": 4}, "local_steps cannot be used"),
        ({"bad_id": True}, "has ids 0 .. 996; got id 997"),
    ],
    ids=["no-sparse-optimizer", "unknown-sparse-optimizer", "local-steps", "id-out-of-range"],
)
def test_mistakes_with_tables_are_refused_at_submit(
    one_worker: LocalCluster, change: dict[str, object], message: str
) -> None:
    (items, user, dense), y = ctr_data(64, 4)
    if change.pop("bad_id", False):
        items = items.clone()
        items[10, 2] = 997
    options: dict[str, object] = {"sparse_optimizer": {"name": "sgd", "lr": 0.1}, **change}
    with one_worker.client() as client, pytest.raises(InvalidJobError, match=message):
        client.submit(
            model=TinyCTR,
            train=((items, user, dense), y),
            test=((items, user, dense), y),
            loss="bce_with_logits",
            **options,  # type: ignore[arg-type]
        )


def test_a_dynamic_table_admits_ids_on_the_shards_and_the_fetched_model_holds_them(
    one_worker: LocalCluster,
) -> None:
    # Prepare: 300 hashed ids anywhere in int64, the label planted on the first id's parity.
    items, y = hashed_ids()
    # Ids only the test split has: evaluation (every epoch) must not admit them.
    items[1500:, 2] = 2**41 + torch.arange(500)

    # Execute
    with one_worker.client() as client:
        job = submit_recommender(client, items, y, epochs=4)
        info = job.wait(timeout=300)
        state = job.fetch_model()
        (table,) = job.metrics().tables
        unknown = job.lookup("items.weight", [7])

    # Assert: rows were admitted at their second lookup (their first gradients dropped), the
    # fetched ids and rows load into the user's module, and it scores what the job reported.
    assert info.state == "completed", info.error
    assert table.admitted == state["items.ids"].numel() == 300 == table.rows
    assert table.dropped > 0
    model, auc = recommender_auc(state, items[1500:], y[1500:])
    with torch.no_grad():
        assert torch.equal(unknown, model.items.rows_of(torch.tensor([7])))
    assert info.metric_value == pytest.approx(auc, abs=1e-6)
    assert auc > 0.7


def test_rows_travel_in_half_precision_when_the_job_compresses_to_it(
    one_worker: LocalCluster,
) -> None:
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 5000, (400, 4), generator=g)
    y = torch.remainder(ids[:, 0], 3)

    with one_worker.client() as client:
        job = client.submit(
            model=MeanBag,
            train=(ids[:300], y[:300]),
            test=(ids[300:], y[300:]),
            optimizer={"name": "adam", "lr": 0.01},
            sparse_optimizer={"name": "sgd", "lr": 1.0},
            compression={"name": "fp16", "pull_dtype": "float16"},
            epochs=2,
            batch_size=50,
        )
        info = job.wait(timeout=300)
        (table,) = job.metrics().tables

    # Assert: 2 bytes a value both ways (ids stay int64 in pushes).
    assert info.state == "completed", info.error
    assert table.bytes_looked_up == table.rows_looked_up * 16 * 2
    assert table.bytes_pushed == table.rows_pushed * (8 + 16 * 2)


def test_a_model_of_tables_alone_trains(one_worker: LocalCluster) -> None:
    # A planted low-rank preference: user u likes item i when u % 3 == i % 3.
    g = torch.Generator().manual_seed(8)
    user, item = (
        torch.randint(0, 100, (4000,), generator=g),
        torch.randint(0, 200, (4000,), generator=g),
    )
    y = ((user % 3) == (item % 3)).float()

    with one_worker.client() as client:
        job = client.submit(
            model=MatrixFactorization,
            train=((user[:3000], item[:3000]), y[:3000]),
            test=((user[3000:], item[3000:]), y[3000:]),
            loss="bce_with_logits",
            metric="auc",
            sparse_optimizer={"name": "adagrad", "lr": 0.3},
            epochs=8,
            batch_size=50,
        )
        info = job.wait(timeout=300)

    assert info.state == "completed", info.error
    assert info.num_params == 0 and info.metric_value is not None and info.metric_value > 0.6

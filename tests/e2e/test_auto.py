"""Mode "auto" on real clusters of processes, two shards each.

Three normal workers and one five times slower (``PSC_SLOWDOWN=5``), with local steps ruled
out (``PSC_AUTO_MAX_LOCAL_STEPS=1``) so that the staleness ladder is what is tested: the
digits job goes to async at its first report and stays there while its loss falls; the same
job at a learning rate where staleness stalls it is sent back to a staleness-free setting (a
backup worker for the straggler) and to the parameters of its last good block under async
(or where async began), says why in its events, and still reaches 95%. The switches reach the
shards by their SetConsistency RPC while pushes go on.

Four equal workers with local steps allowed: the digits MLP's pulls and pushes outweigh its
compute many times over on loopback, so auto starts it in sync with local steps, the workers
follow the number their pulls carry, and the model fetched is the one the job reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pscluster.client.errors import InvalidJobError
from pscluster.client.local import LocalCluster
from pscluster.client.spec_file import load_job_file
from tests.e2e.conftest import start_cluster
from tests.e2e.data import accuracy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STRAGGLER = "straggler"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(
        tmp_path_factory.mktemp("auto"), shards=2, workers=3, PSC_AUTO_MAX_LOCAL_STEPS="1"
    )
    try:
        c.add_worker(wait=True, env={"PSC_SLOWDOWN": "5", "PSC_WORKER_ID": STRAGGLER})
        yield c
    finally:
        c.stop()


def train(cluster: LocalCluster, lr: float, epochs: int) -> tuple[float, list[str], dict[str, int]]:
    """Trains the digits job in mode auto; returns its best per-epoch test accuracy (what
    bench/auto.py times: the first evaluation at the target), its switches and its rejected
    pushes. The last evaluation is not the measure: at lr 0.2 with momentum it swings by a
    few of the 360 test digits from epoch to epoch (0.939-0.972 seen)."""
    kwargs = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
    kwargs.update(mode="auto", staleness=0, epochs=epochs, seed=1)
    kwargs["optimizer"] = {**kwargs["optimizer"], "lr": lr}
    with cluster.client() as client:
        job = client.submit(**kwargs)
        info = job.wait(timeout=300)
        m = job.metrics()
    assert info.state == "completed", info.error or info.status_message
    assert info.mode == "auto"
    switches = [e.message for e in m.events if e.kind == "consistency"]
    best = max((e.test_accuracy for e in m.epochs), default=0.0)
    return best, switches, m.pushes_rejected


def test_auto_runs_async_while_the_loss_falls(cluster: LocalCluster) -> None:
    # Execute
    accuracy, switches, _ = train(cluster, lr=0.05, epochs=12)

    # Assert
    assert accuracy >= 0.95, (accuracy, switches)
    assert switches[0].startswith("sync -> async: no sign that staleness costs"), switches


def test_auto_leaves_async_when_the_loss_stalls_and_says_why(cluster: LocalCluster) -> None:
    # Execute (bench/auto.py: before the trial was undone, 6-16 epochs to 95% after the
    # detour through async, and a CI run had 0.944 at best after 30; undone, see below)
    accuracy, switches, rejected = train(cluster, lr=0.2, epochs=30)

    # Assert
    assert accuracy >= 0.95, (accuracy, switches)
    assert switches[0].startswith("sync -> async"), switches
    verdict = switches[1]
    assert verdict.startswith("async -> sync") and "training loss" in verdict, switches
    # What async did is undone: the shards went back to their copy (where async began, or its
    # last block judged fine below that; a CI run fell to 0.74 and then rose to 2.7).
    assert "the parameters go back to where" in verdict, switches
    # The straggler is relieved by a backup worker (in the verdict or once measured), and the
    # shards did switch: its pushes for closed steps were dropped as late.
    backup = [m for m in switches[1:] if "-> sync with 1 backup worker(s)" in m]
    assert backup and STRAGGLER in backup[0], switches
    assert rejected.get("late", 0) > 0, rejected


def test_auto_refuses_a_staleness_of_its_own(cluster: LocalCluster) -> None:
    # Prepare
    kwargs = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
    kwargs.update(mode="auto", staleness=2)

    # Execute / Assert
    with cluster.client() as client, pytest.raises(InvalidJobError, match="remove staleness"):
        client.submit(**kwargs)


def test_auto_takes_local_steps_where_communication_outweighs_compute(
    tmp_path: Path,
) -> None:
    # Prepare: four equal workers, local steps allowed (the coordinator's default)
    cluster = start_cluster(tmp_path, shards=2, workers=4)
    example = load_job_file(ROOT / "examples" / "digits.yaml")
    kwargs = example.submit_kwargs()
    kwargs.update(mode="auto", staleness=0, epochs=8, seed=3)
    kwargs["optimizer"] = {**kwargs["optimizer"], "lr": 0.2}

    # Execute
    try:
        with cluster.client() as client:
            job = client.submit(**kwargs)
            info = job.wait(timeout=300)
            m = job.metrics()
            state = job.fetch_model()
    finally:
        cluster.stop()

    # Assert: sync with local steps from the first report, and no verdict against them
    assert info.state == "completed", info.error or info.status_message
    switches = [e.message for e in m.events if e.kind == "consistency"]
    # (no more local steps than a partition has batches: the digits job's 12 partitions hold
    # 3-4 batches each, and a window ends at its lease's end)
    assert switches[0].startswith("sync -> sync with 4 local steps: a window's pull and push"), (
        switches
    )
    # It reached the target (as bench/auto.py times it: at lr 0.2 the accuracy of the last of
    # 8 epochs may dip a little, 0.947 in one CI run), and ended near it
    reached = max(e.test_accuracy for e in m.epochs)
    assert reached >= 0.95, ([e.test_accuracy for e in m.epochs], switches)
    assert info.test_accuracy is not None and info.test_accuracy >= 0.9, (info, switches)
    # Decided at the first report, which a worker's first lease of a job sends after its first
    # window: the job starts in plain sync, so the four workers were a step or so in (half a
    # second of reports, the default, would be a dozen steps here)
    decided = next(e.unix_time for e in m.events if e.kind == "consistency")
    before = [s for s in m.steps if s.unix_time < decided]
    assert len(before) <= 6, (len(before), switches)
    # A push per window of four, not per batch (a window ends at its lease's end; before the
    # first report each worker pushed a batch or so on its own)
    steps = len(m.steps)
    for shard in m.shards:
        assert 0 < shard.pushes_applied <= steps // 3, (shard.pushes_applied, steps)
    model = kwargs["model"](**kwargs["model_kwargs"])
    model.load_state_dict(state)
    assert accuracy(model, *kwargs["test"]) == pytest.approx(info.test_accuracy, abs=1e-9)

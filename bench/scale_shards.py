"""What moving a running job between shards costs: the pause in its pushes, and where it goes.

A local cluster of registering shards (2 workers, async) trains WideNet (bench/
compression_model.py) widened to ``--hidden`` (4544: 25.3M parameters, 101 MB of float32,
with SGD momentum another 101 MB of optimizer state) on digits upsampled to 32x32. Once the
job is past ``--warmup`` steps a third shard starts and ``scale_shards(3)`` moves the job onto
it; after as many steps again ``scale_shards(2)`` moves it back. Each move reports the time
until every worker was between two steps (quiesce) and then the pause of its pulls, split into
export (the old shards' skeletons: their states but the values and moments), recut and adopt
(the new shards take their part, keeping what they held and receiving the ranges that change
shard, checkpointed, plus the store's commit), and the bytes sent.

The baseline, measured in the same run on the same shards: one observer pull of the whole
model (``JobShards.pull``, parameters only), i.e. what any worker spends every step anyway.
A move sends the half of the parameters and momentum that changes shard (one such transfer,
relayed by the coordinator) and checkpoints every new shard's part; the ratio says how close
it is to that.

With ``--table-rows N`` the job is a bag-of-ids classifier whose one embedding table (N rows
of 16, rowwise adagrad: N x 68 bytes on the shards, drawn there) is nearly all of it: what a
move of a sparse job costs, its rows read by each new shard from the old ones. Its baseline
pull is of the few dense parameters only, so its ratio says little.

    .venv/bin/python bench/scale_shards.py [--hidden 4544] [--warmup 30] [--table-rows 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from bench.compression import upsampled  # noqa: E402
from bench.compression_model import WideNet  # noqa: E402
from bench.scale_shards_model import TableBag  # noqa: E402
from pscluster.client.job import Job  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.scaling import JobMove, ShardScaling  # noqa: E402
from pscluster.client.sdk import Client  # noqa: E402
from pscluster.client.spec_file import load_job_file  # noqa: E402
from pscluster.config import Settings  # noqa: E402
from pscluster.shard_client import JobShards, ShardClient, ShardRange  # noqa: E402
from pscluster.transport.channel import open_channel  # noqa: E402
from pscluster.v1 import coordinator_pb2 as co_pb2  # noqa: E402
from pscluster.v1 import coordinator_pb2_grpc as co_grpc  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def pull_seconds(address: str, job_id: str, repeats: int = 3) -> float:
    """The median time of one observer pull of the job's whole parameter vector."""
    channel = open_channel(address)
    client = ShardClient(Settings())
    try:
        plan = co_grpc.CoordinatorStub(channel).GetJobPlan(
            co_pb2.GetJobRequest(job_id=job_id), timeout=30
        )
        shards = JobShards(
            client,
            job_id,
            [ShardRange.from_proto(r) for r in plan.shards],
            plan.layout_generation,
        )
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            shards.pull("", None, 60)
            times.append(time.perf_counter() - began)
        return sorted(times)[len(times) // 2]
    finally:
        client.close()
        channel.close()


def wait_steps(job: Job, steps: int, timeout: float = 900) -> int:
    deadline = time.monotonic() + timeout
    while (now := job.info().steps) < steps:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job.id} did not pass step {steps} in {timeout}s")
        time.sleep(0.2)
    return now


def only_move(result: ShardScaling, job: Job) -> JobMove:
    if len(result.jobs) != 1:
        info = job.info()
        raise RuntimeError(f"expected one move, got {result}; the job: {info.state} {info.error}")
    if not result.jobs[0].moved:
        raise RuntimeError(f"the job did not move: {result.jobs[0].reason}")
    return result.jobs[0]


def row(label: str, move: JobMove, pull: float) -> dict[str, Any]:
    return {
        "move": label,
        "quiesce_s": round(move.quiesce_seconds, 3),
        "pause_s": round(move.pause_seconds, 3),
        "export_s": round(move.export_seconds, 3),
        "recut_s": round(move.recut_seconds, 3),
        "adopt_s": round(move.adopt_seconds, 3),
        "state_mb": round(move.state_bytes / 1e6, 1),
        "pull_s": round(pull, 3),
        "pause_per_pull": round(move.pause_seconds / pull, 2),
    }


def table_data(rows: int) -> tuple[Any, Any]:
    """Bags of 8 ids, the label planted on the first id's parity."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, rows, (4000, 8), generator=g)
    y = ids[:, 0] % 2
    return (ids[:3000], y[:3000]), (ids[3000:], y[3000:])


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    if args.table_rows:
        train, test = table_data(args.table_rows)
    else:
        digits = load_job_file(ROOT / "examples" / "digits.yaml").submit_kwargs()
        train, test = upsampled(digits["train"], digits["test"])
    cluster = LocalCluster(shards=2, workers=2, state_dir=folder, register_shards=True)
    with cluster, cluster.client() as client:
        job = submit(client, train, test, args)
        at = wait_steps(job, args.warmup)
        params = job.info().num_params
        before = pull_seconds(cluster.address, job.id)
        cluster.add_shard()
        grown = only_move(client.scale_shards(3, timeout=600), job)
        at = wait_steps(job, at + args.warmup)
        on_three = pull_seconds(cluster.address, job.id)
        shrunk = only_move(client.scale_shards(2, timeout=600), job)
        wait_steps(job, at + args.warmup)
        job.cancel()
    return {
        "params": params,
        "model_mb": round(params * 4 / 1e6, 1),
        "table_rows": args.table_rows,
        "rows": [row("2 -> 3", grown, before), row("3 -> 2", shrunk, on_three)],
    }


def submit(client: Client, train: Any, test: Any, args: argparse.Namespace) -> Job:
    if args.table_rows:
        model: dict[str, Any] = {
            "model": TableBag,
            "model_kwargs": {"rows": args.table_rows},
            "optimizer": {"name": "adam", "lr": 0.01},
            "sparse_optimizer": {"name": "rowwise_adagrad", "lr": 0.1},
        }
    else:
        model = {
            "model": WideNet,
            "model_kwargs": {"hidden": args.hidden},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        }
    return client.submit(
        train=train,
        test=test,
        mode="async",
        epochs=1000,  # cancelled once measured
        batch_size=32,
        **model,
    )


def table(result: dict[str, Any]) -> str:
    head = (
        "| move | to a step boundary | pause | export | recut | adopt | sent | one pull"
        " | pause / pull |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in result["rows"]:
        lines.append(
            f"| {r['move']} | {r['quiesce_s']:.2f} s | {r['pause_s']:.2f} s | {r['export_s']:.2f} s"
            f" | {r['recut_s']:.2f} s | {r['adopt_s']:.2f} s | {r['state_mb']:.0f} MB"
            f" | {r['pull_s']:.2f} s | {r['pause_per_pull']:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=4544)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--table-rows", type=int, default=0, help="a table job of this many rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale_shards-") as folder:
        try:
            result = run(args, Path(folder))
        except BaseException:
            logs = Path(folder) / "logs"
            for log in sorted(logs.glob("*.log")):
                print(f"--- {log.name}", *log.read_text().splitlines()[-15:], sep="\n")
            raise
    result["machine"] = machine()
    RESULTS.mkdir(exist_ok=True)
    name = f"scale_shards_table{args.table_rows}.json" if args.table_rows else "scale_shards.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    if args.table_rows:
        print(f"TableBag: {args.table_rows:,} rows of 16 on the shards")
    else:
        print(
            f"WideNet(hidden={args.hidden}): {result['params']:,} parameters, "
            f"{result['model_mb']} MB"
        )
    print(table(result))


if __name__ == "__main__":
    main()

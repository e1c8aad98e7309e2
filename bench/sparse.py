"""Embedding tables on the shards: a CTR model whose one big table is hosted, against the same
model with the table dense (pscluster), single-process PyTorch with sparse gradients, and DDP.

The model is bench/sparse_model.py's OneTableCTR: the 26 categorical slots of
pscluster.data.synthetic_ctr's Criteo-like data index ONE (rows, 16) table through per-slot
offsets (folded into the table by modulo), and the 26 vectors with the 13 dense features go
through a 429-64-1 MLP (bce_with_logits). The data are generated at the scale that makes the
slots' cardinalities add up to ``rows`` (power-law ids over the whole table), ``--train-rows``
rows uploaded with the job, batch 1024. Per table size (``--rows``):

- ``hosted``: pscluster, ``sparse=True``: the table lives row-wise on the shards (id % shards),
  each batch looks up only its unique ids' rows and pushes their gradients; MLP on Adam
  (lr 1e-3), rows on rowwise_adagrad (lr 0.05); async, ``--shards`` shards, ``--workers``
  workers (one intra-op thread each, as LocalCluster gives them on this machine); the shards
  are durable, as LocalCluster starts them (a WAL fsynced on every push);
- (a) ``dense``: pscluster, ``sparse=False``: the table is part of the flat vector each step
  pulls and pushes whole (Adam on all of it); only up to ``--dense-max-rows``;
- (b) ``torch``: one process, no cluster: the table with sparse gradients on
  torch.optim.Adagrad (lr 0.05), the MLP on Adam, ``--torch-threads`` threads (1: on this
  2-core machine, shared with other work, 2 threads ran 3x slower than 1);
- (c) ``ddp``: DDP on gloo, ``--workers`` processes, ``sparse=False`` (the table's whole
  gradient is all-reduced every step), dense Adagrad on it; only up to ``--ddp-max-rows``.

A pscluster job is cancelled ``--seconds`` after its first step (its rate is steady samples/s
over that window, as bench/data.py measures it); a torch run trains for ``--seconds`` too.
Per run: steady samples/s; bytes per step (table rows looked up + pushed, and dense bytes
pulled + pushed, from job.metrics()); unique ids per batch; peak RSS of each process (a
worker of ``hosted`` must stay under 1.5 GB). Where the time goes, per worker step: pull and
push times from the workers' own Prometheus histograms over the window; the lookup of a
batch's unique ids timed in this process against the job's shards while it trains; forward
and backward timed in this process on the hosted model with rows at hand (one thread, as a
worker has); the torch runs time their forward, backward and optimizer step. A run that
would not fit the memory available now is skipped, with the reason. Writes
bench/results/sparse.json (``--out``) and prints markdown tables.

    .venv/bin/python bench/sparse.py [--rows 1000000,10000000,50000000] [--seconds 30]
                                     [--shards 2] [--workers 2] [--variants hosted,dense]
                                     [--out bench/results/sparse.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
import torch.distributed as dist
from prometheus_client.parser import text_string_to_metric_families
from torch.multiprocessing.spawn import start_processes
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, rendezvous_port  # noqa: E402
from bench.peers_common import steady_rate  # noqa: E402
from bench.proc_sampler import ProcSampler, cluster_sampler  # noqa: E402
from bench.sparse_model import OneTableCTR, slot_offsets, table_ids  # noqa: E402
from pscluster.client.errors import PSClusterError  # noqa: E402
from pscluster.client.job import Job  # noqa: E402
from pscluster.client.local import LocalCluster  # noqa: E402
from pscluster.client.metrics import JobMetrics  # noqa: E402
from pscluster.client.sdk import Client  # noqa: E402
from pscluster.config import Settings  # noqa: E402
from pscluster.data.synthetic_ctr import (  # noqa: E402
    CRITEO_CARDINALITIES,
    TEST_STREAM,
    CtrSpec,
    criteo_cardinalities,
    generate,
)
from pscluster.model.hosted import attach_rows, host_tables, hosting, take_row_grads  # noqa: E402
from pscluster.shard_client.client import ShardClient  # noqa: E402
from pscluster.shard_client.tables import lookup_rows  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BATCH, DIM, SEED, PARTITIONS = 1024, 16, 0, 8
DENSE_LR, SPARSE_LR = 1e-3, 0.05
DENSE_OPT = {"name": "adam", "lr": DENSE_LR}
SPARSE_OPT = {"name": "rowwise_adagrad", "lr": SPARSE_LR}
SUBMIT_TIMEOUT = 600.0  # seconds: the client's and the coordinator's (InitJob) deadlines
ENV = {"PSC_HEARTBEAT_SECONDS": "0.5", "PSC_RPC_TIMEOUT_SECONDS": str(SUBMIT_TIMEOUT)}
GB = 1 << 30
HEADROOM = 2 * GB  # left free for the other work on the machine
WORKER_LIMIT_MB = 1536


# --- data ---


def make_data(rows: int, train_rows: int, test_rows: int) -> dict[str, Any]:
    """Criteo-like rows at the scale whose slot cardinalities add up to about ``rows``."""
    spec = CtrSpec(seed=SEED, cardinalities=criteo_cardinalities(rows / sum(CRITEO_CARDINALITIES)))
    train, test = generate(spec, train_rows, 0), generate(spec, test_rows, TEST_STREAM)
    return {
        "cardinalities": list(spec.cardinalities),
        "train": ({"dense": train.dense, "sparse": train.sparse}, train.label),
        "test": ({"dense": test.dense, "sparse": test.sparse}, test.label),
    }


def model_kwargs(
    rows: int, data: dict[str, Any], sparse: bool, dynamic: bool = False
) -> dict[str, Any]:
    return {
        "rows": rows,
        "cardinalities": data["cardinalities"],
        "dim": DIM,
        "sparse": sparse,
        "dynamic": dynamic,
    }


def batch_ids(data: dict[str, Any], rows: int, n: int) -> list[torch.Tensor]:
    """The unique table rows of ``n`` random training batches."""
    offsets = slot_offsets(data["cardinalities"], rows)
    sparse = data["train"][0]["sparse"]
    rng = np.random.default_rng(SEED)
    picks = [rng.choice(len(sparse), BATCH, replace=False) for _ in range(n)]
    return [torch.unique(table_ids(torch.from_numpy(sparse[p]), offsets, rows)) for p in picks]


def id_stats(data: dict[str, Any], rows: int) -> dict[str, Any]:
    """Unique ids per batch, and the share of the table the training data touch at all."""
    offsets = slot_offsets(data["cardinalities"], rows)
    every = table_ids(torch.from_numpy(data["train"][0]["sparse"]), offsets, rows)
    return {
        "unique_ids_per_batch": round(
            float(np.mean([len(u) for u in batch_ids(data, rows, 20)])), 1
        ),
        "ids_per_batch": BATCH * len(data["cardinalities"]),
        "table_rows_touched": int(torch.unique(every).numel()),
    }


# --- memory ---


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# Copies of the table's float32 values a run holds at its peak, all processes together. Hosted:
# the rows and their state, and the copy each shard takes for its first checkpoint (InitJob
# writes one before it replies). A dense table on pscluster, measured at 10M rows (the RSS of
# every process summed, over what they held idle): ~16 copies while training, with 2 shards
# and 2 workers. Per shard (V: its half of the flat vector) the values and Adam's two moments
# (3V), a receive buffer per push in flight (1-2V), the copy a pull streams from when a push
# lands under it (1V), and either Adam's two temporaries (2V) or the copy a checkpoint is
# written from (3V); per worker (W: the whole vector) its parameters, which pulls are
# received into, the table's dense gradient and the flat gradient it pushes (3W). At 1M rows
# the shards used to hold twice that, in freed blocks glibc kept (see pscluster.heap).
COPIES = {"hosted": 3.5, "dynamic": 3.5, "dense": 16.0, "torch": 2.5, "ddp": 6.0}


def needs(variant: str, rows: int, workers: int) -> int:
    """The memory a run would take beyond what is running now: copies of the table (DDP's
    are per process) and ~1 GB of processes."""
    copies = COPIES[variant] * (workers if variant == "ddp" else 1)
    return int(rows * DIM * 4 * copies) + GB


def skip_reason(variant: str, rows: int, args: argparse.Namespace) -> str | None:
    limit = {"dense": args.dense_max_rows, "ddp": args.ddp_max_rows}.get(variant)
    if limit is not None and rows > limit:
        per_step = rows * DIM * 4 / 1e6
        return (
            f"skipped above {limit:,} rows: every step would move the whole table "
            f"({per_step:,.0f} MB of values or gradients) and hold several copies of it per process"
        )
    need, have = needs(variant, rows, args.workers), available_bytes() - HEADROOM
    if need > have:
        return (
            f"skipped: would need about {need / GB:.1f} GB (~{COPIES[variant]:g} copies of "
            f"the table), {max(have, 0) / GB:.1f} GB available"
        )
    return None


# --- pscluster ---


def exchange_seconds(cluster: LocalCluster, job_id: str) -> dict[str, list[float]]:
    """Pull and push (seconds summed, count) over the workers' histograms for the job."""
    totals = {"pull": [0.0, 0.0], "push": [0.0, 0.0]}
    for name, url in cluster.metrics_urls.items():
        if not name.startswith("worker"):
            continue
        # A worker moving a dense 640 MB table each step may be slow to answer.
        with urllib.request.urlopen(url, timeout=30) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("job_id") != job_id:
                    continue
                for kind in totals:
                    base = f"pscluster_worker_{kind}_duration_seconds"
                    if s.name == f"{base}_sum":
                        totals[kind][0] += s.value
                    elif s.name == f"{base}_count":
                        totals[kind][1] += s.value
    return totals


def mean_ms(before: dict[str, list[float]], after: dict[str, list[float]], kind: str) -> float:
    seconds = after[kind][0] - before[kind][0]
    count = after[kind][1] - before[kind][1]
    return round(1000 * seconds / count, 2) if count else 0.0


def lookup_ms(addresses: list[str], job_id: str, ids: list[torch.Tensor]) -> float:
    """A batch's unique rows looked up from the job's shards, as a worker does (ms, median:
    the machine is shared)."""
    client = ShardClient(Settings())
    try:
        lookup_rows(client, job_id, addresses, 0, ids[0], DIM)  # the channels open
        times = []
        for batch in ids[1:]:
            started = time.perf_counter()
            lookup_rows(client, job_id, addresses, 0, batch, DIM)
            times.append(time.perf_counter() - started)
        return round(1000 * float(np.median(times)), 2)
    finally:
        client.close()


def job_metrics(job: Job) -> JobMetrics:
    """``job.metrics()``, asked again while a shard is too busy to answer in time: the
    coordinator gives each shard 3 s, and a shard applying a dense 10M-row table's push
    holds the job's lock for longer (its log write, Adam step and checkpoint copy)."""
    for _ in range(30):
        try:
            return job.metrics()
        except PSClusterError as e:
            if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            time.sleep(1.0)
    return job.metrics()


def run_job(
    cluster: LocalCluster, data: dict[str, Any], rows: int, variant: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One pscluster job, cancelled ``args.seconds`` after its first step."""
    sparse = variant != "dense"
    probe = cluster_sampler(cluster)
    time.sleep(1.0)  # what every process holds before the job: a sample or two
    t0, wall0 = time.monotonic(), time.time()
    # cluster.client()'s 10 s deadline is shorter than SubmitJob takes with a 50M-row table:
    # the call returns only once the shards have drawn the rows and checkpointed them.
    settings = Settings(coordinator=cluster.address, rpc_timeout_seconds=SUBMIT_TIMEOUT)
    with Client(cluster.address, settings=settings) as client:
        job = client.submit(
            model=OneTableCTR,
            model_kwargs=model_kwargs(rows, data, sparse, variant == "dynamic"),
            train=data["train"],
            test=data["test"],
            loss="bce_with_logits",
            metric="auc",
            mode="async",
            optimizer=DENSE_OPT,
            sparse_optimizer=SPARSE_OPT if sparse else None,
            epochs=1000,  # cancelled after the measured window
            batch_size=BATCH,
            partitions=PARTITIONS,
            seed=SEED,
            name=f"sparse-{variant}-{rows}",
        )
        submitted = time.monotonic()
        try:
            deadline = time.monotonic() + 900
            while not job_metrics(job).steps:
                if time.monotonic() > deadline or job.info().state != "running":
                    raise RuntimeError(f"{variant}: no step ({job.info().status_message})")
                time.sleep(0.2)
            first, first_wall = time.monotonic(), time.time()
            before = exchange_seconds(cluster, job.id)
            time.sleep(args.seconds)
            metrics = job_metrics(job)
            window_end = time.monotonic()
            after = exchange_seconds(cluster, job.id)
            addresses = [s.shard for s in sorted(metrics.shards, key=lambda s: s.start)]
            fixed = variant == "hosted"  # a dynamic table's ids are hashed: not timed here
            lookup = lookup_ms(addresses, job.id, batch_ids(data, rows, 21)) if fixed else None
        finally:
            job.cancel()
        while not job.info().done:
            time.sleep(0.2)
    probe.stop()
    t1 = time.monotonic()
    steps = metrics.steps
    n = max(1, len(steps))
    table = metrics.tables[0] if metrics.tables else None
    rate = steady_rate([s.unix_time - wall0 for s in steps], [s.samples for s in steps]) or 0.0
    roles = ("coordinator", "shard", "worker", "client")
    rss = {role: round(probe.peak(role, t0, t1) / 1024, 1) for role in roles}
    # Training's own footprint, without the job's start (a shard copies its rows for the
    # first checkpoint while InitJob runs): the last samples of the measured window.
    steady = {
        role: round(probe.peak(role, window_end - 1.2, window_end) / 1024, 1) for role in roles
    }
    return {
        "variant": variant,
        "submit_s": round(submitted - t0, 2),
        "first_step_s": round(first - t0, 2),
        "steady_samples_per_s": round(rate, 1),
        "steps": len(steps),
        # Steps that ended inside the measured window (a dense 10M-row step takes seconds).
        "steps_in_window": sum(s.unix_time >= first_wall for s in steps),
        "final_auc": metrics.final_metric,
        "table_bytes_per_step": (
            round((table.bytes_looked_up + table.bytes_pushed) / n) if table else 0
        ),
        "table_bytes_looked_up_per_step": round(table.bytes_looked_up / n) if table else 0,
        "table_bytes_pushed_per_step": round(table.bytes_pushed / n) if table else 0,
        "rows_pushed_per_step": round(table.rows_pushed / n, 1) if table else 0,
        "table_rows_on_shards": table.rows if table else 0,
        "table_bytes_on_shards": table.bytes if table else 0,
        "dense_bytes_per_step": round((metrics.bytes_pushed + metrics.bytes_pulled) / n),
        "step_ms": round(1000 * args.workers * BATCH / rate, 1) if rate else None,
        "pull_ms": mean_ms(before, after, "pull"),
        "push_ms": mean_ms(before, after, "push"),
        "lookup_ms": lookup,
        "peak_rss_mb": rss,
        "rss_at_window_end_mb": steady,
        # Every process of the cluster and this one together: before the job, and at most
        # (what COPIES and needs() are sized from).
        "rss_all_mb": {
            "before": round(probe.peak_sum(t0 - 1.0, t0) / 1024, 1),
            "peak": round(probe.peak_sum(t0, t1) / 1024, 1),
        },
        "worker_under_1_5gb": rss["worker"] < WORKER_LIMIT_MB,
    }


class _RowsAtHand:
    """Rows for the hosted model with no shard to ask: forward and backward alone."""

    def __init__(self, n: int) -> None:
        self.rows = torch.randn(n, DIM)

    def lookup(self, table: int, ids: torch.Tensor, *, peek: bool = False) -> torch.Tensor:
        return self.rows[: ids.numel()].clone()


def compute_ms(data: dict[str, Any], rows: int, sparse: bool, n: int = 20) -> float:
    """Forward, backward and (hosted) the rows' gradient summed per id, one thread, per batch
    (median): the worker's compute, without its lookup, pull and push."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        with hosting():
            model = OneTableCTR(**model_kwargs(rows, data, sparse))
        if sparse:
            host_tables(model)
            attach_rows(model, _RowsAtHand(BATCH * len(data["cardinalities"])))
        (x, y), rng = data["train"], np.random.default_rng(SEED)
        picks = [rng.choice(len(y), BATCH, replace=False) for _ in range(n + 1)]
        batches = [
            ({k: torch.from_numpy(v[p]) for k, v in x.items()}, torch.from_numpy(y[p]))
            for p in picks
        ]
        times = []
        for xb, yb in batches:  # the first batch warms up
            started = time.perf_counter()
            model.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(**xb), yb).backward()  # type: ignore[no-untyped-call]
            take_row_grads(model)
            times.append(time.perf_counter() - started)
        return round(1000 * float(np.median(times[1:])), 2)
    finally:
        torch.set_num_threads(threads)


# --- PyTorch alone: one process with sparse gradients (b), DDP on gloo (c) ---


def _torch_rank(rank: int, world: int, port: int, cfg: dict[str, Any], out: str) -> None:
    """Train for ``cfg["seconds"]``: one process (``world`` 1) with the table's sparse
    gradient on Adagrad, or a DDP rank whose table gradient is dense and all-reduced."""
    torch.set_num_threads(cfg["threads"])
    ddp = world > 1
    if ddp:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=300),
        )
    try:
        folder = Path(cfg["data"])
        mine = slice(rank, None, world)  # a partition per rank
        dense = torch.from_numpy(np.load(folder / "dense.npy")[mine].copy())
        sparse = torch.from_numpy(np.load(folder / "sparse.npy")[mine].copy())
        label = torch.from_numpy(np.load(folder / "y.npy")[mine].copy())
        torch.manual_seed(SEED)
        model = OneTableCTR(cfg["rows"], cfg["cardinalities"], DIM, sparse=not ddp)
        net = DistributedDataParallel(model) if ddp else model
        opts = [
            torch.optim.Adagrad(model.table.parameters(), lr=SPARSE_LR),
            torch.optim.Adam(model.mlp.parameters(), lr=DENSE_LR),
        ]
        order = torch.randperm(len(label), generator=torch.Generator().manual_seed(SEED + rank))
        times: list[float] = []
        phases = np.zeros(3)  # forward, backward (DDP: with its all-reduce), optimizer
        flag = torch.zeros(1)
        if ddp:
            dist.barrier()
        t0 = time.time()
        position = 0
        while True:
            if position + BATCH > len(order):
                position = 0
            idx = order[position : position + BATCH]
            position += BATCH
            marks = [time.perf_counter()]
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(
                net(dense=dense[idx], sparse=sparse[idx]), label[idx]
            )
            marks.append(time.perf_counter())
            loss.backward()  # type: ignore[no-untyped-call]
            marks.append(time.perf_counter())
            for opt in opts:
                opt.step()
            marks.append(time.perf_counter())
            phases += np.diff(marks)
            times.append(time.time() - t0)
            done = times[-1] >= cfg["seconds"]
            if ddp:  # rank 0's clock decides for all: every rank takes the same steps
                flag.fill_(float(done))
                dist.broadcast(flag, 0)
                done = bool(flag.item())
            if done:
                break
        if rank == 0:
            per_step = [round(1000 * p / len(times), 2) for p in phases]
            record = {
                "step_times": times,
                "steady_samples_per_s": steady_rate(times, [BATCH * world] * len(times)),
                "forward_ms": per_step[0],
                "backward_ms": per_step[1],
                "optimizer_ms": per_step[2],
                "threads": torch.get_num_threads(),
            }
            Path(out).write_text(json.dumps(record))
    finally:
        if ddp:
            dist.destroy_process_group()


def run_torch(
    data: dict[str, Any], rows: int, world: int, folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """``world`` spawned processes (1: no DDP) trained for ``args.seconds``."""
    x, y = data["train"]
    for name, array in (("dense", x["dense"]), ("sparse", x["sparse"]), ("y", y)):
        if not (folder / f"{name}.npy").exists():
            np.save(folder / f"{name}.npy", array)
    cfg = {
        "data": str(folder),
        "rows": rows,
        "cardinalities": data["cardinalities"],
        "seconds": args.seconds,
        "threads": args.torch_threads,
    }
    out = folder / "torch.json"
    out.unlink(missing_ok=True)
    pids: list[int] = []
    probe = ProcSampler({"process": lambda: list(pids)}).start()
    t0 = time.monotonic()
    ctx = start_processes(  # type: ignore[no-untyped-call]
        _torch_rank,
        args=(world, rendezvous_port(), cfg, str(out)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    pids.extend(ctx.pids())
    deadline = time.monotonic() + args.seconds + 600
    while not ctx.join(timeout=5.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise RuntimeError(f"torch with {world} process(es) did not finish in time")
    probe.stop()
    record: dict[str, Any] = json.loads(out.read_text())
    times = record.pop("step_times")
    rate = record.pop("steady_samples_per_s") or 0.0
    return {
        "variant": "torch" if world == 1 else "ddp",
        "processes": world,
        "steady_samples_per_s": round(rate, 1),
        "steps": len(times),
        "step_ms": round(1000 * world * BATCH / rate, 1) if rate else None,
        **record,
        "peak_rss_mb": {"process": round(probe.peak("process", t0, time.monotonic()) / 1024, 1)},
    }


# --- one size, the tables, main ---


def run_size(rows: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    data = make_data(rows, args.train_rows, args.test_rows)
    common = {"rows": rows, **id_stats(data, rows)}
    out: list[dict[str, Any]] = []

    def record(r: dict[str, Any]) -> None:
        # The machine is shared: the load when the run ended says how far to trust it.
        r = {**common, **r, "load_avg_1m": round(os.getloadavg()[0], 2)}
        print(json.dumps(r), flush=True)
        out.append(r)

    env = {**ENV, "PSC_TORCH_THREADS": str(max(1, (os.cpu_count() or 1) // args.workers))}
    with (
        tempfile.TemporaryDirectory() as state,
        LocalCluster(
            shards=args.shards, workers=args.workers, state_dir=state, env=env, metrics=True
        ) as cluster,
    ):
        cluster.wait_for_workers(args.workers, timeout=120)
        for variant in [v for v in ("hosted", "dynamic", "dense") if v in args.variants]:
            reason = skip_reason(variant, rows, args)
            if reason:
                record({"variant": variant, "skipped": reason})
                continue
            r = run_job(cluster, data, rows, variant, args)
            if variant != "dynamic":
                r["compute_ms"] = compute_ms(data, rows, variant == "hosted")
            record(r)
    with tempfile.TemporaryDirectory() as folder:
        for variant, world in (("torch", 1), ("ddp", args.workers)):
            if variant not in args.variants:
                continue
            reason = skip_reason(variant, rows, args)
            if reason:
                record({"variant": variant, "skipped": reason})
                continue
            record(run_torch(data, rows, world, Path(folder), args))
    hosted = next((r for r in out if r["variant"] == "hosted" and "skipped" not in r), None)
    for r in out:
        if hosted and r is not hosted and r.get("steady_samples_per_s"):
            r["hosted_x"] = round(hosted["steady_samples_per_s"] / r["steady_samples_per_s"], 2)
    return out


LABELS = {
    "hosted": "pscluster, table on the shards",
    "dynamic": "pscluster, dynamic table (hashed ids)",
    "dense": "(a) pscluster, dense table",
    "torch": "(b) PyTorch, 1 process, sparse grads",
    "ddp": "(c) DDP gloo, dense all-reduce",
}


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def _get(r: dict[str, Any], key: str) -> str:
    value = r.get(key)
    return "-" if value is None else str(value)


def tables(rows: list[dict[str, Any]]) -> str:
    head = [
        "| table rows | system | samples/s | hosted / this | table MB/step (lookup + push) "
        "| dense MB/step | unique ids/batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            head.append(f"| {r['rows']:,} | {LABELS[r['variant']]} | {r['skipped']} | | | | |")
            continue
        pscluster = r["variant"] in ("hosted", "dynamic", "dense")
        head.append(
            f"| {r['rows']:,} | {LABELS[r['variant']]} | {r['steady_samples_per_s']} | "
            f"{_get(r, 'hosted_x')} | "
            f"{_mb(r['table_bytes_per_step']) if pscluster else '-'} | "
            f"{_mb(r['dense_bytes_per_step']) if pscluster else '-'} | "
            f"{r['unique_ids_per_batch']} |"
        )
    time_lines = [
        "| table rows | system | submit s | steps measured | ms per step (one process) | lookup "
        "| compute | pull | push | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            continue
        rss = r["peak_rss_mb"]
        if r["variant"] in ("hosted", "dynamic", "dense"):
            pieces = [_get(r, "lookup_ms"), _get(r, "compute_ms"), _get(r, "pull_ms")]
            pieces.append(_get(r, "push_ms"))
            end = r["rss_at_window_end_mb"]
            memory = (
                f"worker {rss['worker']} / shard {rss['shard']} ({end['shard']} training) / "
                f"coordinator {rss['coordinator']} / client {rss['client']}"
            )
        else:  # forward+backward (DDP: with its all-reduce) as compute, the optimizer as push
            pieces = ["-", f"{r['forward_ms']} + {r['backward_ms']}", "-"]
            pieces.append(f"optimizer {r['optimizer_ms']}")
            memory = f"per process {rss['process']}"
        measured = r.get("steps_in_window", r["steps"])  # a torch run's steps are all measured
        time_lines.append(
            f"| {r['rows']:,} | {LABELS[r['variant']]} | {_get(r, 'submit_s')} | {measured} | "
            f"{_get(r, 'step_ms')} | "
            f"{' | '.join(pieces)} | {memory} |"
        )
    return "\n".join(head) + "\n\n" + "\n".join(time_lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000,50000000", help="table sizes")
    parser.add_argument("--seconds", type=float, default=30.0, help="training measured per run")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="pscluster workers, DDP ranks")
    parser.add_argument("--train-rows", type=int, default=262144)
    parser.add_argument("--test-rows", type=int, default=8192)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of each torch process (a pscluster worker has 1 here)",
    )
    parser.add_argument("--dense-max-rows", type=int, default=10_000_000)
    parser.add_argument("--ddp-max-rows", type=int, default=10_000_000)
    parser.add_argument(
        "--variants", default=",".join(LABELS), help="which of " + ",".join(LABELS) + " to run"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "sparse.json", help="JSON written")
    args = parser.parse_args()
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(LABELS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; expected some of {list(LABELS)}")
    sizes = sorted(int(s) for s in args.rows.split(","))  # the largest last: most memory
    results: list[dict[str, Any]] = []
    for rows in sizes:
        results.extend(run_size(rows, args))
    result = {
        "machine": machine(),
        "batch_size": BATCH,
        "dim": DIM,
        "optimizer": DENSE_OPT,
        "sparse_optimizer": SPARSE_OPT,
        "rows": results,
        "args": vars(args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(tables(results))


if __name__ == "__main__":
    main()

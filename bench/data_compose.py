"""A 2.2 GB data set on disk, trained through compose: what each container's processes hold.

examples/make_big_digits.py writes 2.2 GB of augmented digits as ``.npy`` shards under
data/digits-big (once; kept). The compose cluster of compose.yaml (coordinator, 2 shards,
``--workers`` workers) mounts data/ read-only at /data in every worker (PSC_DATA_DIR), and
examples/digits_big.yaml's model trains on ``/data/digits-big`` (data="npy": nothing is
uploaded but the code; each worker memory-maps the shards and reads its leases' rows).

While the job runs, every process of every container is sampled every 2 s (``docker top``:
RSS as the kernel counts it, mapped file pages included), so a worker's figure covers its
loader processes too (listed apart). Reported: the job's time, samples/s, test accuracy
against the example's target, and the peak RSS of each process kind. Writes
bench/results/data_compose.json and prints a markdown table. Needs `make docker-setup`.

    .venv/bin/python bench/data_compose.py [--gigabytes 2.2] [--workers 2] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from examples.digits_big_model import BigDigitsNet  # noqa: E402
from pscluster.client.processes import free_ports  # noqa: E402
from pscluster.client.sdk import Client  # noqa: E402
from tests.containers.compose import ComposeProject, run_docker  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET = 0.9  # examples/digits_big.yaml's target_accuracy


def make_data(gigabytes: float) -> Path:
    folder = ROOT / "data" / "digits-big"
    manifest = folder / "manifest.json"
    if (
        not manifest.exists()
        or json.loads(manifest.read_text())["train"]["bytes"] < gigabytes * 1e9 * 0.99
    ):
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "make_big_digits.py"),
                "--out",
                str(folder),
                "--gigabytes",
                str(gigabytes),
            ],
            check=True,
        )
    for path in [folder, *folder.rglob("*")]:  # the workers run as another user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


class ContainerSampler:
    """Peak RSS of each process kind in the project's containers, from `docker top`."""

    def __init__(self, project: ComposeProject) -> None:
        self.project = project
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ContainerSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            for service in ("coordinator", "ps", "worker"):
                for container in self.project.containers(service):
                    self._sample(service, container)

    def _sample(self, service: str, container: str) -> None:
        try:
            out = run_docker(["top", container, "-eo", "pid,ppid,rss,args"], timeout=30)
        except Exception:  # a container going away between ps and top
            return
        rows = [line.split(None, 3) for line in out.splitlines()[1:] if line.strip()]
        # pscluster's own processes: not the container's init (docker-init -- pscluster ...)
        # nor the health probe.
        ours = [r for r in rows if "pscluster" in r[3] and not _not_ours(r[3])]
        mains = {r[0] for r in ours if r[1] not in {o[0] for o in ours}}
        for _pid, ppid, rss, _args in ours:
            kind = "shard" if service == "ps" else service
            if ppid in mains and service == "worker":
                kind = "worker loader"
            mb = int(rss) / 1024
            self.peaks[kind] = max(self.peaks.get(kind, 0.0), round(mb, 1))


def _not_ours(args: str) -> bool:
    return "docker-init" in args or "psc-health" in args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    folder = make_data(args.gigabytes)
    project = ComposeProject(
        name=f"psc-data-{secrets.token_hex(3)}",
        publish_port=free_ports("127.0.0.1", 1)[0],
        settings={"PSC_DATA_DIR": str(folder.parent)},
    )
    project.build()
    project.up(workers=args.workers)
    sampler = ContainerSampler(project).start()
    try:
        started = time.time()
        with Client(project.address) as client:
            job = client.submit(
                model=BigDigitsNet,
                data="npy",
                data_args={"path": f"/data/{folder.name}"},
                mode="ssp",
                staleness=2,
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                epochs=args.epochs,
                batch_size=128,
                partitions=16,
                name="digits-big",
            )
            info = job.wait(timeout=7200)
            metrics = job.metrics()
    finally:
        sampler.stop()
        project.down(volumes=True)
    samples = sum(s.samples for s in metrics.steps)
    result: dict[str, Any] = {
        "machine": machine(),
        "data": json.loads((folder / "manifest.json").read_text())["train"],
        "workers": args.workers,
        "epochs": args.epochs,
        "state": info.state,
        "test_accuracy": info.test_accuracy,
        "target": TARGET,
        "wall_s": round(time.time() - started, 1),
        "samples": samples,
        "samples_per_s": round(
            samples / max(1e-9, (info.finished_unix or 0) - (info.started_unix or 0)), 1
        ),
        "peak_rss_mb": sampler.peaks,
    }
    result["data"].pop("seconds", None)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_compose.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

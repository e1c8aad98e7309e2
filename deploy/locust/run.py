"""``make load`` / ``make soak``: a single-client run, the load run, then the checker.

Uses the cluster named by ``--coordinator`` (or PSC_COORDINATOR; ``--shard-addresses`` where
the shards are reachable under other names than the coordinator's, as for compose through
deploy/locust/compose.load.yaml: ``make load-compose``), or a local cluster already
running from ``--state-dir``; otherwise starts one there (shards, a coordinator, no training
workers: the locust users are the workers) and stops it at the end. Runs locust headless twice
with the same model and codec: one worker user for ``--single-time`` (the single-client peak:
it pulls and pushes back to back, no compute time), then ``--users`` users for ``--time``
(CSV stats and the HTML report under ``--out``). Then ``check.py`` prints the figures and
fails if any request failed.

    python deploy/locust/run.py --users 50 --time 60s --model-mb 1 --out bench/results/load
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from check import main as check  # noqa: E402 (beside this file)

from pscluster.client.local import LocalCluster, read_state  # noqa: E402

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
# Seconds locust may overrun its --run-time (startup, job setup, draining) before it is killed.
OVERRUN_SECONDS = 180


def _seconds(text: str) -> int:
    """locust's time format: 90, 90s, 10m, 1h30m."""
    total, number = 0, ""
    for ch in text.strip():
        if ch.isdigit():
            number += ch
        elif ch in "hms" and number:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
        else:
            raise ValueError(f"time {text!r} is not like 60s, 10m or 1h30m")
    return total + int(number or 0)


def locust(args: argparse.Namespace, coordinator: str, prefix: str, extra: list[str]) -> int:
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--coordinator", coordinator, "--model-mb", str(args.model_mb), "--codec", args.codec,
        "--csv", prefix, "--rss-every", str(args.rss_every), *extra,
    ]  # fmt: skip
    if args.state_dir_used:
        argv += ["--state-dir", args.state_dir_used]
    if args.docker_shards:
        argv += ["--docker-shards", args.docker_shards]
    if args.shard_addresses:
        argv += ["--shards", args.shard_addresses]
    limit = _seconds(args.time) + _seconds(args.single_time) + OVERRUN_SECONDS
    print("$", " ".join(argv[1:]), flush=True)
    return subprocess.run(argv, cwd=ROOT, timeout=limit, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=10.0)
    parser.add_argument("--time", default="60s", help="the load run's length (locust format)")
    parser.add_argument("--single-time", default="15s", help="the single-client run's length")
    parser.add_argument("--model-mb", type=float, default=1.0)
    parser.add_argument("--codec", default="none")
    parser.add_argument("--compute-ms", type=float, default=50.0)
    parser.add_argument(
        "--step-seconds", type=float, default=0.0, help="worker step period (0: back to back)"
    )
    parser.add_argument("--client-users", type=int, default=4)
    parser.add_argument("--rss-every", type=float, default=10.0)
    parser.add_argument("--out", default="bench/results/load", help="CSV/HTML prefix")
    parser.add_argument("--coordinator", default=os.environ.get("PSC_COORDINATOR", ""))
    parser.add_argument("--state-dir", default=".pscluster/load", help="local cluster state")
    parser.add_argument("--shards", type=int, default=2, help="shards of a cluster started here")
    parser.add_argument("--docker-shards", default="", help="sample RSS of containers named so")
    parser.add_argument(
        "--shard-addresses",
        default="",
        help="host:port,... the worker users dial (default: the addresses the coordinator "
        "lists, which for compose are names only its network resolves)",
    )
    args = parser.parse_args(argv)
    if args.users <= args.client_users:
        parser.error(f"--users ({args.users}) must exceed --client-users ({args.client_users})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    cluster: LocalCluster | None = None
    coordinator = args.coordinator
    args.state_dir_used = ""
    if not coordinator:
        running = read_state(args.state_dir)
        if running is None:
            print(f"starting a local cluster in {args.state_dir} ({args.shards} shards)")
            cluster = LocalCluster(shards=args.shards, workers=0, state_dir=args.state_dir)
            cluster.start()
            coordinator = cluster.address
        else:
            coordinator = str(running["address"])
        args.state_dir_used = args.state_dir
    try:
        single = f"{args.out}_single"
        common = ["--run-time", args.single_time, "-u", "1", "-r", "1", "--compute-ms", "0"]
        rc_single = locust(args, coordinator, single, [*common, "WorkerUser"])
        rc = locust(
            args,
            coordinator,
            args.out,
            [
                "--run-time", args.time, "-u", str(args.users), "-r", str(args.spawn_rate),
                "--compute-ms", str(args.compute_ms), "--client-users", str(args.client_users),
                "--step-seconds", str(args.step_seconds),
                "--html", f"{args.out}.html",
            ],
        )  # fmt: skip
    finally:
        if cluster is not None:
            cluster.stop()
    print(f"locust exit codes: single {rc_single}, load {rc}")
    verdict = check([args.out, "--single", single])
    return verdict or rc or rc_single


if __name__ == "__main__":
    sys.exit(main())

"""Resident memory of the shards, sampled during a load run (is memory flat under load?).

Two sources: a local cluster's processes (pids from its ``cluster.json``, RSS from
``/proc/<pid>/status``), or containers (``docker stats --no-stream``) whose names contain a
given word, for a compose cluster. A sample is ``{name: rss_mb}``; a shard that cannot be read
is left out rather than reported as 0, so a missing value never looks like a small one.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

_UNITS = {"B": 1 / (1 << 20), "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "kB": 1 / 1024}
_DOCKER_TIMEOUT_SECONDS = 20.0
# The first seconds under load grow a shard's buffers and thread stacks once; growth measured
# from this point on is what a leak would show.
WARMUP_SECONDS = 20.0


def local_shard_pids(state_dir: str | Path) -> dict[str, int]:
    """``{shard name: pid}`` of the local cluster recorded in ``state_dir`` (empty if none)."""
    path = Path(state_dir) / "cluster.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {p["name"]: int(p["pid"]) for p in state.get("processes", []) if p["role"] == "shard"}


def proc_rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MiB, None if the process is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def docker_rss_mb(name_contains: str) -> dict[str, float]:
    """Memory use of running containers whose name contains ``name_contains``."""
    try:
        done = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"],
            capture_output=True,
            text=True,
            timeout=_DOCKER_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in done.stdout.splitlines():
        # "pscluster-shard-0-1 93.5MiB / 7.6GiB"
        match = re.match(r"(\S+)\s+([\d.]+)\s*([KMG]iB|B|kB)\b", line)
        if match and name_contains in match.group(1):
            out[match.group(1)] = float(match.group(2)) * _UNITS[match.group(3)]
    return out


class RssSampler:
    """Samples shard RSS from one source; ``samples`` is ``[(seconds since start, sample)]``."""

    def __init__(self, pids: dict[str, int] | None = None, docker_filter: str = "") -> None:
        self.pids = dict(pids or {})
        self.docker_filter = docker_filter
        self.samples: list[tuple[float, dict[str, float]]] = []

    @property
    def enabled(self) -> bool:
        return bool(self.pids) or bool(self.docker_filter)

    def sample(self, at_seconds: float) -> dict[str, float]:
        if self.docker_filter:
            now = docker_rss_mb(self.docker_filter)
        else:
            now = {}
            for name, pid in self.pids.items():
                rss = proc_rss_mb(pid)
                if rss is not None:
                    now[name] = rss
        self.samples.append((at_seconds, now))
        return now

    def report(self) -> dict[str, object]:
        """First, last and peak RSS per shard, growth after the warm-up, and every sample."""
        shards: dict[str, dict[str, float]] = {}
        if self.samples:
            first, last = self.samples[0][1], self.samples[-1][1]
            for name in sorted(set(first) | set(last)):
                peak = max(s.get(name, 0.0) for _, s in self.samples)
                entry = {"peak_mb": round(peak, 1)}
                if name in first:
                    entry["start_mb"] = round(first[name], 1)
                if name in last:
                    entry["end_mb"] = round(last[name], 1)
                if name in first and name in last:
                    entry["growth_mb"] = round(last[name] - first[name], 1)
                warm = [x[name] for t, x in self.samples if t >= WARMUP_SECONDS and name in x]
                if len(warm) >= 2:
                    entry["after_warmup_mb"] = round(warm[0], 1)
                    entry["growth_after_warmup_mb"] = round(warm[-1] - warm[0], 1)
                shards[name] = entry
        return {
            "source": f"docker:{self.docker_filter}" if self.docker_filter else "proc",
            "shards": shards,
            "samples": [{"t": round(t, 1), "rss_mb": s} for t, s in self.samples],
        }

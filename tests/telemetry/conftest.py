"""Helpers for the observability tests: run a pscluster process, read its log lines (text or
JSON), find the metrics port it bound, and scrape ``/metrics`` over HTTP."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
# A scrape: {(sample name, sorted labels): value}.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
METRICS_AT = re.compile(r"metrics on http://([\d.]+):(\d+)/metrics")


@dataclass
class Process:
    """A child process whose stderr lines are collected as they come."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str] = field(default_factory=queue.Queue)
    _pump: threading.Thread | None = None

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        """The first log message (text line, or a JSON line's message) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            found = pattern.search(message_of(line))
            if found:
                return found
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.popen.poll() is not None:
                    raise AssertionError(
                        f"process exited with {self.popen.returncode}; its log:\n"
                        + "".join(self.lines[-30:])
                    ) from None
                continue
            found = pattern.search(message_of(line))
            if found:
                return found
        raise AssertionError(f"no log line matching {pattern.pattern!r} within {timeout} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        if self._pump is not None:  # every line the process wrote is in ``lines`` after this
            self._pump.join(timeout)


def message_of(line: str) -> str:
    if line.startswith("{"):
        try:
            return str(json.loads(line).get("message", ""))
        except json.JSONDecodeError:
            return line
    return line


def start_process(argv: Sequence[str], env: dict[str, str]) -> Process:
    popen = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    process = Process(popen)

    def pump() -> None:
        assert popen.stderr is not None
        for line in popen.stderr:
            process._queue.put(line)
            process.lines.append(line)

    process._pump = threading.Thread(target=pump, daemon=True)
    process._pump.start()
    return process


def scrape(url: str, timeout: float = 10.0) -> Samples:
    """Every sample at ``url`` as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; KeyError naming what there is if absent."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        near = sorted(str(k) for k in samples if k[0] == name)
        raise KeyError(f"no sample {key}; samples named {name}: {near}")
    return samples[key]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every ``name`` sample whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def json_lines(lines: Sequence[str]) -> Iterator[dict[str, object]]:
    """The log's records; every line must be one JSON object (asserted by parsing it)."""
    for line in lines:
        if line.strip():
            record = json.loads(line)
            assert isinstance(record, dict), line
            yield record

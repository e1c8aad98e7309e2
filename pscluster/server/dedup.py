"""What each worker's last push got: a retried push is answered again, never applied twice.

A worker numbers its pushes (``seq``, strictly increasing over its pushes to a job) and a
retry reuses the number, so the highest seq seen per worker and the answer it got are all a
shard needs for idempotence (section 9 of the style guide: versions and ids on every push).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pscluster.server.domain import Outcome, PushHeader, PushResult


class PushLedger:
    """worker -> (highest seq decided, its result). The job calls it under its lock."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, PushResult]] = {}

    def recall(self, header: PushHeader, version: int, clock: int) -> PushResult | None:
        """The answer to a push already decided (its worker's seq is not new), or None for a
        new push. A retry of the last push gets that push's answer again; an older seq (a retry
        overtaken by a later push) gets UNKNOWN: nothing is applied either way."""
        last = self._last.get(header.worker_id)
        if last is None or header.seq > last[0]:
            return None
        if header.seq == last[0]:
            return replace(last[1], duplicate=True)
        return PushResult(
            Outcome.UNKNOWN,
            version,
            clock,
            duplicate=True,
            reason=f"seq {header.seq} is older than this worker's last push (seq {last[0]})",
        )

    def remember(self, worker_id: str, seq: int, result: PushResult) -> None:
        self._last[worker_id] = (seq, result)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able, for checkpoints."""
        return {
            worker: {"seq": seq, **_result_to_json(result)}
            for worker, (seq, result) in self._last.items()
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self._last = {
            worker: (int(entry["seq"]), _result_from_json(entry)) for worker, entry in data.items()
        }


def _result_to_json(result: PushResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome.value,
        "version": result.version,
        "clock": result.clock,
        "reason": result.reason,
        "next_version": result.next_version,
    }


def _result_from_json(data: dict[str, Any]) -> PushResult:
    """Also reads results written before ``next_version`` (0: none)."""
    return PushResult(
        Outcome(data["outcome"]),
        int(data["version"]),
        int(data["clock"]),
        reason=data["reason"],
        next_version=int(data.get("next_version", 0)),
    )

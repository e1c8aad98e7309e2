"""A job's counters on one shard: what ``GetJobStats`` reports and tests assert on."""

from __future__ import annotations

import time
from collections import Counter


class JobCounters:
    """Plain counters; the job updates them under its lock."""

    def __init__(self) -> None:
        self.pushes_received = 0
        self.pushes_applied = 0
        self.pushes_rejected: Counter[str] = Counter()
        self.pulls = 0
        self.bytes_pushed = 0
        self.bytes_pulled = 0
        self.bytes_pushed_raw = 0
        self.staleness: Counter[int] = Counter()
        self.clock_staleness: Counter[int] = Counter()
        self.max_clock_lead = 0
        self.steps_applied = 0
        self.last_update_unix = 0.0
        self.pushes_duplicate = 0  # retries of pushes already decided, answered again

    def state(self) -> dict[str, object]:
        """The counters as JSON-able data (for checkpoints); map keys become strings."""
        return {
            name: dict(value) if isinstance(value, Counter) else value
            for name, value in vars(self).items()
        }

    def load_state(self, state: dict[str, object]) -> None:
        """Become what :meth:`state` described (unknown names are ignored: newer writers)."""
        for name, value in state.items():
            current = getattr(self, name, None)
            if isinstance(current, Counter) and isinstance(value, dict):
                keyed = int if name.endswith("staleness") else str
                setattr(self, name, Counter({keyed(k): int(v) for k, v in value.items()}))
            elif isinstance(current, int | float) and isinstance(value, int | float):
                setattr(self, name, type(current)(value))

    def applied(self, version_staleness: int, clock_staleness: int) -> None:
        """One push reached the parameters (sync: once per push in the step)."""
        self.pushes_applied += 1
        self.staleness[version_staleness] += 1
        self.clock_staleness[clock_staleness] += 1
        self.last_update_unix = time.time()

    def pushed(self, payload_bytes: int, raw_bytes: int) -> None:
        """A push's payload arrived whole: what it cost on the wire, and what it stands for."""
        self.bytes_pushed += payload_bytes
        self.bytes_pushed_raw += raw_bytes

    def rejected(self, reason: str) -> None:
        self.pushes_rejected[reason] += 1

    def pulled(self, payload_bytes: int) -> None:
        self.pulls += 1
        self.bytes_pulled += payload_bytes

    def clock_lead(self, lead: int) -> None:
        self.max_clock_lead = max(self.max_clock_lead, lead)

"""What a worker makes of its shards' answers to one push: each shard on its own.

Shards decide independently (a sync step may close on one shard and not yet on another, one
shard may refuse a push as stale that another took), so every answer is acted on for its own
shard: its compression state moves on only if it took the push, its next pull waits for the
``next_version`` it named, and only the shards that did not take the push get it again. No
mode is named here: the outcomes and ``next_version`` carry what the mode decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pscluster.compression import Encoded
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.compressed import PushEncoder

# The push is in the shard's parameters, or held for the step it closes.
TAKEN = (ps_pb2.PUSH_OUTCOME_APPLIED, ps_pb2.PUSH_OUTCOME_BUFFERED)
# The push will not be taken whatever the worker does: the step closed without it (backup
# workers). The batch is dropped for that shard.
FINAL = (ps_pb2.PUSH_OUTCOME_LATE,)
# Why a shard did not take a push, as dropped batches are counted ("stale", "late", ...).
REASONS = {
    ps_pb2.PUSH_OUTCOME_STALE: "stale",
    ps_pb2.PUSH_OUTCOME_LATE: "late",
    ps_pb2.PUSH_OUTCOME_ALREADY_PUSHED: "already_pushed",
    ps_pb2.PUSH_OUTCOME_UNSPECIFIED: "refused",
}


@dataclass
class PushRound:
    """One window's update on its way to every shard, over its attempts."""

    pending: set[int]  # shards that have not taken it and may still
    refused: dict[int, str] = field(default_factory=dict)  # shard -> why, as things stand

    @classmethod
    def to(cls, shards: int) -> PushRound:
        return cls(set(range(shards)))

    @property
    def done(self) -> bool:
        """No shard is left to try: each took the update or refused it for good."""
        return not self.pending

    @property
    def taken_everywhere(self) -> bool:
        return self.done and not self.refused

    @property
    def reason(self) -> str:
        """Why the update is not everywhere (the reason of the last shard to refuse it)."""
        return next(reversed(self.refused.values()), "")

    def retry_versions(self, min_versions: list[int]) -> list[int]:
        """What a retry's pull waits for: each pending shard's named version, and nothing on
        the shards that took the push (or refused it for good). Waiting there for the step it
        is buffered in would deadlock two workers in sync whose pushes two shards answered
        crosswise (each buffered on one, stale on the other: each shard's step then waits
        for the retry of the worker that waits for the other's). The versions the shards
        named stay in ``min_versions`` for the next window's pull."""
        return [v if i in self.pending else 0 for i, v in enumerate(min_versions)]

    def drop(self, reason: str) -> None:
        """Give up on the shards still pending, for ``reason`` (the job moved between shards
        under this push: what they did not take is dropped, never sent twice)."""
        for i in self.pending:
            self.refused[i] = reason
        self.pending.clear()

    def settle(
        self,
        replies: Mapping[int, ps_pb2.PushReply],
        encoded: Mapping[int, Encoded],
        encoder: PushEncoder,
        min_versions: list[int],
    ) -> None:
        """Take in the shards' answers to one attempt: commit the codec state of each shard
        that took the push, keep each shard's ``next_version`` for its next pull."""
        for i, reply in replies.items():
            min_versions[i] = reply.next_version
            if reply.outcome in TAKEN:
                encoder.commit(i, encoded[i])
                self.pending.discard(i)
                self.refused.pop(i, None)
            else:
                self.refused[i] = REASONS.get(reply.outcome, "refused")
                if reply.outcome in FINAL:
                    self.pending.discard(i)

"""Durable shards: a write-ahead log per job plus periodic checkpoints, replayed on start.

With ``PSC_SHARD_DATA_DIR`` set, a shard keeps each job in ``<dir>/<job id>/``: InitJob writes
a first checkpoint (config, initial values and buffers) before it replies; every input that
changes the job's state is appended to the log under the job's lock, so the log's order is the
order of application (a push that reached the consistency policy, with its header, loss scale
and buffer delta, and its payload as it came off the wire; a SetMembers that was not older than
the generation in force; a pull by an excluded or re-entering ssp member, whose clock it
moves). A push is acknowledged only after its record is written, and with ``wal_fsync=always``
only after it is fsynced. Every ``checkpoint_seconds`` or ``checkpoint_wal_bytes`` the job's
whole state (values, buffers, optimizer moments and step counts, version, clocks, generation,
members, the push-dedup table, the sync step in progress with its buffer sum, counters) is
checkpointed and the log starts a new segment. On start the shard loads each job's newest good
checkpoint and replays the log after it through the same code the live shard ran, before it
reports SERVING. A push retried after a timeout or a restart is answered from the restored
dedup table (duplicate=True) and applied once.

What ``wal_fsync`` (``PSC_WAL_FSYNC``) loses:

========  ==========================================  =======================================
setting   shard process crash (SIGKILL, OOM, bug)     machine crash (power, kernel panic)
========  ==========================================  =======================================
always    nothing acknowledged: a reply is sent only  nothing acknowledged: one fsync (group
          after its record is written                 commit, shared by concurrent pushers)
                                                      precedes every reply
interval  nothing acknowledged (records are in the    up to ``wal_fsync_interval_seconds`` of
          kernel's page cache once written)           acknowledged pushes
never     nothing acknowledged                        whatever the kernel had not yet written
                                                      back (typically up to ~30 s)
========  ==========================================  =======================================

A push that was logged but not yet acknowledged when the process died is applied on recovery;
its retry (same worker and seq) is then answered as a duplicate, so it still counts once. A
pull may read parameters whose push is not yet fsynced: after a *machine* crash (not a process
crash) with ``always``, such a worker may hold a version newer than the recovered shard's, and
its next push is refused with a message saying to pull again. Checkpoints are written
atomically (temporary file, fsync, rename, fsync of the folder); the previous checkpoint and
the log after it are kept, so a damaged newest checkpoint falls back to the one before. A torn
or corrupt log tail (never acknowledged) is truncated with a warning; the shard refuses to
start only when no checkpoint of a job can be read.
"""

from pscluster.server.durability.journal import DurabilityConfig, Journal

__all__ = ["DurabilityConfig", "Journal"]

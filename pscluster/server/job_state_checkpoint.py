"""A job's state on a shard as tensors and JSON, and back: the one description of it that
checkpoints, recovery, moves and the durability tests go through. Part of
:class:`~pscluster.server.job_state.JobState`, whose fields it reads and sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from pscluster.model.optimizer import FlatOptimizer
from pscluster.server.clocks import MemberClocks
from pscluster.server.consistency import ConsistencyPolicy, make_policy
from pscluster.server.dedup import PushLedger
from pscluster.server.domain import JobConfig
from pscluster.server.job_buffers import JobBuffers
from pscluster.server.snapshots import SnapshotCache
from pscluster.server.stats import JobCounters
from pscluster.server.tables.job_tables import JobTables
from pscluster.server.trial import TrialCopy
from pscluster.server.zero_mask import ZeroMask

StateDict = tuple[dict[str, torch.Tensor], dict[str, Any]]

_VALUES = "values"
_BUFFERS = "buffers"
_OPT = "opt."
_POLICY = "policy."
_TABLES = "tables."
_ZEROS = "hold_zeros"


class JobStateCheckpoint:
    """Mixed into JobState: its fields, described and loaded back."""

    config: JobConfig
    policy: ConsistencyPolicy
    revision: int
    opt: FlatOptimizer
    zeros: ZeroMask
    buffers: JobBuffers
    tables: JobTables
    version: int
    clocks: MemberClocks
    generation: int
    ledger: PushLedger
    counters: JobCounters
    snapshots: SnapshotCache
    trial: TrialCopy | None
    _wake: Callable[[], None]

    def state_dict(self, checkpoint: str = "", *, copy: bool = True) -> StateDict:
        """Tensors (copies, so the caller may write them while pushes go on) and JSON-able
        data; the config is in it, so it alone rebuilds the job. ``checkpoint`` "full" or
        "delta" is the journal's read (see :meth:`JobTables.state_dict`): a "delta" holds
        only the table rows changed since the last checkpoint. ``copy`` False lends the
        values', the optimizer's and the tables' own tensors: a new job's first checkpoint, which
        nothing can change while it is written, costs no second copy of a 3 GB table or vector."""
        opt_tensors, opt_scalars = self.opt.state_tensors(copy=copy)
        policy_tensors, policy_meta = self.policy.state_dict()
        values, buffers = self.opt.values, self.buffers.values
        tensors = {_VALUES: values.clone() if copy else values}
        if len(self.buffers):
            tensors[_BUFFERS] = buffers.clone() if copy else buffers
        tensors.update({_OPT + k: v for k, v in opt_tensors.items()})
        tensors.update({_POLICY + k: v for k, v in policy_tensors.items()})
        table_tensors, table_scalars = self.tables.state_dict(checkpoint, copy=copy)
        tensors.update({_TABLES + k: v for k, v in table_tensors.items()})
        zeros = self.zeros.to_state()
        if zeros is not None:
            tensors[_ZEROS] = zeros
        trial_meta = None
        if checkpoint and self.trial is not None:  # moves leave it behind (server/trial.py)
            trial_tensors, trial_meta = self.trial.to_state()
            tensors.update(trial_tensors)
        meta = {
            "config": self.config.to_json(),
            "version": self.version,
            "generation": self.generation,
            "clocks": self.clocks.state(),
            "last_push": self.ledger.state_dict(),
            "counters": self.counters.state(),
            "optimizer": opt_scalars,
            "policy": policy_meta,
            "consistency_revision": self.revision,
            "tables": table_scalars,
            "trial": trial_meta,
            # Whether this holds only the table rows changed since the previous checkpoint.
            "delta": any(".delta." in name for name in table_tensors),
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Become exactly what :meth:`state_dict` described (of a job with this config, as
        recovery builds it: not yet serving pulls).

        A KeyError when the config has buffers but the tensors not: recovery then tries an
        older checkpoint.
        """
        self.snapshots.before_update()
        self.opt.values.copy_(tensors[_VALUES])
        if self.config.buffer_length:
            self.buffers.values.copy_(tensors[_BUFFERS])
        self.opt.load_state_tensors(_prefixed(tensors, _OPT), meta["optimizer"])
        self._load_consistency(meta)
        self.policy.load_state_dict(_prefixed(tensors, _POLICY), meta["policy"])
        if len(self.tables):
            self.tables.load_state_dict(_prefixed(tensors, _TABLES), meta["tables"])
        self.zeros = ZeroMask.from_state(tensors.get(_ZEROS), self.config.length)
        self.version = int(meta["version"])
        self.generation = int(meta["generation"])
        self.clocks.load_state(meta["clocks"])
        self.ledger.load_state_dict(meta["last_push"])
        self.counters.load_state(meta["counters"])
        self.trial = TrialCopy.from_state(tensors, meta.get("trial"))
        self._wake()

    def _load_consistency(self, meta: dict[str, Any]) -> None:
        """The mode the state was saved in, which a live switch may have changed since the
        checkpoint this job was built from (a delta on a full one): its policy, empty."""
        saved = meta["config"]
        mode = saved["mode"], saved["staleness"], saved["backup_workers"]
        if mode != (self.config.mode, self.config.staleness, self.config.backup_workers):
            self.policy = make_policy(*mode)
            self.config = replace(
                self.config, mode=mode[0], staleness=mode[1], backup_workers=mode[2]
            )
        self.revision = int(meta.get("consistency_revision", 0))


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v.clone() for k, v in tensors.items() if k.startswith(prefix)}

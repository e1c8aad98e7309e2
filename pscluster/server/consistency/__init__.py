"""Consistency modes (async, sync, ssp): when a push is applied and when a worker may pull."""

from pscluster.server.consistency.async_ import AsyncPolicy
from pscluster.server.consistency.backup_sync import BackupSyncPolicy
from pscluster.server.consistency.base import ConsistencyPolicy, Decision, JobContext, Traits
from pscluster.server.consistency.job_modes import (
    AUTO,
    JOB_MODES,
    starting_consistency,
    validate_job_consistency,
)
from pscluster.server.consistency.registry import (
    MAX_LOCAL_STEPS,
    MODES,
    clock_bound,
    make_policy,
    mode_traits,
    validate_consistency,
)
from pscluster.server.consistency.ssp import SSPPolicy
from pscluster.server.consistency.switch import switch_policy
from pscluster.server.consistency.sync import SyncPolicy
from pscluster.server.consistency.trial_step import TrialStep

__all__ = [
    "AUTO",
    "JOB_MODES",
    "MAX_LOCAL_STEPS",
    "MODES",
    "AsyncPolicy",
    "BackupSyncPolicy",
    "ConsistencyPolicy",
    "Decision",
    "JobContext",
    "SSPPolicy",
    "SyncPolicy",
    "Traits",
    "TrialStep",
    "clock_bound",
    "make_policy",
    "mode_traits",
    "starting_consistency",
    "switch_policy",
    "validate_consistency",
    "validate_job_consistency",
]

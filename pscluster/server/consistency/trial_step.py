"""What a live switch of consistency (mode "auto") does to the job's trial copy on a shard
(:mod:`pscluster.server.trial`): the proto's ``Trial``, as the coordinator's actions and the
shards' journal name it. Apart from the copy itself so that the coordinator's core, which
decides the step, needs nothing of torch.
"""

from __future__ import annotations

from enum import Enum


class TrialStep(str, Enum):
    NONE = ""  # the copy, if any, stays as it is
    BEGIN = "begin"  # copy the learned state now, replacing an older copy
    UNDO = "undo"  # the state becomes the copy again, at a new version; the copy goes
    # As UNDO, but the copy stays: the setting switched to is on trial from the same point.
    UNDO_KEEP = "undo_keep"
    END = "end"  # the copy goes: the trial is kept

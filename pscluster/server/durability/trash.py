"""The folders of jobs that left a shard, deleted in the background.

A moved or dropped job's folder holds its log and checkpoints, often hundreds of megabytes:
deleting them file by file took 0.1-0.25 s here, and a move waited for it twice (a shard in
both layouts deletes the replaced copy's files before the adopted job takes the folder's name,
and the shard the job left deletes its files when told, before the move answers). So the
folder is renamed aside at once, durably, which frees its name and takes it out of recovery's
sight, and a background thread deletes it. Recovery deletes whatever a stop left behind
(:func:`clear_trash`) before it reads the job folders.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from pathlib import Path

from pscluster.server.durability.wal import fsync_dir

log = logging.getLogger(__name__)

# Never in a job folder's name: job_folder quotes every "." (as the staged suffix relies on).
TRASH_SUFFIX = ".deleted-"


def discard(folder: Path) -> None:
    """Take ``folder`` out of its parent now (renamed aside, durably) and delete its files
    in the background. Nothing happens when it is not there."""
    trash = folder.with_name(f"{folder.name}{TRASH_SUFFIX}{uuid.uuid4().hex[:12]}")
    try:
        folder.rename(trash)
    except FileNotFoundError:
        return
    fsync_dir(folder.parent)
    threading.Thread(target=_delete, args=(trash,), name="trash", daemon=True).start()


def clear_trash(data_dir: Path) -> None:
    """Delete the folders :func:`discard` renamed aside and a stop left undeleted."""
    for trash in data_dir.glob(f"*{TRASH_SUFFIX}*"):
        log.info("deleting %s, a dropped job's folder a stop left behind", trash)
        _delete(trash)


def _delete(trash: Path) -> None:
    shutil.rmtree(trash, ignore_errors=True)

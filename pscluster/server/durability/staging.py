"""An adopted job's first checkpoint, staged beside the job's folder (AdoptJob).

A job moved onto a shard that already holds an older copy of it (a shard in both layouts of a
live re-layout) must never be left with neither copy: the new checkpoint is written durably
beside the job's folder, the old files go, and the staged folder takes their place
(:meth:`~pscluster.server.durability.journal.Journal.from_staged`). Recovery settles an
adoption a crash cut short (:func:`settle_staged`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pscluster.server.durability.checkpoint import (
    State,
    checkpoint_path,
    write_checkpoint,
    write_checkpoint_image,
)
from pscluster.server.durability.wal import fsync_dir

log = logging.getLogger(__name__)


def stage(folder: Path, state: bytes | State) -> Path:
    """Write ``state`` as the first checkpoint of a staged folder beside the job's
    ``folder``, durably: an image as AdoptJob brought it (already checked), written as it
    came, or the adopted job's tensors and JSON (a state put together on this shard)."""
    staged = staged_folder(folder)
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    path = checkpoint_path(staged, 0)
    if isinstance(state, bytes):
        write_checkpoint_image(path, state)
    else:
        write_checkpoint(path, *state)
    return staged


STAGED_SUFFIX = ".staged"  # never in a job's folder name: job_folder quotes every "."


def staged_folder(folder: Path) -> Path:
    return folder.with_name(folder.name + STAGED_SUFFIX)


def settle_staged(data_dir: Path) -> None:
    """Recovery, first: an adoption a crash cut short. Its staged folder is dropped while the
    job's own folder is still there (the adoption never replaced it, nor answered), and takes
    that folder's place once it is gone (the old files were deleted only after the staged
    checkpoint was durable)."""
    for staged in data_dir.glob("*" + STAGED_SUFFIX):
        folder = staged.with_name(staged.name[: -len(STAGED_SUFFIX)])
        if folder.exists():
            shutil.rmtree(staged)
        else:
            staged.replace(folder)
            log.warning("recovered %s: an adoption's checkpoint the crash left staged", folder)
    fsync_dir(data_dir)

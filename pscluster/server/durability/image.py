"""A job's whole state as tensors plus JSON, and back: what a checkpoint holds.

The job describes itself (:meth:`ShardJob.state_dict` / :meth:`ShardJob.load_state_dict`); this
module only builds a job from such a description, with the config the description carries.
:func:`capture` copies the state under the job's lock, the file is written outside it.
"""

from __future__ import annotations

from typing import Any

import torch

from pscluster.server.domain import JobConfig
from pscluster.server.shard_job import ShardJob

State = tuple[dict[str, torch.Tensor], dict[str, Any]]


def config_to_json(config: JobConfig) -> dict[str, Any]:
    return config.to_json()


def config_from_json(data: dict[str, Any]) -> JobConfig:
    """Also reads configs written before buffers (no buffer fields: a job without any)."""
    return JobConfig.from_json(data)


def capture(job: ShardJob) -> State:
    """The job's state: copies, so the caller may write them while pushes go on."""
    return job.state_dict()


def restore(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> ShardJob:
    """A job in exactly the state :func:`capture` saw.

    A KeyError when the config has buffers but the file not: recovery tries an older one.
    """
    config = JobConfig.from_json(meta["config"])
    buffers = tensors["buffers"].clone() if config.buffer_length else None
    # The tables start from their checkpointed rows rather than drawing rows to overwrite.
    tables = [tensors[f"tables.{i}.values"] for i in range(len(config.tables))]
    job = ShardJob(config, torch.empty(config.length), buffers, tables)
    job.load_state_dict(tensors, meta)
    return job

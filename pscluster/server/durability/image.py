"""A job's whole state as tensors plus JSON, and back: what a checkpoint holds.

This module reaches into :class:`~pscluster.server.shard_job.ShardJob`'s fields on purpose: the
job stays free of persistence code, and the one place that knows how a job is laid out on disk
is here. :func:`capture` runs under the job's lock (tensors are copied there), the file is
written outside it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from pscluster.model.optimizer import OptimizerSpec
from pscluster.server.domain import JobConfig, Outcome, PushResult

if TYPE_CHECKING:
    from pscluster.server.shard_job import ShardJob

_VALUES = "values"
_BUFFERS = "buffers"
_OPT = "opt."
_POLICY = "policy."


def config_to_json(config: JobConfig) -> dict[str, Any]:
    return asdict(config)


def config_from_json(data: dict[str, Any]) -> JobConfig:
    """Also reads configs written before buffers (no buffer fields: a job without any)."""
    spec = dict(data["optimizer"])
    spec["betas"] = tuple(spec["betas"])
    counters = tuple((int(start), int(length)) for start, length in data.get("counters", ()))
    return JobConfig(**{**data, "optimizer": OptimizerSpec(**spec), "counters": counters})


def capture(job: ShardJob) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The job's state (call with the job's lock held): copies, so the caller may write them
    while pushes go on."""
    opt_tensors, opt_scalars = job._opt.state_tensors()
    policy_tensors, policy_meta = job._policy.state_dict()
    tensors = {_VALUES: job._opt.values.clone()}
    if len(job._buffers):
        tensors[_BUFFERS] = job._buffers.values.clone()
    tensors.update({_OPT + k: v for k, v in opt_tensors.items()})
    tensors.update({_POLICY + k: v for k, v in policy_tensors.items()})
    meta = {
        "config": config_to_json(job.config),
        "version": job._version,
        "generation": job._generation,
        "clocks": job._clocks.state(),
        "last_push": {
            worker: {"seq": seq, **_result_to_json(result)}
            for worker, (seq, result) in job._last_push.items()
        },
        "counters": job._counters.state(),
        "optimizer": opt_scalars,
        "policy": policy_meta,
    }
    return tensors, meta


def restore(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> ShardJob:
    """A job in exactly the state :func:`capture` saw."""
    from pscluster.server.shard_job import ShardJob  # the job imports this package

    config = config_from_json(meta["config"])
    # A KeyError when the config has buffers but the file not: recovery tries an older one.
    buffers = tensors[_BUFFERS].clone() if config.buffer_length else None
    job = ShardJob(config, tensors[_VALUES].clone(), buffers)
    job._opt.load_state_tensors(_prefixed(tensors, _OPT), meta["optimizer"])
    job._policy.load_state_dict(_prefixed(tensors, _POLICY), meta["policy"])
    job._version = int(meta["version"])
    job._generation = int(meta["generation"])
    job._clocks.load_state(meta["clocks"])
    job._last_push = {
        worker: (int(entry["seq"]), _result_from_json(entry))
        for worker, entry in meta["last_push"].items()
    }
    job._counters.load_state(meta["counters"])
    return job


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v.clone() for k, v in tensors.items() if k.startswith(prefix)}


def _result_to_json(result: PushResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome.value,
        "version": result.version,
        "clock": result.clock,
        "reason": result.reason,
    }


def _result_from_json(data: dict[str, Any]) -> PushResult:
    return PushResult(
        Outcome(data["outcome"]), int(data["version"]), int(data["clock"]), reason=data["reason"]
    )

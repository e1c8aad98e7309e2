"""Mixed precision on a worker: bf16 or fp16 autocast, and fp16's dynamic loss scaling.

The shards keep float32 master weights and optimizer state whatever the job's precision:
workers only compute the forward pass in half precision (the seeds' fp16/bf16 training,
Micikevicius et al. 2018). bf16 has float32's range, so it needs no scaling. fp16 does: small
gradients underflow to zero, so the loss is multiplied by a scale before backward; a step
whose gradient overflows is skipped and the scale halved, and after ``growth_interval`` good
steps it doubles (the policy of ``torch.amp.GradScaler``). The worker pushes the *scaled*
gradient with the scale in the push header and the shard divides, so a job that also
compresses its pushes to fp16 keeps the small values a plain fp16 cast would flush.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
INITIAL_SCALE = 2.0**16
GROWTH_INTERVAL = 2000
_MIN_SCALE = 2.0**-24


class PrecisionUnavailable(Exception):
    """The job's precision cannot run on this worker's device (fp16 on a CPU)."""


def parse(name: str) -> str:
    name = name or "fp32"
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is unknown; expected one of {list(PRECISIONS)}")
    return name


class Precision:
    def __init__(self, name: str, device: torch.device) -> None:
        self.name = parse(name)
        self.device = device
        if self.name == "fp16" and device.type != "cuda":
            raise PrecisionUnavailable(
                f"precision 'fp16' needs a CUDA device, but this worker runs on {device}: "
                "submit with precision='bf16' to train in half precision on CPUs"
            )
        self.scale = INITIAL_SCALE if self.name == "fp16" else 1.0
        self._good_steps = 0
        self.overflows = 0  # fp16 steps skipped because the scaled gradient overflowed

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.name == "fp32":
            yield
            return
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the (scaled, for fp16) loss; gradients land on the float32 parameters."""
        if self.scale != 1.0:
            loss = loss * self.scale
        loss.backward()  # type: ignore[no-untyped-call]

    def update(self, finite: bool) -> None:
        """After a step: halve the scale on an overflow, double it after a run of good steps."""
        if self.name != "fp16":
            return
        if not finite:
            self.overflows += 1
            self.scale = max(_MIN_SCALE, self.scale * 0.5)
            self._good_steps = 0
            return
        self._good_steps += 1
        if self._good_steps >= GROWTH_INTERVAL:
            self.scale *= 2.0
            self._good_steps = 0

"""Forward starts while the parameters are still arriving, and waits only for those it uses.

The pull of a step is received straight into the model's parameters (``ParamLayout.bind``),
range by range in the order of the flat vector, which is the order the model registered them
in: usually the order forward uses them. :class:`PullAhead` runs the pull on a thread of its
own and counts the bytes in place per shard range; :class:`PullGate` watches every torch call
forward makes (a ``TorchFunctionMode``) and holds a call that takes a parameter until that
parameter's bytes are in place. So the first layers compute while the last ones are on the
wire, and a parameter used out of order (a tied embedding, a layer reused) is waited for all
the same: what forward computes is exactly what it computes after a whole pull.

One attempt only: if the pull fails (a shard restarting, a sync barrier not met within the
pull's wait), :meth:`PullAhead.snapshot` raises :class:`PullAheadFailed` and the trainer
throws the step away and pulls again the ordinary way, with its retries, so a step never mixes
the bytes of two pulls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pscluster.model.layout import ParamLayout
from pscluster.shard_client import Snapshot

# How often a waiting call looks whether the worker still holds its lease.
_CHECK_SECONDS = 0.5


class PullAheadFailed(Exception):
    """The pull this step started with did not complete: redo the step after a new pull."""


class PullAhead:
    """One pull, running on its own thread, its progress per shard range in bytes."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self._full = [4 * n for n in lengths]
        self._filled = [0] * len(lengths)
        self._cond = threading.Condition()
        self._result: Snapshot | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.gated_seconds = 0.0  # how long forward's calls waited for their parameters

    def start(self, pull: Callable[[Callable[[int, int], None]], Snapshot]) -> PullAhead:
        """Run ``pull(progress)`` on a new thread; return at once."""

        def run() -> None:
            try:
                snap = pull(self._progress)
            except BaseException as e:  # given to whoever waits: never lost on the thread
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return
            with self._cond:
                self._result = snap
                self._filled = list(self._full)
                self._cond.notify_all()

        self._thread = threading.Thread(target=run, name="pull-ahead", daemon=True)
        self._thread.start()
        return self

    def _progress(self, index: int, filled: int) -> None:
        with self._cond:
            self._filled[index] = filled
            self._cond.notify_all()

    def wait_for(self, index: int, nbytes: int, alive: Callable[[], None]) -> None:
        """Until range ``index`` has ``nbytes`` in place (or the pull ended, well or not)."""
        with self._cond:
            if self._filled[index] >= nbytes or self._ended():
                return
            started = time.perf_counter()
            while self._filled[index] < nbytes and not self._ended():
                self._cond.wait(_CHECK_SECONDS)
                alive()
            self.gated_seconds += time.perf_counter() - started

    def snapshot(self) -> Snapshot:
        """The pull's result once it ended; PullAheadFailed if it failed."""
        with self._cond:
            while not self._ended():
                self._cond.wait()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise PullAheadFailed(str(self._error)) from self._error
        assert self._result is not None  # ended without an error: the result is set
        return self._result

    def join(self) -> None:
        """Until the pull's thread is done, however it ended: nothing may write into the
        model's parameters after the step that started the pull gave up on it."""
        if self._thread is not None:
            self._thread.join()

    def _ended(self) -> bool:
        return self._result is not None or self._error is not None


class PullGate(TorchFunctionMode):
    """While active (``with gate.watching(ahead, alive)``), every torch call that takes one of
    the model's parameters waits until the pull ``ahead`` has put that parameter in place."""

    def __init__(
        self, model: nn.Module, layout: ParamLayout, ranges: Sequence[tuple[int, int]]
    ) -> None:
        super().__init__()
        params = dict(model.named_parameters())
        # id of each parameter -> per shard range it lies in (one, or a few when a range
        # boundary cuts it), the bytes of that range it needs in place
        self._needs: dict[int, list[tuple[int, int]]] = {}
        for slot in layout.slots:
            first, end = slot.offset, slot.offset + slot.numel
            self._needs[id(params[slot.name])] = [
                (i, 4 * (min(end, start + length) - start))
                for i, (start, length) in enumerate(ranges)
                if start < end and first < start + length
            ]
        self._ahead: PullAhead | None = None
        self._alive: Callable[[], None] = lambda: None

    def watching(self, ahead: PullAhead, alive: Callable[[], None]) -> PullGate:
        self._ahead, self._alive = ahead, alive
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)  # type: ignore[no-untyped-call]
        self._ahead = None

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._ahead is not None:
            for value in (*args, *kwargs.values()):
                self._wait(value)
        return func(*args, **kwargs)

    def _wait(self, value: Any) -> None:
        if isinstance(value, (list, tuple)):  # e.g. an RNN's flat weights
            for item in value:
                self._wait(item)
            return
        needs = self._needs.get(id(value), ()) if isinstance(value, torch.Tensor) else ()
        for index, nbytes in needs:
            if self._ahead is not None:
                self._ahead.wait_for(index, nbytes, self._alive)

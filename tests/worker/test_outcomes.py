"""Each shard's answer to a push acts on that shard alone: its codec state, its next pull, and
whether it is sent the update again (no sockets: PushEncoder and PushRound as the trainer
uses them)."""

from __future__ import annotations

import torch

from pscluster.compression import CompressionSettings, make_compressor
from pscluster.v1 import parameter_server_pb2 as ps_pb2
from pscluster.worker.compressed import PushEncoder, Units
from pscluster.worker.outcomes import PushRound

APPLIED = ps_pb2.PUSH_OUTCOME_APPLIED
BUFFERED = ps_pb2.PUSH_OUTCOME_BUFFERED
STALE = ps_pb2.PUSH_OUTCOME_STALE
LATE = ps_pb2.PUSH_OUTCOME_LATE
ALREADY = ps_pb2.PUSH_OUTCOME_ALREADY_PUSHED
RANGES = [(0, 10), (10, 10)]  # two shards of ten values each


def _topk() -> PushEncoder:
    return PushEncoder(CompressionSettings(name="topk", ratio=0.2), RANGES)


def _reply(outcome: int, next_version: int = 0) -> ps_pb2.PushReply:
    return ps_pb2.PushReply(outcome=outcome, next_version=next_version)  # type: ignore[arg-type]


def _decoded(payload: bytes | bytearray | memoryview, length: int = 10) -> torch.Tensor:
    return make_compressor(CompressionSettings(name="topk")).decompress(payload, length)


def test_a_topk_push_that_shards_answer_differently_keeps_each_residual_in_step() -> None:
    # Prepare: shard 0 takes the push, shard 1 refuses it as stale
    encoder = _topk()
    gradient = torch.arange(1.0, 21.0)
    push = PushRound.to(2)
    min_versions = [0, 0]
    first = encoder.encode(gradient, epoch=0)

    # Execute
    push.settle({0: _reply(APPLIED), 1: _reply(STALE)}, first, encoder, min_versions)

    # Assert: shard 0's residual moved on (sent + residual == gradient), shard 1's did not
    assert torch.equal(_decoded(first[0].payload) + encoder.state(0)["residual"], gradient[:10])
    assert torch.equal(encoder.state(1)["residual"], torch.zeros(10))
    assert push.pending == {1} and push.refused == {1: "stale"}

    # Execute: the retry, on fresh parameters, goes to shard 1 only, and it takes it
    retry = encoder.encode(gradient * 2, epoch=0, ranges=sorted(push.pending))
    push.settle({1: _reply(APPLIED)}, retry, encoder, min_versions)

    # Assert: shard 1 counted its gradient once; shard 0 was not sent it twice
    assert set(retry) == {1}
    sent = _decoded(retry[1].payload)
    assert torch.equal(sent + encoder.state(1)["residual"], gradient[10:] * 2)
    assert push.taken_everywhere


def test_next_version_is_each_shards_own_and_already_pushed_is_sent_again() -> None:
    # Prepare: sync; shard 0 buffers the push in step 4, shard 1 holds an earlier push of
    # this worker in its open step 7
    encoder = _topk()
    push = PushRound.to(2)
    min_versions = [0, 0]
    encoded = encoder.encode(torch.ones(20), epoch=0)

    # Execute
    push.settle(
        {0: _reply(BUFFERED, next_version=5), 1: _reply(ALREADY, next_version=8)},
        encoded,
        encoder,
        min_versions,
    )

    # Assert: the next pull waits for each shard's own step; only shard 1 is pushed again,
    # and its residual waits for a push it takes
    assert min_versions == [5, 8]
    assert push.pending == {1} and push.reason == "already_pushed"
    assert encoder.state(0)["residual"].any() and not encoder.state(1)["residual"].any()


def test_late_is_final_for_its_shard_and_the_window_is_dropped() -> None:
    encoder = _topk()
    push = PushRound.to(2)
    min_versions = [3, 3]
    encoded = encoder.encode(torch.ones(20), epoch=0)

    push.settle({0: _reply(APPLIED, 4), 1: _reply(LATE)}, encoded, encoder, min_versions)

    assert push.done and not push.taken_everywhere and push.reason == "late"
    assert min_versions == [4, 0]


def test_a_move_between_shards_cuts_the_residual_again_and_keeps_every_value() -> None:
    # Prepare: a residual left on both ranges by a top-k push both shards took
    encoder = _topk()
    encoded = encoder.encode(torch.arange(1.0, 21.0), epoch=0)
    for i in (0, 1):
        encoder.commit(i, encoded[i])
    before = torch.cat([encoder.state(0)["residual"], encoder.state(1)["residual"]])

    # Execute: the job moves from two ranges of 10 to three of 7, 7 and 6
    encoder.recut([(0, 7), (7, 7), (14, 6)])

    # Assert: the same values, cut at the new offsets
    after = [encoder.state(i)["residual"] for i in range(3)]
    assert [len(r) for r in after] == [7, 7, 6]
    assert torch.equal(torch.cat(after), before) and bool(before.any())


def test_a_push_cut_by_a_move_is_dropped_for_the_shards_left_and_says_why() -> None:
    push = PushRound.to(3)
    push.pending.discard(0)  # shard 0 took it before the move
    push.drop("layout")
    assert push.done and not push.taken_everywhere and push.reason == "layout"


def test_a_retry_waits_only_on_the_shards_that_did_not_take_the_push() -> None:
    # Prepare: three shards; 0 buffered it for its open sync step (its next pull waits for
    # version 8), 1 refused it as stale, 2 closed a step without it (late: refused for good)
    push = PushRound.to(3)
    min_versions = [0, 0, 0]
    replies = {0: _reply(BUFFERED, 8), 1: _reply(STALE, 5), 2: _reply(LATE, 4)}
    encoder = PushEncoder(CompressionSettings(name="none"), [(0, 4), (4, 4), (8, 4)])
    push.settle(replies, encoder.encode(torch.ones(12), epoch=0), encoder, min_versions)

    # Execute
    waits = push.retry_versions(min_versions)

    # Assert: the retry's pull does not wait for shard 0's step (which may wait for another
    # worker's retry to shard 1); the next window's pull still does
    assert waits == [0, 5, 0]
    assert min_versions == [8, 5, 4]


def test_a_residual_of_local_steps_changes_never_goes_into_a_gradient() -> None:
    # Prepare: mode "auto" moved from a push per step to local steps and back. Gradients held
    # back 0.8 of each range under topk at 20%.
    encoder = _topk()
    gradient, change, again = torch.arange(1.0, 21.0), torch.full((20,), 0.5), torch.ones(20)
    push = PushRound.to(2)
    first = encoder.encode(gradient, epoch=0)
    push.settle({0: _reply(APPLIED), 1: _reply(APPLIED)}, first, encoder, [0, 0])
    held = encoder.state(0)["residual"].clone()

    # Execute: a change of local steps, then a gradient again
    push = PushRound.to(2)
    local = encoder.encode(change, epoch=0, units=Units(change=True))
    push.settle({0: _reply(APPLIED), 1: _reply(APPLIED)}, local, encoder, [0, 0])
    push = PushRound.to(2)
    after = encoder.encode(again, epoch=0)
    push.settle({0: _reply(APPLIED), 1: _reply(APPLIED)}, after, encoder, [0, 0])

    # Assert: the gradients' residual went out with the change (the shards add it at lr);
    # the change's residual did not go out with the gradient, which starts afresh
    assert torch.equal(_decoded(local[0].payload) + local[0].state["residual"], change[:10] + held)
    assert torch.equal(_decoded(after[0].payload) + encoder.state(0)["residual"], again[:10])


def test_a_residual_follows_the_loss_scale_from_push_to_push() -> None:
    # Prepare: fp16 loss scaling; a push at scale 4 held back 80% of each range, times 4
    encoder = _topk()
    gradient, later = torch.arange(1.0, 21.0), torch.arange(20.0, 0.0, -1.0)
    push = PushRound.to(2)
    first = encoder.encode(gradient * 4, epoch=0, units=Units(scale=4.0))
    push.settle({0: _reply(APPLIED), 1: _reply(APPLIED)}, first, encoder, [0, 0])
    held = encoder.state(0)["residual"].clone()

    # Execute: the scale halved (an overflow); the next gradient goes out times 2
    push = PushRound.to(2)
    second = encoder.encode(later * 2, epoch=0, units=Units(scale=2.0))
    push.settle({0: _reply(APPLIED), 1: _reply(APPLIED)}, second, encoder, [0, 0])

    # Assert: what was held back went out at the new scale (the shard divides by 2): half
    # of what was held at 4
    sent = _decoded(second[0].payload) + encoder.state(0)["residual"]
    assert torch.allclose(sent, later[:10] * 2 + held / 2)


def test_a_recut_keeps_every_held_value_at_the_last_pushs_scale() -> None:
    # Prepare: shard 0 took a push at scale 4 and refused the one at scale 2 that shard 1 took
    encoder = _topk()
    push = PushRound.to(2)
    first = encoder.encode(torch.arange(1.0, 21.0) * 4, epoch=0, units=Units(scale=4.0))
    push.settle({0: _reply(APPLIED), 1: _reply(STALE)}, first, encoder, [0, 0])
    second = encoder.encode(torch.arange(1.0, 21.0) * 2, epoch=0, units=Units(scale=2.0))
    push.settle({1: _reply(APPLIED)}, {1: second[1]}, encoder, [0, 0])
    whole = torch.cat([encoder.state(0)["residual"] / 4, encoder.state(1)["residual"] / 2])

    # Execute: the job moves to ranges of 5 and 15 values
    encoder.recut([(0, 5), (5, 15)])

    # Assert: the same values held back, all at scale 2 now
    after = torch.cat([encoder.state(0)["residual"], encoder.state(1)["residual"]])
    assert torch.allclose(after, whole * 2)

"""A worker's training window: one step, or local SGD steps with the job's own optimizer,
checked against plain PyTorch doing the same steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pscluster.model.buffers import BufferLayout
from pscluster.model.layout import ParamLayout
from pscluster.model.optimizer import FlatOptimizer, OptimizerSpec
from pscluster.v1 import common_pb2
from pscluster.worker.local_sgd import LocalSGD, all_finite
from pscluster.worker.objectives import HardObjective
from pscluster.worker.precision import GROWTH_INTERVAL, Precision, PrecisionUnavailable

SGD = common_pb2.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
ADAM = common_pb2.OptimizerConfig(name="adam", lr=1e-3)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)
    ]


NO_BUFFERS = torch.zeros(0, dtype=torch.float64)


def make_local(model: nn.Module, config: common_pb2.OptimizerConfig, steps: int) -> LocalSGD:
    layouts = (ParamLayout.of_module(model), BufferLayout.of_module(model))
    return LocalSGD(
        model,
        layouts,
        HardObjective(F.cross_entropy),
        config,
        steps,
        Precision("fp32", torch.device("cpu")),
    )


def test_one_step_pushes_the_gradient_of_the_pulled_parameters() -> None:
    model = net()
    layout = ParamLayout.of_module(model)
    start = layout.flatten(dict(model.named_parameters())) + 0.01
    ((x, y),) = data(1)
    reference = copy.deepcopy(model)
    layout.load_into(reference, start)
    F.cross_entropy(reference(x), y).backward()  # type: ignore[no-untyped-call]

    window = make_local(model, SGD, 1).run(start, NO_BUFFERS, [(x, y)])

    assert window.update is not None and window.samples == 5 and window.nonfinite == 0
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])  # type: ignore[union-attr]
    assert torch.equal(window.update, expected)


def test_a_pull_received_into_bound_parameters_trains_as_one_copied_in() -> None:
    # Prepare: two equal models; one's parameters become views of its pull vector
    copied, bound = net(), net()
    layout = ParamLayout.of_module(bound)
    vector = layout.bind(bound)
    assert vector is not None
    pulled = layout.flatten(dict(copied.named_parameters())) + 0.01
    vector.copy_(pulled)  # what a pull received into the vector does
    ((x, y),) = data(1)

    # Execute
    expected = make_local(copied, SGD, 1).run(pulled, NO_BUFFERS, [(x, y)])
    got = make_local(bound, SGD, 1).run(vector, NO_BUFFERS, [(x, y)])

    # Assert: the model is the pulled vector, and its gradient is the same bit for bit
    assert torch.equal(layout.flatten(dict(bound.named_parameters())), pulled)
    assert all(p.untyped_storage().data_ptr() == vector.data_ptr() for p in bound.parameters())
    assert got.update is not None and expected.update is not None
    assert torch.equal(got.update, expected.update)


def test_only_float32_cpu_parameters_are_bound() -> None:
    model = net().double()
    before = [p.data_ptr() for p in model.parameters()]

    assert ParamLayout.of_module(model).bind(model) is None
    assert [p.data_ptr() for p in model.parameters()] == before


@pytest.mark.parametrize("config", [SGD, ADAM], ids=["sgd-momentum", "adam"])
def test_local_steps_push_what_the_jobs_optimizer_did_over_the_window(
    config: common_pb2.OptimizerConfig,
) -> None:
    # Prepare: the same model trained by plain torch.optim over two windows of 3 batches.
    model = net()
    layout = ParamLayout.of_module(model)
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    if config.name == "adam":
        opt = torch.optim.Adam(reference.parameters(), lr=1e-3)  # type: ignore[assignment]
    batches = data(6)
    local = make_local(model, config, 3)
    # The shard's side: plain SGD at the job's lr (what the coordinator sets up).
    shard = FlatOptimizer(
        layout.flatten(dict(model.named_parameters())), OptimizerSpec(name="sgd", lr=config.lr)
    )

    # Execute: pull, 3 local steps, push; twice (the optimizer state carries over).
    for window_batches in (batches[:3], batches[3:]):
        window = local.run(shard.values.clone(), NO_BUFFERS, window_batches)
        assert window.update is not None and window.nonfinite == 0
        shard.step(window.update)
        for x, y in window_batches:
            opt.zero_grad()
            F.cross_entropy(reference(x), y).backward()  # type: ignore[no-untyped-call]
            opt.step()

    # Assert: the shard holds what one process with torch.optim would (up to the rounding
    # of dividing by lr and multiplying back).
    expected = layout.flatten(dict(reference.named_parameters()))
    torch.testing.assert_close(shard.values, expected, rtol=1e-5, atol=1e-6)
    assert [n for _, n in window.steps] == [5, 5, 5]


def test_a_non_finite_batch_is_skipped_and_the_rest_of_the_window_is_pushed() -> None:
    model = net()
    layout = ParamLayout.of_module(model)
    batches = data(3)
    bad = batches[1][0].clone()
    bad[0, 0] = float("nan")
    batches[1] = (bad, batches[1][1])
    start = layout.flatten(dict(model.named_parameters()))

    window = make_local(model, SGD, 3).run(start, NO_BUFFERS, batches)

    assert window.nonfinite == 1 and window.samples == 10
    assert window.update is not None and all_finite(window.update)


def test_all_finite_takes_huge_finite_values_and_refuses_nan_and_inf() -> None:
    huge = torch.full((1000,), 3e38)
    assert all_finite(huge)  # the sum overflows; the exact check says finite
    for bad in (float("nan"), float("inf"), float("-inf")):
        values = torch.zeros(10)
        values[3] = bad
        assert not all_finite(values)


def test_a_discarded_window_leaves_the_optimizer_as_it_was() -> None:
    # Prepare: one window taken and kept, so that there is momentum to protect.
    model = net()
    layout = ParamLayout.of_module(model)
    local = make_local(model, SGD, 2)
    start = layout.flatten(dict(model.named_parameters()))
    batches = data(4)
    kept = local.run(start, NO_BUFFERS, batches[:2])
    assert kept.update is not None
    after_kept = copy.deepcopy(local._opt.state_dict())  # type: ignore[union-attr]

    # Execute: a second window whose push is refused, then discarded.
    local.run(start, NO_BUFFERS, batches[2:])
    local.discard()

    # Assert: the momentum buffers are those after the kept window, not after the refused one.
    now = local._opt.state_dict()  # type: ignore[union-attr]
    for key, state in after_kept["state"].items():
        assert torch.equal(now["state"][key]["momentum_buffer"], state["momentum_buffer"])


def test_the_window_carries_the_change_of_the_batchnorm_buffers() -> None:
    # Prepare: a model with BatchNorm, its buffers as a shard would hold them.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    reference = copy.deepcopy(model)
    layouts = (ParamLayout.of_module(model), BufferLayout.of_module(model))
    pulled = layouts[1].read(model)
    start = layouts[0].flatten(dict(model.named_parameters()))
    batches = data(2)
    local = LocalSGD(
        model,
        layouts,
        HardObjective(F.cross_entropy),
        SGD,
        2,
        Precision("fp32", torch.device("cpu")),
    )

    # Execute
    window = local.run(start, pulled, batches)

    # Assert: pulled + change is what the reference's forward passes left in its buffers,
    # and the batch counter counts both batches.
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
    assert window.buffer_delta is not None
    merged = layouts[1].unflatten(pulled + window.buffer_delta)
    for name, value in reference.state_dict().items():
        if name in merged:
            assert torch.equal(merged[name], value), name
    assert int(merged["1.num_batches_tracked"]) == 2


def test_fp16_loss_scale_halves_on_overflow_and_grows_after_good_steps() -> None:
    precision = Precision("fp32", torch.device("cpu"))
    precision.name = "fp16"  # the scaling policy itself needs no GPU
    precision.scale = 1024.0

    precision.update(finite=False)
    assert precision.scale == 512.0 and precision.overflows == 1
    for _ in range(GROWTH_INTERVAL):
        precision.update(finite=True)
    assert precision.scale == 1024.0


def test_fp16_on_a_cpu_worker_says_to_use_bf16() -> None:
    with pytest.raises(PrecisionUnavailable, match="bf16"):
        Precision("fp16", torch.device("cpu"))


def test_following_local_steps_on_bound_parameters_pushes_each_kind_and_back() -> None:
    # Prepare: a worker whose pulls land in the model itself (one step per push), Adam; the
    # shard's side holds the job's Adam (mode auto: the shards keep the job's optimizer)
    model = net()
    layout = ParamLayout.of_module(model)
    vector = layout.bind(model)
    assert vector is not None
    shard = FlatOptimizer(vector.clone(), OptimizerSpec(name="adam", lr=ADAM.lr))
    reference = copy.deepcopy(model)
    batches = data(4)
    local = make_local(model, ADAM, 0)

    # Execute: a step; then 3 local steps (auto's pull said so); then one step again
    def window(part: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        vector.copy_(shard.values)  # the pull
        got = local.run(vector, NO_BUFFERS, part)
        assert got.update is not None
        if got.local_steps:
            shard.add_change(got.update)
        else:
            shard.step(got.update)
        return got.local_steps

    kinds = [window(batches[:1])]
    local.follow(3)
    kinds.append(window(batches[1:4]))
    local.follow(1)
    kinds.append(window(batches[:1]))

    # Assert: the same as the shard's Adam on the first and last batch and a fresh Adam on the
    # worker for the three between (the local steps start from the pulled values, which the
    # model's own memory held)
    outer = torch.optim.Adam(reference.parameters(), lr=ADAM.lr)
    inner = torch.optim.Adam(reference.parameters(), lr=ADAM.lr)
    for opt, part in ((outer, batches[:1]), (inner, batches[1:4]), (outer, batches[:1])):
        for x, y in part:
            opt.zero_grad()
            F.cross_entropy(reference(x), y).backward()  # type: ignore[no-untyped-call]
            opt.step()
    assert kinds == [0, 3, 0]
    expected = layout.flatten(dict(reference.named_parameters()))
    torch.testing.assert_close(shard.values, expected, rtol=1e-5, atol=1e-6)

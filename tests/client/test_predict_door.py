"""Client.predict refuses at the call what a worker would fail on, before anything is sent:
the client points at an address where nothing listens, so a check that let the call through
would end in ClusterUnavailableError instead."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pscluster.client import predict
from pscluster.client.errors import InvalidJobError
from pscluster.client.predict import PredictOptions
from pscluster.client.sdk import Client
from tests.client.user_code import Classifier, TokenModel, TwoInputs


def state_of(model: type[torch.nn.Module]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return model().state_dict()


ROWS = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"data": ROWS[:, :3]}, "fails on rows"),
        ({"data": ROWS, "output": "softmax"}, "output 'softmax' is unknown"),
        ({"data": ROWS, "precision": "fp16"}, "not offered for inference"),
        ({"data": ROWS, "batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"data": ROWS, "state": state_of(TokenModel)}, "state does not load into Classifier"),
        ({"data": ROWS[:0]}, "X has no rows"),
        ({"data": ROWS, "outputs": "probs"}, "unexpected keyword argument 'outputs'"),
    ],
    ids=["shape", "output", "precision", "batch_size", "state", "empty", "option"],
)
def test_what_a_worker_would_fail_on_is_refused_before_sending(
    dead_address: str, kwargs: dict[str, Any], words: str
) -> None:
    arguments = {"model": Classifier, "state": state_of(Classifier), **kwargs}
    with Client(dead_address) as client, pytest.raises(InvalidJobError) as refused:
        client.predict(**arguments)
    assert words in str(refused.value)


def test_an_id_beyond_the_embedding_is_found_in_the_rows_tried(dead_address: str) -> None:
    # Prepare: one row in the middle holds an id the 10-row table does not have.
    ids = np.zeros((100, 5), dtype=np.int64)
    ids[57, 2] = 12

    # Execute / Assert: the rows tried include each integer input's extremes.
    with Client(dead_address) as client, pytest.raises(InvalidJobError, match="57"):
        client.predict(model=TokenModel, state=state_of(TokenModel), data=ids)


def test_the_payload_of_named_inputs_says_what_comes_back() -> None:
    # Prepare: forward(dense=..., ids=...), as training takes it.
    x = {"dense": ROWS, "ids": np.ones((40, 6), dtype=np.int64)}
    options = PredictOptions(model=TwoInputs, state=state_of(TwoInputs), output="probs")

    # Execute
    payload = predict.for_model(x, options)

    # Assert
    assert (payload.row_shape, payload.dtype) == ((2,), torch.float32)
    assert payload.spec.predict.rows == 40 and payload.spec.predict.output == "probs"
    assert payload.spec.model.class_name == "TwoInputs" and "class TwoInputs" in (
        payload.spec.model.source
    )

"""Every mistake in a submission is an InvalidJobError at submit, naming the fix, before a byte
is sent: the SDK builds the model as a worker would and tries it on a few rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from pscluster.client.errors import InvalidJobError
from pscluster.client.payload import InitFrom, build_payload
from pscluster.client.sdk import Client
from pscluster.data.dataset import Dataset
from tests.client import user_code
from tests.client.user_code import Classifier, TokenModel, TwoInputs, huber

rng = np.random.default_rng(0)
X = rng.normal(size=(30, 4)).astype(np.float32)
Y = rng.integers(0, 3, 30)


def payload(model: type[torch.nn.Module], train: Any, test: Any, **changes: Any) -> Any:
    args: dict[str, Any] = {
        "mode": "async",
        "staleness": 0,
        "optimizer": None,
        "epochs": 1,
        "batch_size": 4,
        "model_kwargs": None,
        "loss": "cross_entropy",
        "partitions": 0,
        "shards": 0,
        "seed": 0,
        "name": "t",
    }
    args.update(changes)
    return build_payload(model, train, test, **args)


def refused(match: str, make: Callable[[], Any]) -> None:
    with pytest.raises(InvalidJobError, match=match):
        make()


def test_labels_beyond_the_models_classes_name_the_rows() -> None:
    y = Y.copy()
    y[7] = 5
    refused(
        r"labels from 0 to 5 but the model outputs 3 classes .*rows \[7\]",
        lambda: payload(Classifier, (X, y), (X, Y)),
    )


def test_nan_in_the_data_names_the_rows() -> None:
    x = X.copy()
    x[3, 1] = np.nan
    x[11, 0] = np.inf
    refused(
        r"train X has NaN or infinite values in 2 rows \(\[3, 11\]\)",
        lambda: payload(Classifier, (x, Y), (X, Y)),
    )


def test_a_model_that_cannot_take_the_datas_shape_fails_at_submit() -> None:
    refused(
        r"dry run of Classifier on \d+ training rows failed .*mat1 and mat2",
        lambda: payload(Classifier, (X[:, :3], Y), (X[:, :3], Y)),
    )


def test_an_embedding_index_out_of_range_is_found_in_any_row() -> None:
    ids = rng.integers(0, 10, (40, 5))
    ids[33, 2] = 10  # beyond the vocabulary, in a row the first rows do not reach
    y = rng.integers(0, 2, 40)
    refused("dry run of TokenModel", lambda: payload(TokenModel, (ids, y), (ids[:5], y[:5])))


def test_bce_targets_outside_0_1_are_refused() -> None:
    y = rng.random((30, 3)).astype(np.float32)
    y[4, 0] = 2.0
    refused(
        r"outside \[0, 1\].*rows \[4\]",
        lambda: payload(Classifier, (X, y), (X, y), loss="bce_with_logits"),
    )


def test_regression_targets_must_match_the_output() -> None:
    y = rng.normal(size=(30, 2)).astype(np.float32)
    refused(
        "2 value\\(s\\) per row but the model outputs 3",
        lambda: payload(Classifier, (X, y), (X, y), loss="mse"),
    )


def test_a_lambda_loss_cannot_travel() -> None:
    refused(
        "nested or a lambda", lambda: payload(Classifier, (X, Y), (X, Y), loss=lambda o, y: o.sum())
    )


def test_an_unknown_loss_or_metric_is_named() -> None:
    refused("loss 'hinge' is unknown", lambda: payload(Classifier, (X, Y), (X, Y), loss="hinge"))
    refused("metric 'f1' is unknown", lambda: payload(Classifier, (X, Y), (X, Y), metric="f1"))


def test_train_and_test_inputs_must_have_the_same_structure() -> None:
    both = {"dense": X, "ids": rng.integers(0, 10, (30, 5))}
    refused(
        "train X is a dict .* but test X is one array",
        lambda: payload(TwoInputs, (both, Y % 2), (X, Y % 2)),
    )


def test_init_from_with_entries_the_model_lacks_is_refused() -> None:
    state = {"fc.weight": torch.zeros(3, 4), "other.weight": torch.zeros(2)}
    refused(
        r"init_from has entries \['other.weight'\]",
        lambda: payload(Classifier, (X, Y), (X, Y), init_from=InitFrom(state)),
    )


def test_good_submissions_of_new_kinds_pass_the_dry_run() -> None:
    # A dict of inputs (forward(**X)) with int64 ids, and a custom loss shipped with the code.
    both = {"dense": X, "ids": rng.integers(0, 10, (30, 5))}
    p = payload(TwoInputs, (both, Y % 2), (both, Y % 2))
    data = Dataset.from_blob(p.dataset)
    assert isinstance(data.train_x, dict) and data.train_x["ids"].dtype == torch.int64
    y = rng.normal(size=(30, 3)).astype(np.float32)
    p = payload(Classifier, (X, y), (X, y), loss=huber)
    assert p.spec.loss == "custom" and p.spec.loss_function.endswith(":huber")
    assert p.spec.metric == "" and p.spec.model.module == user_code.__name__


def test_a_refused_submission_sends_nothing(dead_address: str) -> None:
    # Nothing listens at the address: an InvalidJobError (not "cluster unavailable") shows the
    # mistake was found before any call was made.
    y = Y.copy()
    y[0] = 9
    with Client(dead_address) as client, pytest.raises(InvalidJobError, match="labels"):
        client.submit(model=Classifier, train=(X, y), test=(X, Y))

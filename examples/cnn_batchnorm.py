"""Train a BatchNorm CNN on digits (1x8x8 images) with sync SGD, then check the fetched model.

pscluster up --local --shards 2 --workers 2 --detach
python examples/cnn_batchnorm.py
pscluster down

The check at the end is the point of the example: BatchNorm keeps running statistics
(buffers) that the shards train beside the weights, so the model you fetch, evaluated here
in eval() mode, must give exactly the accuracy the job reported. Exit status 1 if it does not.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from cnn_model import DigitsCNN
from digits_data import load

from pscluster import Client


def images(x: np.ndarray) -> np.ndarray:
    """The example's flat 64-pixel rows as the 1x8x8 images a CNN expects."""
    return np.ascontiguousarray(x.reshape(-1, 1, 8, 8))


def local_accuracy(state: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray) -> float:
    """The fetched model's test accuracy, computed here: eval() uses the running statistics."""
    model = DigitsCNN()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1)
    return int((predicted == torch.from_numpy(y)).sum()) / len(y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="coordinator (default PSC_COORDINATOR)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait at most")
    args = parser.parse_args(argv)

    (x, y), (xt, yt) = load()
    x, xt = images(x), images(xt)
    with Client(args.address) as client:
        job = client.submit(
            model=DigitsCNN,
            train=(x, y),
            test=(xt, yt),
            mode="sync",
            optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
            epochs=args.epochs,
            batch_size=32,
            name="digits-cnn-batchnorm",
        )
        print(f"submitted job {job.id}")
        info = job.wait(progress=True, timeout=args.timeout)
        state = job.fetch_model()

    reported = info.test_accuracy
    if reported is None:
        print(f"job {job.id} reported no test accuracy", file=sys.stderr)
        return 1
    local = local_accuracy(state, xt, yt)
    tracked = int(state["features.1.num_batches_tracked"])
    print(
        f"final test accuracy {reported:.4f} (cluster), {local:.4f} (fetched model in eval(), "
        f"evaluated here); BatchNorm tracked {tracked} batches"
    )
    # Both are computed from the same parameters and buffers on the same test set, in eval():
    # any difference means the fetched model is not the one that was evaluated.
    if abs(local - reported) > 1e-9:
        print("the fetched model does not reproduce the cluster's accuracy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

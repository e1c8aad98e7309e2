"""Train the digits MLP on a running pscluster from Python, then check the model locally.

pscluster up --local --shards 2 --workers 3 --detach
python examples/train_digits.py --mode ssp
pscluster down
"""

from __future__ import annotations

import argparse
import sys

import torch
from digits_data import load
from digits_model import DigitsNet

from pscluster import Client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="coordinator (default PSC_COORDINATOR)")
    parser.add_argument("--mode", default="ssp", choices=["async", "sync", "ssp"])
    parser.add_argument("--staleness", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait at most")
    args = parser.parse_args(argv)

    (x, y), (xt, yt) = load()
    with Client(args.address) as client:
        job = client.submit(
            model=DigitsNet,
            train=(x, y),
            test=(xt, yt),
            mode=args.mode,
            staleness=args.staleness,
            optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
            epochs=args.epochs,
            batch_size=32,
            name=f"digits-{args.mode}",
        )
        print(f"submitted job {job.id}")
        job.wait(progress=True, timeout=args.timeout)
        metrics = job.metrics()
        state = job.fetch_model()

    model = DigitsNet()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        local = (model(torch.from_numpy(xt)).argmax(1) == torch.from_numpy(yt)).float().mean()
    print(
        f"final test accuracy {metrics.final_accuracy:.4f} (cluster), {local.item():.4f} "
        f"(fetched model, evaluated here); {metrics.pushes_applied} pushes applied, "
        f"{metrics.total_rejected} rejected"
    )
    # The fetched parameters are the ones the cluster evaluated last, so both must agree; one
    # sample of slack allows for a logit tie broken differently by a batched evaluation.
    one_sample = 1.0 / len(yt)
    if metrics.final_accuracy is None or abs(local.item() - metrics.final_accuracy) > one_sample:
        print("the fetched model does not reproduce the cluster's accuracy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tune a trained MLP with LoRA adapters on a shifted task, beside a full fine-tune.

pscluster up --local --shards 2 --workers 2 --detach
python examples/finetune_lora.py
pscluster down

Three jobs: a base MLP trained on upright digits; then, from that job's model
(``init_from=base``), the same epochs on digits turned a quarter (90 degrees) twice: once
with every weight trainable (full fine-tune) and once with the base frozen and rank-4
adapters beside each layer (LoRA, examples/lora_model.py). It prints each model's accuracy
on the rotated test set and the bytes one step pushes and pulls: frozen weights never travel,
so LoRA moves a small fraction of a full fine-tune's bytes. Exit status 1 if the LoRA
fine-tune did not beat the base model on the rotated digits or changed a frozen weight.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch
from digits_data import load
from lora_model import BaseMLP, LoRAMLP

from pscluster import Client, Job

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
# Sync SGD with a fixed seed for all three jobs: their steps are alike, only the model differs.
COMMON: dict[str, Any] = {"mode": "sync", "batch_size": 32, "seed": 1}


def quarter_turn(split: Split) -> Split:
    """The same digits rotated 90 degrees: a task the upright model mostly fails."""

    def turn(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(x.reshape(-1, 8, 8), axes=(1, 2)).reshape(-1, 64))

    (x, y), (xt, yt) = split
    return (turn(x), y), (turn(xt), yt)


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1)
    return int((predicted == torch.from_numpy(y)).sum()) / len(y)


def per_step(job: Job) -> tuple[float, float]:
    """Bytes pushed and pulled per step (one worker's batch), averaged over the job."""
    m = job.metrics()
    steps = max(1, len(m.steps))
    return m.bytes_pushed / steps, m.bytes_pulled / steps


def train_base(client: Client, upright: Split, args: argparse.Namespace) -> Job:
    job = client.submit(
        model=BaseMLP,
        model_kwargs={"hidden": args.hidden},
        train=upright[0],
        test=upright[1],
        epochs=args.base_epochs,
        optimizer={"name": "adam", "lr": 1e-3},
        name="digits-base",
        **COMMON,
    )
    print(f"base job {job.id}: {BaseMLP.__name__}(hidden={args.hidden}) on upright digits")
    job.wait(progress=True, timeout=args.timeout)
    return job


def fine_tune(
    client: Client, base: Job, rotated: Split, args: argparse.Namespace
) -> tuple[Job, Job]:
    """Both fine-tunes from the base job's model, submitted together and awaited."""
    settings: dict[str, Any] = {
        "train": rotated[0],
        "test": rotated[1],
        "epochs": args.epochs,
        "init_from": base,
        **COMMON,
    }
    full = client.submit(
        model=BaseMLP,
        model_kwargs={"hidden": args.hidden},
        optimizer={"name": "adam", "lr": 1e-3},
        name="digits-rotated-full",
        **settings,
    )
    # Adapters start at zero and are few: a larger step size than the full fine-tune's.
    lora = client.submit(
        model=LoRAMLP,
        model_kwargs={"hidden": args.hidden, "rank": args.rank},
        optimizer={"name": "adam", "lr": 5e-3},
        name="digits-rotated-lora",
        **settings,
    )
    print(f"fine-tune jobs: full {full.id}, LoRA rank {args.rank} {lora.id}")
    full.wait(progress=True, timeout=args.timeout)
    lora.wait(progress=True, timeout=args.timeout)
    return full, lora


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="coordinator (default PSC_COORDINATOR)")
    parser.add_argument("--hidden", type=int, default=256, help="width of the MLP")
    parser.add_argument("--rank", type=int, default=4, help="rank of the LoRA adapters")
    parser.add_argument("--base-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each fine-tune")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait per job")
    args = parser.parse_args(argv)

    upright = load()
    rotated = quarter_turn(upright)
    with Client(args.address) as client:
        base_job = train_base(client, upright, args)
        base_state = base_job.fetch_model()
        full, lora = fine_tune(client, base_job, rotated, args)
        return report(base_state, full, lora, rotated, args)


def report(
    base_state: dict[str, torch.Tensor],
    full: Job,
    lora: Job,
    rotated: Split,
    args: argparse.Namespace,
) -> int:
    """Print accuracies and bytes per step; 1 if LoRA did not learn or moved a frozen weight."""
    x, y = rotated[1]
    base, tuned = BaseMLP(hidden=args.hidden), BaseMLP(hidden=args.hidden)
    adapted = LoRAMLP(hidden=args.hidden, rank=args.rank)
    base.load_state_dict(base_state)
    tuned.load_state_dict(full.fetch_model())
    lora_state = lora.fetch_model()
    adapted.load_state_dict(lora_state)
    before, after = accuracy(base, x, y), accuracy(adapted, x, y)
    print(
        f"accuracy on the rotated test set: base {before:.4f}, "
        f"full fine-tune {accuracy(tuned, x, y):.4f}, LoRA fine-tune {after:.4f}"
    )
    for label, job in (("full", full), ("LoRA", lora)):
        pushed, pulled = per_step(job)
        print(
            f"{label:>4}: {job.info().num_params:>7,} trainable parameters, "
            f"{pushed:>9,.0f} bytes pushed and {pulled:>9,.0f} pulled per step"
        )
    ratio = per_step(full)[0] / max(per_step(lora)[0], 1.0)
    print(f"LoRA pushes {ratio:.1f}x fewer bytes per step than the full fine-tune")
    moved = [k for k in base_state if not torch.equal(lora_state[k], base_state[k])]
    if moved:
        print(f"the LoRA fine-tune changed frozen weights {moved}", file=sys.stderr)
        return 1
    if after <= before:
        print("the LoRA fine-tune is no better than the base model", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

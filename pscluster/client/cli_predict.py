"""``pscluster predict JOB data.npy -o preds.npy``: score rows with a completed job's model on
the cluster's workers, from the shell. The outputs stream into the ``.npy`` file as they
arrive; nothing is held whole in memory but the rows read from ``data``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pscluster.client.cli_common import Address, JobId, Token, fail, out, user_errors
from pscluster.client.errors import JobFailed

DEFAULT_TIMEOUT = 3600.0


def load_rows(path: Path) -> object:
    """X from a file: a ``.npy`` array (one input), or a ``.npz`` of named arrays (the model
    is called as ``forward(**X)``)."""
    import numpy as np

    if path.suffix == ".npz":
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    if path.suffix != ".npy":
        raise ValueError(f"{path}: expected a .npy file (one input) or .npz (named inputs)")
    return np.load(path)


def predict(
    job_id: JobId,
    data: Annotated[Path, typer.Argument(help="rows to score: .npy, or .npz of named inputs")],
    to: Annotated[Path, typer.Option("--out", "-o", help=".npy file to write the outputs to")],
    output: Annotated[
        str, typer.Option("--output", help="what to return: logits, probs or argmax")
    ] = "logits",
    bf16: Annotated[bool, typer.Option("--bf16", help="score in bfloat16 autocast")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="show a progress bar")] = False,
    batch_size: Annotated[int, typer.Option(help="rows per forward pass")] = 1024,
    partitions: Annotated[int, typer.Option(help="leases the rows are cut into (0: auto)")] = 0,
    timeout: Annotated[
        float, typer.Option(help="give up waiting for the scoring after this many seconds")
    ] = DEFAULT_TIMEOUT,
    address: Address = None,
    token: Token = None,
) -> None:
    """Score DATA with JOB's trained model on the workers; write the outputs (in input order)
    to a .npy file."""
    from pscluster.client.predict_job import POLL_SECONDS
    from pscluster.client.sdk import Client

    with user_errors():
        rows = load_rows(data)
        with Client(address, token=token) as client:
            scoring = client.submit_predict(
                job_id,
                data=rows,
                output=output,
                precision="bf16" if bf16 else "fp32",
                batch_size=batch_size,
                partitions=partitions,
            )
            if watch:
                out().print(f"scoring {data} with job {job_id}'s model: predict job {scoring.id}")
            try:
                scoring.wait(progress=watch, timeout=timeout, poll=POLL_SECONDS, console=out())
            except JobFailed as e:
                raise fail(str(e).replace("[", "\\[")) from None
            except TimeoutError:
                raise fail(
                    f"predict job {scoring.id} was still scoring after {timeout:g} s; it goes "
                    f"on (pscluster watch {scoring.id}), and its outputs can be fetched with "
                    f"Client().job({scoring.id!r}).save_predictions(...)"
                ) from None
            to.parent.mkdir(parents=True, exist_ok=True)
            shape = scoring.save_predictions(to)
    out().print(f"wrote {output} of shape {list(shape)} to {to}")

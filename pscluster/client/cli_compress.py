"""``pscluster compress JOB --quantize int8 --prune 0.5 -o model.pt``: a completed job's model
made smaller, from the shell.

Prints the table (original and each variant: parameters, size on disk, CPU latency per
batch, the job's test metric) and writes it as JSON beside the model (``--report`` to put it
elsewhere), which ``pscluster plot REPORT.json -o size.png`` draws as accuracy against size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from pscluster.client.cli_common import Address, JobId, Token, fail, out, user_errors
from pscluster.client.errors import JobFailed

if TYPE_CHECKING:  # torch loads with it; `pscluster --help` should not wait for that
    from pscluster.model_compression.report import CompressionReport

DEFAULT_TIMEOUT = 3600.0


def compress(
    job_id: JobId,
    to: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="file for the result: .safetensors, or .pt (int8, structured)"
        ),
    ],
    quantize: Annotated[
        str | None, typer.Option(help="int8 (dynamic, Linear/LSTM), fp16 or bf16")
    ] = None,
    prune: Annotated[
        float | None, typer.Option(help="share of weights (or neurons) to remove, in [0, 1)")
    ] = None,
    structured: Annotated[
        bool, typer.Option("--structured", help="prune whole neurons/channels (smaller layers)")
    ] = False,
    finetune_epochs: Annotated[
        int, typer.Option(help="fine-tune the pruned model on the cluster for this many epochs")
    ] = 0,
    report: Annotated[
        Path | None,
        typer.Option(help="where the table goes as JSON (default: beside -o, .report.json)"),
    ] = None,
    batch_rows: Annotated[int, typer.Option(help="test rows per timed batch")] = 256,
    threads: Annotated[int, typer.Option(help="CPU threads every variant is timed with")] = 1,
    repeats: Annotated[int, typer.Option(help="timed calls per variant (the median)")] = 50,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="the fine-tune's progress")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the fine-tune")] = (
        DEFAULT_TIMEOUT
    ),
    address: Address = None,
    token: Token = None,
) -> None:
    """Quantize and/or prune JOB's trained model; print and save the comparison table."""
    from pscluster.client.sdk import Client

    if structured and prune is None:
        raise fail("--structured prunes whole neurons: give the share with --prune")
    json_path = report or to.with_name(f"{to.stem}.report.json")
    with user_errors(), Client(address, token=token) as client:
        try:
            result = client.compress(
                job_id,
                quantize=quantize,
                prune=None if prune is None else {"amount": prune, "structured": structured},
                finetune_epochs=finetune_epochs,
                output=to,
                report=json_path,
                batch_rows=batch_rows,
                threads=threads,
                repeats=repeats,
                progress=watch,
                timeout=timeout,
            )
        except JobFailed as e:
            raise fail(f"the fine-tune failed: {e}".replace("[", "\\[")) from None
    out().print(table(result.report))
    for note in result.report.notes:
        out().print(f"note: {note}", markup=False)
    out().print(f"wrote {to} and {json_path}", markup=False)


def table(report: CompressionReport) -> Table:
    """The report as a rich table: one row per variant, ratios against the original.

    Only the variant's name may wrap: the numbers never do, so the table keeps every column
    in an 80-column terminal (the file format is in the JSON and in the file's name).
    """
    title = (
        f"{report.source}: {report.test_rows} test rows; ms per {report.batch_rows}-row "
        f"batch, {report.threads} thread(s), median of {report.repeats}"
    )
    grid = Table(
        title=title, box=box.SIMPLE_HEAD, padding=(0, 0, 0, 0), pad_edge=False, show_edge=False
    )
    grid.add_column("variant", overflow="fold", min_width=10)
    for header in ("params", "nonzero", "size", "smaller", "ms", "faster"):
        grid.add_column(header, justify="right", no_wrap=True)
    grid.add_column(report.metric_name, justify="right", no_wrap=True)
    grid.add_column("change", justify="right", no_wrap=True)
    for v in report.variants:
        grid.add_row(
            v.name,
            f"{v.parameters:,}",
            f"{v.nonzero:,}",
            f"{v.size_bytes / 1e6:.2f} MB",
            f"{report.size_ratio(v):.2f}x",
            f"{v.latency_ms:.2f}",
            f"{report.speedup(v):.2f}x",
            f"{v.metric:.4f}",
            f"{report.change(v):+.2f}",
        )
    return grid

"""The ``pscluster`` command: run a local cluster, submit and follow jobs, start single roles.

    pscluster up --local --shards 2 --workers 3
    pscluster submit examples/digits.yaml --watch
    pscluster jobs ; pscluster status ; pscluster down
    pscluster plot JOB -o curves.png --csv curves/   # loss, the job's metric, staleness
    pscluster predict JOB data.npy -o preds.npy --output probs --watch   # batch inference
    pscluster compress JOB --quantize int8 -o model.int8.pt   # a smaller model, and its table
    pscluster certs ./certs --host pscluster   # TLS: a CA, server and client certificates

The role commands (``coordinator``, ``shard``, ``worker``) hand their arguments unchanged to
the role's own entry point, so ``pscluster shard --port 50061`` and
``python -m pscluster.server --port 50061`` are the same thing (containers use either).
"""

from __future__ import annotations

import importlib

import typer

from pscluster.client import (
    cli_certs,
    cli_cluster,
    cli_compress,
    cli_jobs,
    cli_metrics,
    cli_plot,
    cli_predict,
)

app = typer.Typer(
    name="pscluster",
    help="A parameter-server training cluster for PyTorch over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    # Anticipated errors print one line (cli_common.user_errors); anything else is a bug, and a
    # plain traceback is the most useful thing to paste into an issue.
    pretty_exceptions_enable=False,
)

app.command("up")(cli_cluster.up)
app.command("down")(cli_cluster.down)
app.command("status")(cli_cluster.status)
app.command("scale-shards")(cli_cluster.scale_shards)
app.command("submit")(cli_jobs.submit)
app.command("watch")(cli_jobs.watch)
app.command("jobs")(cli_jobs.jobs)
app.command("metrics")(cli_metrics.metrics)
app.command("plot")(cli_plot.plot)
app.command("fetch")(cli_jobs.fetch)
app.command("predict")(cli_predict.predict)
app.command("compress")(cli_compress.compress)
app.command("cancel")(cli_jobs.cancel)
app.command("certs")(cli_certs.certs)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _run_role(module: str, argv: list[str]) -> None:
    # Imported on use: a worker image need not carry the coordinator's dependencies and
    # `pscluster jobs` should not import a server.
    entry = importlib.import_module(module)
    entry.main(argv)


@app.command("coordinator", context_settings=_PASS_THROUGH, add_help_option=False)
def coordinator(ctx: typer.Context) -> None:
    """Run a coordinator (arguments as `python -m pscluster.coordinator --help`)."""
    _run_role("pscluster.coordinator.main", list(ctx.args))


@app.command("shard", context_settings=_PASS_THROUGH, add_help_option=False)
def shard(ctx: typer.Context) -> None:
    """Run a parameter-server shard (arguments as `python -m pscluster.server --help`)."""
    _run_role("pscluster.server.main", list(ctx.args))


@app.command("worker", context_settings=_PASS_THROUGH, add_help_option=False)
def worker(ctx: typer.Context) -> None:
    """Run a training worker (arguments as `python -m pscluster.worker --help`)."""
    _run_role("pscluster.worker.main", list(ctx.args))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""What every CLI command shares: the consoles and the one way errors reach the user.

A CLI user gets one line saying what went wrong and what to do, never a traceback, for every
error the SDK or the launcher anticipates; an unexpected exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from pscluster.client.errors import PSClusterError
from pscluster.client.processes import StartError

ADDRESS_HELP = "coordinator host:port (default: PSC_COORDINATOR, else localhost:50051)"
Address = Annotated[str | None, typer.Option("--address", "-a", help=ADDRESS_HELP)]
TOKEN_HELP = (
    "bearer token for a cluster that requires one (default: PSC_TOKEN / PSC_TOKEN_FILE, else "
    "PSC_ADMIN_TOKEN); prefer the variables: a command line is visible to other users"
)
Token = Annotated[str | None, typer.Option("--token", help=TOKEN_HELP, show_default=False)]
JobId = Annotated[str, typer.Argument(help="job id, as printed by `pscluster submit`")]


def out() -> Console:
    # Made per call: rich binds sys.stdout lazily, so typer's CliRunner captures the output.
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as the command's error; raise the returned Exit."""
    err().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn anticipated errors into one readable line and exit code 1."""
    try:
        yield
    except (PSClusterError, StartError, TimeoutError, ValueError, OSError) as e:
        raise fail(_escape(str(e))) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def _escape(text: str) -> str:
    # Messages quote user input and file paths; square brackets there are not rich markup.
    return text.replace("[", "\\[")


def format_bytes(n: int) -> str:
    """A byte count as a person reads it: 512 B, 3.2 KB, 41.0 MB."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"

"""Logging for every pscluster process: plain text (the default) or JSON lines.

``PSC_LOG_FORMAT=json`` makes each record one JSON object per line with ``ts``, ``level``,
``logger``, ``message``, ``role`` and, when known, ``job_id`` and ``worker_id``, which is what
log shippers (Loki, Elasticsearch, Cloud Logging) index without a parsing rule. The text format
is the one the processes always wrote, so people and tests reading the old lines see no change.

The ids reach a record without every log call naming them: code that starts work on a job
binds them with :func:`log_context` (a ``contextvars`` context, so two threads working on two
jobs never mix them up), and a call that knows better passes ``extra={"job_id": ...}``, which
wins. A thread starts with an empty context (Python does not copy it into new threads), so a
thread that should log under the ids of its creator runs in ``contextvars.copy_context()``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar, Token
from typing import Literal, Protocol

# The ids the current context works for ("" when none): set by log_context, read by the filter.
_JOB_ID: ContextVar[str] = ContextVar("pscluster_log_job_id", default="")
_WORKER_ID: ContextVar[str] = ContextVar("pscluster_log_worker_id", default="")

Role = Literal["coordinator", "shard", "worker"]
ROLES: tuple[Role, ...] = ("coordinator", "shard", "worker")

# The text formats the processes used before JSON existed (tests and people grep them).
_TEXT_FORMATS: dict[str, str] = {
    "coordinator": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    "shard": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    "worker": "%(asctime)s %(levelname)s worker %(name)s: %(message)s",
}


class LogSettings(Protocol):
    """What :func:`configure_logging` reads (``pscluster.config.Settings`` has both)."""

    @property
    def log_level(self) -> str: ...

    @property
    def log_format(self) -> str: ...


class log_context:
    """Records logged inside carry these ids (None leaves an id as it was).

    A class rather than a generator-based context manager: every RPC handler enters one, and
    at a thousand calls a second the generator machinery showed in the coordinator's CPU.
    """

    __slots__ = ("_ids", "_tokens")

    def __init__(self, *, job_id: str | None = None, worker_id: str | None = None) -> None:
        self._ids = (job_id, worker_id)
        self._tokens: list[tuple[ContextVar[str], Token[str]]] = []

    def __enter__(self) -> None:
        job_id, worker_id = self._ids
        if job_id is not None:
            self._tokens.append((_JOB_ID, _JOB_ID.set(job_id)))
        if worker_id is not None:
            self._tokens.append((_WORKER_ID, _WORKER_ID.set(worker_id)))

    def __exit__(self, *exc: object) -> None:
        for var, token in reversed(self._tokens):
            var.reset(token)
        self._tokens.clear()


def bind_worker_id(worker_id: str) -> None:
    """From now on in this context, records carry ``worker_id`` (a worker's id is its own for
    the life of its registration, so it is bound once, not per block)."""
    _WORKER_ID.set(worker_id)


class ContextFilter(logging.Filter):
    """Puts ``role``, ``job_id`` and ``worker_id`` on every record (from ``extra`` if the call
    gave them, else from the context); filters nothing out."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        if not getattr(record, "job_id", ""):
            record.job_id = _JOB_ID.get()
        if not getattr(record, "worker_id", ""):
            record.worker_id = _WORKER_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks go into ``exc``, escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "role": getattr(record, "role", ""),
        }
        for key in ("job_id", "worker_id"):
            value = getattr(record, key, "")
            if value:
                line[key] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _iso_utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def make_handler(role: str, log_format: str) -> logging.Handler:
    """A stderr handler in ``log_format`` ("text" or "json") that tags records with ``role``."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is unknown; expected one of {', '.join(ROLES)}")
    if log_format not in ("text", "json"):
        raise ValueError(f"log format {log_format!r} is unknown; expected 'text' or 'json'")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(role))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMATS[role]))
    return handler


def configure_logging(settings: LogSettings, role: str) -> None:
    """Set up the root logger of a pscluster process (its ``main`` calls this once).

    Like ``logging.basicConfig``, it leaves a root logger that already has handlers alone, so a
    main called inside a test keeps the test's log capture.
    """
    logging.basicConfig(
        level=settings.log_level.upper(), handlers=[make_handler(role, settings.log_format)]
    )

"""The SQLite store's background checkpointer: the write-ahead log moved into the database
by a thread of its own, so that no commit ever pays for it.

A checkpoint inside a commit (SQLite's default, every 1000 pages) held every waiting
CompleteTask ~100 ms; the store turns that off and runs this instead.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

CHECKPOINT_SECONDS = 1.0


class WalCheckpointer:
    """Checkpoints ``path``'s log every ``CHECKPOINT_SECONDS`` until stopped."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        """On a connection of its own, PASSIVE: it never blocks the writer (a checkpoint that
        cannot finish now is simply tried again next time)."""
        db = sqlite3.connect(str(self._path), isolation_level=None)
        try:
            while not self._stop.wait(CHECKPOINT_SECONDS):
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

"""SQLite settings shared by the gateway's stores (commands, registry): WAL, ``synchronous=NORMAL``, and WAL
checkpoints moved off the event loop.

Why: in WAL mode with ``synchronous=NORMAL`` a commit is an append to the ``-wal`` file with no fsync (tens of
microseconds), which is what lets the command path store every status change. The fsyncs happen at checkpoints,
which SQLite runs by default inside whichever commit crosses 1000 WAL pages: a 5-10 ms stall landing on a random
command. ``connect(..., checkpoint_in_background=True)`` turns that off for the connection and a
``Checkpointer`` thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection every second instead
(passive: never blocks the writer; readers and the writer carry on while pages are copied).

Durability (docs/GATEWAY.md): a committed transaction survives a crash of the gateway process; a power
loss or OS crash may lose the commits since the last checkpoint's fsync (about a second) but never corrupts the
file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_S = 1.0


def connect(path: str | Path, *, check_same_thread: bool = True,
            checkpoint_in_background: bool = False, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with ``synchronous=NORMAL`` (every store of the gateway uses one)."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=check_same_thread)
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    _switch_to_wal(db, busy_timeout_ms / 1000)
    db.execute("PRAGMA synchronous=NORMAL")
    if checkpoint_in_background:
        db.execute("PRAGMA wal_autocheckpoint=0")
    return db


def _switch_to_wal(db: sqlite3.Connection, timeout_s: float) -> None:
    """``PRAGMA journal_mode=WAL``, waiting like any write would. SQLite skips the busy handler for this pragma
    while another connection holds a write lock on a file still in rollback mode (a second process creating the
    same store at the same moment) and raises "database is locked" at once; retry within the busy timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def where(*conditions: tuple[str, object]) -> tuple[str, list[object]]:
    """``(" WHERE a = ? AND b < ?", [va, vb])`` from ``("a = ?", va), ("b < ?", vb)``; a pair whose value is
    None is no filter. The fragments are the caller's constants; only the values are bound."""
    used = [(sql, v) for sql, v in conditions if v is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(sql for sql, _ in used), [v for _, v in used]


class Checkpointer:
    """A daemon thread checkpointing one database file every ``interval`` seconds until ``close()``."""

    def __init__(self, path: str | Path, interval: float = CHECKPOINT_S):
        self.path = str(path)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"checkpoint-{Path(path).name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 1000")
            while not self._stop.wait(self.interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as e:
                    log.info("checkpoint of %s failed (retried): %s", self.path, e)
        finally:
            db.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

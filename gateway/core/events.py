"""Event intake: the one place where a verified event is recognised as new and handed on.

Theory of operation
-------------------
QoS 1 and CoAP are at-least-once: the same signed event reaches the gateway again when a PUBACK or a CoAP ACK
was lost, when a sleeping node retransmits from a new source port after waking (aiocoap's message-layer
de-duplication keys on the peer address, so it cannot tell), or when a node re-sends its outbox after a reboot.
``sev: serious`` means "send an officer", so a copy must never become a second alert.

``EventIntake.offer(site, device, msg, now_ms)`` takes an event whose MAC the caller has verified and answers:

- ``"new"``: first time seen; every listener (``add_listener``) is called with an ``Event``, in registration
  order. The gateway's own first listener journals the ``alert`` and links its evidence; dispatch and linkage
  attach here as further listeners, so they see each event exactly once.
- ``"duplicate"``: the pair (device, event id) was seen within ``WINDOW_MS``: counted, not handed on.
- ``"stale"``: the event carries a real time (``ts`` after ``messages.MS_MIN``, which a node without a clock
  sends) older than the window: it can no longer be told from a replay, so it is not handed on (the caller
  journals it under ``security``).

The key is (device, event id): ids are unique per device by the contract (docs/PROTOCOL.md §2.4); our firmware
writes ``<device>-<bdseq>-<seq>``, so the boot counter and the sequence number are part of it, and an outbox entry
from an earlier boot delivered late is still a different event. The seen set lives in SQLite (``seen`` table, WAL,
``synchronous=NORMAL``) and survives a gateway restart; a crash of the machine may forget the last second of it.
Rows older than the window are pruned (``prune``), and at most ``MAX_ROWS`` are kept (oldest first out).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lookout.gateway.core import walstore
from lookout.protocols import messages

log = logging.getLogger(__name__)

WINDOW_MS = 30 * 86_400_000  # 30 days: a node's outbox outlives any outage we plan for (FIRMWARE.md), and
# body-worn evidence practice counts in days to weeks; events are rare, so the table stays small
MAX_ROWS = 1_000_000  # ~100 bytes each: a bound on disk use whatever the event rate
PRUNE_EVERY_MS = 60_000
MAX_UNSAVED = 100_000  # event ids kept in memory while the disk refuses writes (~100 bytes each)


class Event:
    """A verified, first-seen event: ``site``, ``device``, ``msg`` (the decoded message, ``mac`` included),
    ``now_ms`` (when the gateway received it)."""

    __slots__ = ("device", "msg", "now_ms", "site")

    def __init__(self, site: str, device: str, msg: dict[str, Any], now_ms: int) -> None:
        self.site = site
        self.device = device
        self.msg = msg
        self.now_ms = now_ms


Listener = Callable[[Event], None]


class EventIntake:
    def __init__(self, path: str | Path | None = None, window_ms: int = WINDOW_MS, max_rows: int = MAX_ROWS):
        self.window_ms = window_ms
        self.max_rows = max_rows
        self.counts = {"new": 0, "duplicate": 0, "stale": 0}
        self._listeners: list[Listener] = []
        self._pruned_ms = 0
        self._mem: dict[tuple[str, str], int] | None = None
        self._unsaved: dict[tuple[str, str], int] = {}  # seen while the disk refused writes (bounded)
        self.error: sqlite3.Error | None = None  # why the last write failed (None: it worked)
        self._db: sqlite3.Connection | None = None
        if path is None:
            self._mem = {}
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = walstore.connect(path)
            self._db.execute("CREATE TABLE IF NOT EXISTS seen (device TEXT NOT NULL, id TEXT NOT NULL,"
                             " first_ms INTEGER NOT NULL, PRIMARY KEY (device, id)) WITHOUT ROWID")
            self._db.execute("CREATE INDEX IF NOT EXISTS seen_first ON seen (first_ms)")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def offer(self, site: str, device: str, msg: dict[str, Any], now_ms: int) -> str:
        """``"new"`` (handed on to the listeners), ``"duplicate"`` or ``"stale"``; see the module docstring."""
        ts = msg.get("ts")
        if isinstance(ts, int) and ts > messages.MS_MIN and ts < now_ms - self.window_ms:
            self.counts["stale"] += 1
            return "stale"
        if not self._first(device, str(msg["id"]), now_ms):
            self.counts["duplicate"] += 1
            log.debug("duplicate event %s from %s absorbed", msg["id"], device)
            return "duplicate"
        self.counts["new"] += 1
        e = Event(site, device, msg, now_ms)
        for fn in self._listeners:
            try:
                fn(e)
            except Exception:
                log.exception("event listener failed on %s from %s", msg["id"], device)
        return "new"

    def _first(self, device: str, eid: str, now_ms: int) -> bool:
        if self._mem is not None:
            if (device, eid) in self._mem:
                return False
            self._mem[(device, eid)] = now_ms
            return True
        assert self._db is not None
        if (device, eid) in self._unsaved:
            return False
        try:
            self._save_unsaved()
            cur = self._db.execute("INSERT OR IGNORE INTO seen (device, id, first_ms) VALUES (?, ?, ?)",
                                   (device, eid, now_ms))
        except sqlite3.Error as e:
            # disk full or read-only: the event is still handed on (its alert waits in the journal's memory);
            # the id is remembered here and written when the disk takes writes again
            self.error = e
            if len(self._unsaved) < MAX_UNSAVED:
                self._unsaved[(device, eid)] = now_ms
            else:
                log.error("event ids waiting for the disk: %d, more are not remembered", len(self._unsaved))
            return self._db.execute("SELECT 1 FROM seen WHERE device = ? AND id = ?",
                                    (device, eid)).fetchone() is None
        self.error = None
        if cur.rowcount == 1:
            return True
        row = self._db.execute("SELECT first_ms FROM seen WHERE device = ? AND id = ?", (device, eid)).fetchone()
        if row is not None and row[0] < now_ms - self.window_ms:  # seen, but before the window: a new sighting
            self._db.execute("UPDATE seen SET first_ms = ? WHERE device = ? AND id = ?", (now_ms, device, eid))
            return True
        return False

    def retry(self) -> sqlite3.Error | None:
        """Write the ids that wait for the disk; the error if it still cannot."""
        try:
            self._save_unsaved()
            self.error = None
        except sqlite3.Error as e:
            self.error = e
        return self.error

    def _save_unsaved(self) -> None:
        if self._unsaved and self._db is not None:
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR IGNORE INTO seen (device, id, first_ms) VALUES (?, ?, ?)",
                                     [(d, i, t) for (d, i), t in self._unsaved.items()])
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._unsaved.clear()

    def prune(self, now_ms: int) -> int:
        """Forget what is older than the window (and the oldest beyond ``max_rows``); at most once a minute."""
        if now_ms - self._pruned_ms < PRUNE_EVERY_MS:
            return 0
        self._pruned_ms = now_ms
        cut = now_ms - self.window_ms
        if self._mem is not None:
            old = [k for k, v in self._mem.items() if v < cut]
            for k in old:
                del self._mem[k]
            return len(old)
        assert self._db is not None
        try:
            self._save_unsaved()
        except sqlite3.Error as e:
            self.error = e
            return 0
        n = self._db.execute("DELETE FROM seen WHERE first_ms < ?", (cut,)).rowcount
        over = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0] - self.max_rows
        if over > 0:
            n += self._db.execute("DELETE FROM seen WHERE (device, id) IN (SELECT device, id FROM seen ORDER BY"
                                  " first_ms LIMIT ?)", (over,)).rowcount
        return n

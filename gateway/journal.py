"""Duty journal (监管工作日志): append-only, hash-chained record of everything the center saw and did.

Theory of operation: each entry is a row ``(seq, ts, operator, kind, device, summary, detail, prev_hash, hash)``
where ``detail`` is canonical JSON (``dumps``: sorted keys, compact) and
``hash = sha256(prev_hash + dumps(entry))`` over the entry's fields
including ``seq`` (so a deleted row breaks the chain as surely as an edited one). The first entry chains to 64
zeros. SQLite triggers refuse UPDATE and DELETE, so the gateway itself cannot rewrite history; someone editing the
file by hand can drop the triggers, and ``verify()`` then names the first row whose hash no longer matches.
Truncating the newest rows leaves a valid shorter chain: ``head()`` (the last hash) belongs in each shift report,
which is what export prints.

Writing: ``append()`` fixes the entry's ``seq``, ``prev_hash`` and ``hash`` at once on the caller's thread (so
the chain order is the order of the calls) and hands the row to one writer thread, which inserts whatever has
accumulated in a single transaction. The gateway's hot path (a command and its results) therefore never waits
for SQLite. Reads (``entries``, ``verify``, ``export``) and ``close`` first wait until every appended row is
committed (``flush``). The file is in WAL mode with ``synchronous=NORMAL``: entries survive a crash of the
gateway process once committed (the writer commits within milliseconds of the append; rows still queued when
the process dies are lost, and the chain of what was committed still verifies); a power loss or OS crash may lose
the last commits but never corrupts the file or breaks the chain.

Kinds: ``alert`` (events from nodes), ``command``, ``result``, ``state`` (registry transitions), ``operator``
(operator requests, accepted or refused), ``security`` (forged/unsigned messages), ``system`` (start/stop),
``custody`` (evidence files stored, duplicated or linked to events: gateway/clipstore.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENESIS = "0" * 64
LINGER_S = 0.05  # the writer gathers appends this long before committing them in one transaction
KINDS = ("alert", "command", "result", "state", "operator", "security", "system", "custody")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq       INTEGER PRIMARY KEY,
    ts        INTEGER NOT NULL,
    operator  TEXT,
    kind      TEXT NOT NULL,
    device    TEXT,
    summary   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_ts ON journal (ts);
CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_delete BEFORE DELETE ON journal
BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
"""

COLUMNS = ("seq", "ts", "operator", "kind", "device", "summary", "detail", "prev_hash", "hash")


@dataclass(frozen=True)
class Entry:
    seq: int
    ts: int
    operator: str | None
    kind: str
    device: str | None
    summary: str
    detail: str  # canonical JSON text
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in COLUMNS}
        d["detail"] = json.loads(self.detail)
        return d


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    bad_seq: int | None = None
    reason: str | None = None
    head: str = GENESIS


def _jsonable(v: Any) -> Any:
    """Detail values made canonical-safe: floats become strings (canonical JSON refuses floats)."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)


def dumps(obj: Any) -> str:
    """The journal's canonical JSON: sorted keys, no whitespace, UTF-8 kept (not \\u-escaped).

    The journal is only ever written and verified by CPython, whose ``json`` output for these options is
    stable; protocols/canonical.py (needed for node MACs, and 20x slower) is not required here.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _no_float(text: str) -> Any:
    raise ValueError("float")


def detail_text(detail: dict[str, Any]) -> str:
    """``dumps(_jsonable(detail))``, done by the C encoder when there is no float in it (the usual case;
    ``_jsonable`` walks the whole structure in Python, ~10x slower)."""
    try:
        text = json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=str)
        json.loads(text, parse_float=_no_float, parse_constant=_no_float)
        return text
    except (TypeError, ValueError):
        return dumps(_jsonable(detail))


def entry_hash(prev_hash: str, seq: int, ts: int, operator: str | None, kind: str, device: str | None,
               summary: str, detail: str) -> str:
    body = dumps({"seq": seq, "ts": ts, "operator": operator, "kind": kind, "device": device,
                  "summary": summary, "detail": detail})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq, self._head = (row[0], row[1]) if row else (0, GENESIS)
        self._dblock = threading.Lock()  # the connection is used by the writer thread and by readers
        self._cv = threading.Condition()
        self._pending: list[tuple[Any, ...]] = []
        self._written = self._seq  # highest seq committed
        self._closing = False
        self._urgent = False  # a reader is waiting: commit without lingering
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None

    def close(self) -> None:
        try:
            self.flush()
        except RuntimeError as e:
            log.error("closing the journal with unwritten entries: %s", e)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._writer is not None:
            self._writer.join(10)
        with self._dblock:
            self._db.close()

    def head(self) -> tuple[int, str]:
        return self._seq, self._head

    def append(self, kind: str, summary: str, *, operator: str | None = None, device: str | None = None,
               detail: dict[str, Any] | None = None, ts: int | None = None) -> Entry:
        if kind not in KINDS:
            raise ValueError(f"journal kind {kind!r} not one of {', '.join(KINDS)}")
        ts = time.time_ns() // 1_000_000 if ts is None else ts
        det = detail_text(detail or {})
        with self._cv:
            seq = self._seq + 1
            h = entry_hash(self._head, seq, ts, operator, kind, device, summary, det)
            e = Entry(seq, ts, operator, kind, device, summary, det, self._head, h)
            self._seq, self._head = seq, h
            self._pending.append((seq, ts, operator, kind, device, summary, det, e.prev_hash, h))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
                self._writer.start()
            if len(self._pending) == 1:
                self._cv.notify_all()
        return e

    def _write_loop(self) -> None:
        """The single writer: everything appended since the last commit goes in one transaction."""
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if self._pending and not self._closing and not self._urgent:  # group commit
                    self._cv.wait_for(lambda: self._closing or self._urgent, LINGER_S)
                if not self._pending:
                    return
                rows, self._pending = self._pending, []
                self._urgent = False
            try:
                with self._dblock:
                    self._db.execute("BEGIN")
                    try:
                        self._db.executemany("INSERT INTO journal (seq, ts, operator, kind, device, summary, detail,"
                                             " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
            except sqlite3.Error as e:  # disk full, file locked...: keep the rows, retry, tell readers
                log.error("journal write failed (%d entries kept, retrying): %s", len(rows), e)
                with self._cv:
                    self._pending[:0] = rows
                    self._error = e
                    if self._closing:
                        self._cv.notify_all()
                        return
                    self._cv.wait(1.0)
                continue
            with self._cv:
                self._written = rows[-1][0]
                self._error = None
                self._cv.notify_all()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every entry appended so far is committed (raises if the writer keeps failing)."""
        with self._cv:
            target = self._seq
            if self._writer is None or self._written >= target:
                return
            self._urgent = True
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: self._written >= target or (self._closing and self._error), timeout):
                raise RuntimeError(f"journal: entries up to seq {target} not written within {timeout:g} s"
                                   + (f" ({self._error})" if self._error else ""))
            if self._written < target:
                raise RuntimeError(f"journal: entries after seq {self._written} could not be written: {self._error}")

    def _query(self, q: str, args: Any = ()) -> list[Any]:
        self.flush()
        with self._dblock:
            return self._db.execute(q, args).fetchall()

    def entries(self, since_ms: int | None = None, until_ms: int | None = None, kind: str | None = None,
                device: str | None = None, limit: int | None = None, last: bool = False) -> list[Entry]:
        q, args = "SELECT " + ", ".join(COLUMNS) + " FROM journal WHERE 1=1", []
        if since_ms is not None:
            q += " AND ts >= ?"
            args.append(since_ms)
        if until_ms is not None:
            q += " AND ts < ?"
            args.append(until_ms)
        if kind is not None:
            q += " AND kind = ?"
            args.append(kind)
        if device is not None:
            q += " AND device = ?"
            args.append(device)
        q += " ORDER BY seq " + ("DESC" if last else "ASC")
        if limit is not None:
            q += " LIMIT ?"
            args.append(limit)
        rows = [Entry(*r) for r in self._query(q, args)]
        return rows[::-1] if last else rows

    def verify(self) -> VerifyResult:
        """Walk the whole chain; report the first row whose link or hash is wrong."""
        prev, n, expect_seq = GENESIS, 0, 1
        for r in self._query("SELECT " + ", ".join(COLUMNS) + " FROM journal ORDER BY seq"):
            e = Entry(*r)
            n += 1
            if e.seq != expect_seq:
                return VerifyResult(False, n, e.seq, f"sequence jumps from {expect_seq - 1} to {e.seq} "
                                                       "(rows deleted)", prev)
            if e.prev_hash != prev:
                return VerifyResult(False, n, e.seq, "prev_hash does not match the previous row's hash", prev)
            want = entry_hash(e.prev_hash, e.seq, e.ts, e.operator, e.kind, e.device, e.summary, e.detail)
            if want != e.hash:
                return VerifyResult(False, n, e.seq, "hash does not match the row's content (row edited)", prev)
            prev = e.hash
            expect_seq += 1
        return VerifyResult(True, n, None, None, prev)

    def export(self, fmt: str, since_ms: int | None = None, until_ms: int | None = None) -> str:
        """CSV or JSON of the entries in ``[since_ms, until_ms)`` plus the chain head, for a shift report."""
        rows = self.entries(since_ms, until_ms)
        if fmt == "json":
            seq, head = self.head()
            return json.dumps({"from": since_ms, "to": until_ms, "head_seq": seq, "head_hash": head,
                               "entries": [e.to_dict() for e in rows]}, ensure_ascii=False, indent=1)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(COLUMNS)
            for e in rows:
                w.writerow([getattr(e, k) if getattr(e, k) is not None else "" for k in COLUMNS])
            return buf.getvalue()
        raise ValueError(f"export format {fmt!r}: expected csv or json")

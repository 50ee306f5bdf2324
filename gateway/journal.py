"""Duty journal (监管工作日志): append-only, hash-chained record of everything the center saw and did.

Theory of operation: each entry is a row ``(seq, ts, operator, kind, device, summary, detail, prev_hash, hash)``
where ``detail`` is canonical JSON (``dumps``: sorted keys, compact) and
``hash = sha256(prev_hash + dumps(entry))`` over the entry's fields
including ``seq`` (so a deleted row breaks the chain as surely as an edited one). The first entry chains to 64
zeros. SQLite triggers refuse UPDATE and DELETE, so the gateway itself cannot rewrite history; someone editing the
file by hand can drop the triggers, and ``verify()`` then names the first row whose hash no longer matches.
Truncating the newest rows leaves a valid shorter chain: ``head()`` (the last hash) belongs in each shift report,
which is what export prints.

Kinds: ``alert`` (events from nodes), ``command``, ``result``, ``state`` (registry transitions), ``operator``
(operator requests, accepted or refused), ``security`` (forged/unsigned messages), ``system`` (start/stop).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
KINDS = ("alert", "command", "result", "state", "operator", "security", "system")

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

    def close(self) -> None:
        self._db.close()

    def head(self) -> tuple[int, str]:
        return self._seq, self._head

    def append(self, kind: str, summary: str, *, operator: str | None = None, device: str | None = None,
               detail: dict[str, Any] | None = None, ts: int | None = None) -> Entry:
        if kind not in KINDS:
            raise ValueError(f"journal kind {kind!r} not one of {', '.join(KINDS)}")
        ts = time.time_ns() // 1_000_000 if ts is None else ts
        det = dumps(_jsonable(detail or {}))
        seq = self._seq + 1
        h = entry_hash(self._head, seq, ts, operator, kind, device, summary, det)
        self._db.execute("INSERT INTO journal (seq, ts, operator, kind, device, summary, detail, prev_hash, hash)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (seq, ts, operator, kind, device, summary, det, self._head, h))
        e = Entry(seq, ts, operator, kind, device, summary, det, self._head, h)
        self._seq, self._head = seq, h
        return e

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
        rows = [Entry(*r) for r in self._db.execute(q, args)]
        return rows[::-1] if last else rows

    def verify(self) -> VerifyResult:
        """Walk the whole chain; report the first row whose link or hash is wrong."""
        prev, n, expect_seq = GENESIS, 0, 1
        for r in self._db.execute("SELECT " + ", ".join(COLUMNS) + " FROM journal ORDER BY seq"):
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

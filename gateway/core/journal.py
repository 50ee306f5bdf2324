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

More than one process: the gateway is not the only writer. Admin tools on the gateway host (``lookout provision``,
``pki``, ``broker-config``, ``rotate-key``) journal what they did into the same file while the gateway runs. Two
processes each assigning ``seq``/``prev_hash`` from their own memory would fork the chain, and re-chaining the
gateway's rows at write time would change ``seq`` numbers already handed out (alerts are linked to evidence by
``seq``). So exactly one process *owns* the chain: the first ``Journal`` to take an exclusive ``flock`` on
``<file>.lock`` (every ``Journal`` instance in that process shares it). Any other process's ``Journal`` is a
*guest*: its ``append`` inserts the row (with its own ``ts``) into the unchained table ``journal_inbox`` in one
synchronous transaction and returns an ``Entry`` with ``seq == 0`` and empty hashes. The owner's writer takes
the inbox rows inside its batch transaction (``BEGIN IMMEDIATE``), chains them after everything appended so far
and deletes them from the inbox in the same commit: a row is chained exactly once, never lost. An idle owner
looks at the inbox every ``INBOX_POLL_S``; an owner also chains the inbox when it opens and when it closes, so a
row queued while no gateway ran is chained by the next ``Journal`` to open the file (``record()``, which the
admin tools use, does exactly that when no gateway holds the lock). Inside each batch transaction the writer
also re-reads the stored head: if some writer outside this protocol appended (an old version, a platform without
``flock``) the batch is re-chained onto the stored head and an error logged, so the file still verifies.
``ts`` is the time of the action, not of chaining: a queued row can carry an older ``ts`` than its predecessor.

Kinds: ``alert`` (events from nodes), ``command``, ``result``, ``state`` (registry transitions), ``operator``
(operator requests, accepted or refused), ``security`` (forged/unsigned messages, refused operators), ``system``
(start/stop), ``custody`` (evidence files stored, duplicated or linked to events: gateway/clipstore.py),
``admin`` (key store, PKI, broker files and key rotations done with the admin tools on the gateway host),
``incident`` (the linkage: incidents and every step taken on them, with the rule or operator that took it).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lookout.gateway.core import walstore

log = logging.getLogger(__name__)

GENESIS = "0" * 64
DEFER_MAX_S = 0.01  # append_soon entries are chained at the latest this long after the first one (usually sooner)
LINGER_S = 0.05  # the writer gathers appends this long before committing them in one transaction
INBOX_POLL_S = 1.0  # an idle owner chains rows queued by other processes at most this late
LOCK_WAIT_S = 2.0  # how long a new Journal waits to become the owner (a CLI holds the lock for milliseconds)
BUSY_TIMEOUT_MS = 10_000  # SQLite waits this long for the other process's write transaction
MAX_PENDING = 100_000  # rows chained but not yet committed (SQLite failing): beyond this, appends are dropped
# and counted (a few tens of MB of memory; the writer commits thousands of rows per second when SQLite works)
KINDS = ("alert", "command", "result", "state", "operator", "security", "system", "custody", "admin",
         "incident")

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
CREATE TABLE IF NOT EXISTS journal_inbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        INTEGER NOT NULL,
    operator  TEXT,
    kind      TEXT NOT NULL,
    device    TEXT,
    summary   TEXT NOT NULL,
    detail    TEXT NOT NULL
);
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


# A float value in compact JSON follows ":" (dict value), "," or "[" (list item) and has a "." or an exponent
# (repr never writes "1" for a float). No match: no float; a match may be a string's text (then parse to be sure).
_FLOATISH = re.compile(r"[:,\[]-?[0-9]+[.eE]")


def detail_text(detail: dict[str, Any]) -> str:
    """``dumps(_jsonable(detail))``, done by the C encoder when there is no float in it (the usual case;
    ``_jsonable`` walks the whole structure in Python, ~10x slower). Parsed back to look for floats only when
    the text has something that could be one."""
    try:
        text = json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=str)
        if _FLOATISH.search(text) is not None:
            json.loads(text, parse_float=_no_float, parse_constant=_no_float)
        return text
    except (TypeError, ValueError):
        return dumps(_jsonable(detail))


def entry_hash(prev_hash: str, seq: int, ts: int, operator: str | None, kind: str, device: str | None,
               summary: str, detail: str) -> str:
    """sha256(prev_hash + dumps({...the entry's fields...})). The JSON is assembled here, keys in sorted order,
    with the C string encoder ``dumps`` itself uses (the same text, tests check; a quarter of the time)."""
    if type(seq) is not int or type(ts) is not int:  # exotic values: let dumps decide how they look
        return _entry_hash_ref(prev_hash, seq, ts, operator, kind, device, summary, detail)
    body = (f'{{"detail":{_jstr(detail)},"device":{"null" if device is None else _jstr(device)},'
            f'"kind":{_jstr(kind)},"operator":{"null" if operator is None else _jstr(operator)},"seq":{seq},'
            f'"summary":{_jstr(summary)},"ts":{ts}}}')
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _entry_hash_ref(prev_hash: str, seq: int, ts: int, operator: str | None, kind: str, device: str | None,
                    summary: str, detail: str) -> str:
    body = dumps({"seq": seq, "ts": ts, "operator": operator, "kind": kind, "device": device,
                  "summary": summary, "detail": detail})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


_jstr = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes for a str


class _OwnerLock:
    """The per-file ownership lock: an exclusive ``flock`` on ``<file>.lock``, shared by every ``Journal`` of
    this process on that file (flock locks belong to an open file, so a second open in the same process would
    otherwise lock itself out). Without ``fcntl`` (not Linux/BSD/macOS) every instance owns the chain."""

    _held: ClassVar[dict[str, list[Any]]] = {}  # resolved path -> [fd or None, refcount]
    _mutex = threading.Lock()

    @classmethod
    def acquire(cls, path: Path, wait_s: float) -> str | None:
        key = str(path.resolve())
        with cls._mutex:  # held while waiting: two threads of one process never race for the same file
            if key in cls._held:
                cls._held[key][1] += 1
                return key
            try:
                import fcntl
            except ImportError:
                cls._held[key] = [None, 1]
                return key
            fd = os.open(key + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            end = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= end:
                        os.close(fd)
                        return None
                    time.sleep(0.02)
            cls._held[key] = [fd, 1]
            return key

    @classmethod
    def release(cls, key: str) -> None:
        with cls._mutex:
            held = cls._held.get(key)
            if held is None:
                return
            held[1] -= 1
            if held[1] <= 0:
                del cls._held[key]
                if held[0] is not None:
                    os.close(held[0])  # closing the descriptor drops the flock


_INSERT = ("INSERT INTO journal (seq, ts, operator, kind, device, summary, detail, prev_hash, hash)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


class Journal:
    def __init__(self, path: str | Path, *, owner_wait_s: float = LOCK_WAIT_S, max_pending: int = MAX_PENDING):
        self.path = Path(path)
        self.max_pending = max_pending
        self.dropped = 0  # appends refused because max_pending rows were waiting for a failing SQLite
        self._unreported: dict[str, int] = {}  # dropped per kind, journaled once the writer works again
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = walstore.connect(self.path, check_same_thread=False, busy_timeout_ms=BUSY_TIMEOUT_MS)
        self._db.executescript(_SCHEMA)
        self._lock_key = _OwnerLock.acquire(self.path, owner_wait_s)
        self.owner = self._lock_key is not None  # False: a guest, whose appends go to the inbox
        row = self._db.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq: int = row[0] if row else 0
        self._head: str = row[1] if row else GENESIS
        self._dblock = threading.Lock()  # the connection is used by the writer thread and by readers
        self._cv = threading.Condition()
        self._pending: list[tuple[Any, ...]] = []
        self._deferred: list[tuple[Any, ...]] = []  # append_soon() entries not chained yet (see there)
        self._chained = 0  # rows chained by this instance (its appends and the inbox rows it took)
        self._committed = 0  # of those, rows committed
        self._claimed = 0  # highest journal_inbox id chained (deleted from the inbox in the same commit)
        self._closing = False
        self._urgent = False  # a reader is waiting: commit without lingering
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None
        if self.owner and not self._commit_batch():  # rows other processes queued while no owner ran
            log.error("journal %s: could not chain queued rows at open (%s); the writer retries", self.path,
                      self._error)

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
        if self.owner and self._lock_key is not None:
            if not self._commit_batch():  # last look at the inbox before giving up ownership
                log.error("journal %s: queued rows left unchained at close: %s", self.path, self._error)
            _OwnerLock.release(self._lock_key)
            self._lock_key = None
        with self._dblock:
            self._db.close()

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest entry: the chain as the owner will write it (appends included before
        they are committed); for a guest, the newest committed row."""
        if not self.owner:
            with self._dblock:
                row = self._db.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
            return (row[0], row[1]) if row else (0, GENESIS)
        self.drain()
        return self._seq, self._head

    def append(self, kind: str, summary: str, *, operator: str | None = None, device: str | None = None,
               detail: dict[str, Any] | None = None, ts: int | None = None) -> Entry:
        """Chain one entry (owner) and return it; a guest queues it in the inbox and returns it with seq 0."""
        if kind not in KINDS:
            raise ValueError(f"journal kind {kind!r} not one of {', '.join(KINDS)}")
        ts = time.time_ns() // 1_000_000 if ts is None else ts
        det = detail_text(detail or {})
        if not self.owner:
            with self._dblock:
                self._db.execute("INSERT INTO journal_inbox (ts, operator, kind, device, summary, detail)"
                                 " VALUES (?, ?, ?, ?, ?, ?)", (ts, operator, kind, device, summary, det))
            return Entry(0, ts, operator, kind, device, summary, det, "", "")
        with self._cv:
            idle = not self._pending
            if self._deferred:
                self._chain_deferred()
            if len(self._pending) >= self.max_pending:
                self._drop(kind)
                return Entry(0, ts, operator, kind, device, summary, det, "", "")
            e = self._chain(ts, operator, kind, device, summary, det)
            self._kick(idle)
        return e

    def _drop(self, kind: str) -> None:
        """Refuse one append: the writer has ``max_pending`` rows it cannot commit (caller holds ``_cv``). The
        chain stays whole (a dropped entry never got a seq); the loss is journaled when writing works again."""
        self.dropped += 1
        self._unreported[kind] = self._unreported.get(kind, 0) + 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.error("journal %s: %d entries waiting for a failing SQLite (%s); %d dropped so far", self.path,
                      len(self._pending), self._error, self.dropped)

    @property
    def error(self) -> BaseException | None:
        """Why the last commit failed (None once a commit worked): the rows wait in memory meanwhile."""
        return self._error

    @property
    def pending(self) -> int:
        """Rows appended but not yet committed."""
        return len(self._pending) + len(self._deferred)

    def append_soon(self, kind: str, summary: str, *, operator: str | None = None, device: str | None = None,
                    detail: dict[str, Any] | None = None, ts: int | None = None) -> None:
        """``append``, with the work (detail JSON, SHA-256 link: tens of microseconds) done later on the event
        loop: at the next ``drain()`` — the gateway drains right after it published the operator response a
        command's entries belong to — or at the latest ``DEFER_MAX_S`` after the first deferred entry.

        The chain order is still the order of the calls: every ``append``, ``head`` and ``flush`` (so every read
        and ``close``) first chains what was deferred. ``ts`` is taken now; ``detail`` is serialised later, so
        the caller must not mutate it (pass a fresh dict). Without a running event loop on this thread, or as a
        guest, this is ``append``. A crash can lose a deferred entry as it can lose one appended but not yet
        committed (docs/GATEWAY.md).
        """
        loop = asyncio.events._get_running_loop()
        if loop is None or not self.owner:
            self.append(kind, summary, operator=operator, device=device, detail=detail, ts=ts)
            return
        if kind not in KINDS:
            raise ValueError(f"journal kind {kind!r} not one of {', '.join(KINDS)}")
        ts = time.time_ns() // 1_000_000 if ts is None else ts
        with self._cv:
            self._deferred.append((ts, operator, kind, device, summary, detail))
            first = len(self._deferred) == 1
        if first:
            loop.call_later(DEFER_MAX_S, self.drain)

    def drain(self) -> None:
        """Chain the ``append_soon`` entries now."""
        with self._cv:
            if self._deferred:
                idle = not self._pending
                self._chain_deferred()
                self._kick(idle)

    def _chain_deferred(self) -> None:
        """(caller holds ``_cv``)"""
        items, self._deferred = self._deferred, []
        for ts, operator, kind, device, summary, detail in items:
            if len(self._pending) >= self.max_pending:
                self._drop(kind)
                continue
            self._chain(ts, operator, kind, device, summary, detail_text(detail or {}))

    def _kick(self, idle: bool) -> None:
        """Start the writer, or wake it if it was idle (``idle``: nothing was pending before these rows);
        a writer already gathering a batch is left alone (caller holds ``_cv``)."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
            self._writer.start()
        if idle:
            self._cv.notify_all()

    def _chain(self, ts: int, operator: str | None, kind: str, device: str | None, summary: str,
               det: str) -> Entry:
        """Give the row the next seq and link it to the head (caller holds ``_cv``)."""
        seq = self._seq + 1
        h = entry_hash(self._head, seq, ts, operator, kind, device, summary, det)
        self._pending.append((seq, ts, operator, kind, device, summary, det, self._head, h))
        e = Entry(seq, ts, operator, kind, device, summary, det, self._head, h)
        self._seq, self._head = seq, h
        self._chained += 1
        return e

    def _rechain(self, rows: list[tuple[Any, ...]], seq: int, head: str) -> list[tuple[Any, ...]]:
        """Re-link ``rows`` onto the stored head (caller holds ``_cv``; only when someone broke the protocol)."""
        out = []
        for r in rows:
            seq += 1
            h = entry_hash(head, seq, *r[1:7])
            out.append((seq, *r[1:7], head, h))
            head = h
        self._seq, self._head = seq, head
        return out

    def _inbox_waiting(self) -> bool:
        try:
            with self._dblock:
                return self._db.execute("SELECT 1 FROM journal_inbox WHERE id > ? LIMIT 1",
                                        (self._claimed,)).fetchone() is not None
        except sqlite3.Error:
            return False

    def _commit_batch(self) -> bool:
        """One transaction: chain the inbox rows after everything appended, insert all pending rows, delete the
        inbox rows taken. False (rows kept for a retry, ``_error`` set) when SQLite fails."""
        rows: list[tuple[Any, ...]] = []
        try:
            with self._dblock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    queued = self._db.execute("SELECT id, ts, operator, kind, device, summary, detail FROM"
                                              " journal_inbox WHERE id > ? ORDER BY id", (self._claimed,)).fetchall()
                    top = self._db.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
                    db_seq, db_head = top if top else (0, GENESIS)
                    with self._cv:
                        for q in queued:
                            self._chain(*q[1:])
                            self._claimed = q[0]
                        rows, self._pending = self._pending, []
                        self._urgent = False
                        claimed = self._claimed
                        if rows and (rows[0][0] != db_seq + 1 or rows[0][7] != db_head):
                            log.error("journal %s: stored head is seq %d but this writer continues seq %d; another"
                                      " writer bypassed the owner lock; re-chaining %d entries onto the stored head",
                                      self.path, db_seq, rows[0][0] - 1, len(rows))
                            rows = self._rechain(rows, db_seq, db_head)
                    if rows:
                        self._db.executemany(_INSERT, rows)
                    if claimed:
                        self._db.execute("DELETE FROM journal_inbox WHERE id <= ?", (claimed,))
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # a failed COMMIT (disk full) has already rolled back
                        self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:  # disk full, file locked...: keep the rows, retry, tell readers
            log.error("journal write failed (%d entries kept, retrying): %s", len(rows), e)
            with self._cv:
                self._pending[:0] = rows
                self._error = e
                self._cv.notify_all()
            return False
        with self._cv:
            self._committed += len(rows)
            self._error = None
            if self._unreported and not self._closing:  # the gap on record, chained after what survived
                lost, self._unreported = self._unreported, {}
                self._chain(time.time_ns() // 1_000_000, None, "system", None,
                            f"{sum(lost.values())} journal entries dropped while the journal could not be written",
                            detail_text({"dropped": lost, "max_pending": self.max_pending}))
            self._cv.notify_all()
        return True

    def _write_loop(self) -> None:
        """The single writer: everything appended since the last commit goes in one transaction."""
        while True:
            with self._cv:
                if not self._pending and not self._closing:
                    self._cv.wait(INBOX_POLL_S)
                if self._pending and not self._closing and not self._urgent:  # group commit
                    self._cv.wait_for(lambda: self._closing or self._urgent, LINGER_S)
                if self._closing and not self._pending:
                    return
                have_rows = bool(self._pending)
            if not have_rows and not self._inbox_waiting():
                continue
            if not self._commit_batch():
                with self._cv:
                    if self._closing:
                        return
                    self._cv.wait(1.0)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every entry appended so far is committed (raises if the writer keeps failing)."""
        self.drain()
        with self._cv:
            target = self._chained
            if self._committed >= target:
                return
            self._urgent = True
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: self._committed >= target or (self._closing and self._error),
                                     timeout):
                raise RuntimeError(f"journal: entries up to seq {self._seq} not written within {timeout:g} s"
                                   + (f" ({self._error})" if self._error else ""))
            if self._committed < target:
                raise RuntimeError(f"journal: {target - self._committed} entries could not be written: "
                                   f"{self._error}")

    def _query(self, q: str, args: Any = ()) -> list[Any]:
        self.flush()
        with self._dblock:
            return self._db.execute(q, args).fetchall()

    def entries(self, since_ms: int | None = None, until_ms: int | None = None, kind: str | None = None,
                device: str | None = None, limit: int | None = None, last: bool = False, *,
                operator: str | None = None, after_seq: int | None = None, before_seq: int | None = None,
                detail_has: str | None = None) -> list[Entry]:
        """Entries in seq order; ``last``: the newest ``limit`` of them (still returned oldest first)."""
        cond, args = walstore.where(("ts >= ?", since_ms), ("ts < ?", until_ms), ("kind = ?", kind),
                                    ("device = ?", device), ("operator = ?", operator), ("seq > ?", after_seq),
                                    ("seq < ?", before_seq), ("instr(detail, ?) > 0", detail_has))
        q = f"SELECT {', '.join(COLUMNS)} FROM journal{cond} ORDER BY seq {'DESC' if last else 'ASC'}"
        if limit is not None:
            q += " LIMIT ?"
            args.append(limit)
        rows = [Entry(*r) for r in self._query(q, args)]
        return rows[::-1] if last else rows

    def page(self, after: int = 0, limit: int = 200, since_ms: int | None = None, until_ms: int | None = None,
             device: str | None = None) -> tuple[list[Entry], bool]:
        """Up to ``limit`` entries with ``seq > after`` (and the filters), oldest first, and whether more follow:
        a cursor page, so SQLite reads ``limit + 1`` rows however long the journal is."""
        cond, args = walstore.where(("seq > ?", after), ("ts >= ?", since_ms), ("ts < ?", until_ms),
                                    ("device = ?", device))
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM journal{cond} ORDER BY seq LIMIT ?", [*args, limit + 1])
        return [Entry(*r) for r in rows[:limit]], len(rows) > limit

    def verify(self, progress: Callable[[int, int], None] | None = None, batch: int = 2000) -> VerifyResult:
        """Walk the whole chain; report the first row whose link or hash is wrong.

        Blocking (it reads and hashes every row): the gateway runs it in a worker thread. It reads through its
        own connection, one consistent snapshot in batches, so the writer keeps committing meanwhile;
        ``progress(done, total)`` is called after each batch."""
        self.flush()
        db = walstore.connect(self.path, check_same_thread=False, busy_timeout_ms=BUSY_TIMEOUT_MS)
        try:
            db.execute("BEGIN")  # one snapshot for the count and the rows
            total = db.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
            cur = db.execute("SELECT " + ", ".join(COLUMNS) + " FROM journal ORDER BY seq")
            prev, n, expect_seq = GENESIS, 0, 1
            while rows := cur.fetchmany(batch):
                for r in rows:
                    e = Entry(*r)
                    n += 1
                    if e.seq != expect_seq:
                        return VerifyResult(False, n, e.seq, f"sequence jumps from {expect_seq - 1} to {e.seq} "
                                                               "(rows deleted)", prev)
                    if e.prev_hash != prev:
                        return VerifyResult(False, n, e.seq, "prev_hash does not match the previous row's hash",
                                            prev)
                    want = entry_hash(e.prev_hash, e.seq, e.ts, e.operator, e.kind, e.device, e.summary, e.detail)
                    if want != e.hash:
                        return VerifyResult(False, n, e.seq, "hash does not match the row's content (row edited)",
                                            prev)
                    prev = e.hash
                    expect_seq += 1
                if progress is not None:
                    progress(n, total)
            return VerifyResult(True, n, None, None, prev)
        finally:
            db.close()

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


def record(path: str | Path, kind: str, summary: str, *, operator: str | None = None, device: str | None = None,
           detail: dict[str, Any] | None = None, ts: int | None = None, owner_wait_s: float = 0.2) -> Entry:
    """Journal one entry from a short-lived process (the admin tools): chained at once when no gateway owns the
    file, else queued for the running gateway to chain (``Entry.seq == 0``). Raises ``OSError``/``sqlite3.Error``
    when the file cannot be written."""
    j = Journal(path, owner_wait_s=owner_wait_s)
    try:
        e = j.append(kind, summary, operator=operator, device=device, detail=detail, ts=ts)
        j.flush()
        return e
    finally:
        j.close()

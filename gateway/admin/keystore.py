"""The gateway's key store: per-device HMAC keys, command counters, operator identities, MQTT credentials.

Theory of operation:
- one SQLite file, created with mode 0600 before SQLite opens it (the journal inherits the mode); everything
  secret about a site lives here, so back it up like a password vault and never copy it to a node;
- keys come from ``secrets.token_bytes`` (the OS CSPRNG) and are never logged or put in ``repr``;
- ``next_counter`` hands out the per-device command counter ``ctr``: ``max(last + 1, now_ms)``, strictly
  increasing, never repeated after a restart, and a keystore restored from an older backup still issues counters
  above anything the node accepted (the node rejects ``ctr <= last``) as long as the server clock is sane.
  Counters are reserved in blocks: the ``ctr`` column holds a high-water mark ``COUNTER_BLOCK_MS`` ahead of the
  counter handed out, committed *before* any counter under it is used, so a command needs no disk write until
  the block runs out (about once per 10 minutes per busy device). After a restart counters continue above the
  high-water mark (a gap the node accepts: it wants larger, not consecutive). Another process committing to the
  file (``PRAGMA data_version`` changes) drops the cached blocks, so two processes never hand out the same value;
- the file is in WAL mode with ``synchronous=NORMAL``: a commit survives a crash of the gateway process; a power
  loss or OS crash may lose the last commits before the next checkpoint but never corrupts the file. Losing a
  counter block's commit that way is safe because blocks are time-based (``now_ms`` floor). Back the file up
  with ``sqlite3 keystore.db ".backup copy.db"`` (a plain ``cp`` without the ``-wal`` file misses recent commits);
- ``kind`` says what the key is for: a node role (``speaker``/``sensor``/``camera``: HMAC over canonical JSON,
  protocols/signing.py), ``drone`` (32-byte MAVLink 2 signing secret) or ``recorder`` (serial body-worn recorder
  key); ``meta`` holds kind-specific settings (e.g. a drone's MAVLink system id);
- operators are stored with a SHA-256 hash of their token (tokens are 256-bit random, so a fast hash is enough;
  a slow KDF protects low-entropy passwords, which these are not);
- ``mqtt_users`` holds the Mosquitto password-file line (PBKDF2-SHA512, never the password) and the ACL role of
  every broker login, so ``lookout broker-config`` can regenerate the broker files at any time.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Self

from lookout.gateway.core import walstore
from lookout.gateway.core.clock import now_ms as _now_ms
from lookout.protocols.topics import is_valid_id

KEY_LEN = 32
DEVICE_KINDS = ("speaker", "sensor", "camera")
KEY_KINDS = DEVICE_KINDS + ("drone", "recorder", "gateway")
OPERATOR_ROLES = ("operator", "admin", "viewer")  # viewer: read-only (gateway/service/operator_api.py READ_ONLY)
MQTT_ROLES = ("device", "gateway", "operator", "bridge")  # bridge: a township broker's login on the county broker
VERSION_CHECK_S = 0.5  # how often caches look for commits by other processes
COUNTER_BLOCK_MS = 600_000  # high-water mark reserved ahead of the counter in use (10 min of ms-based counters)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    device_id  TEXT PRIMARY KEY,
    site       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    hmac_key   BLOB NOT NULL,
    ctr        INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    rotated_ms INTEGER,
    meta       TEXT NOT NULL DEFAULT '{}',
    pending_key BLOB
);
CREATE TABLE IF NOT EXISTS operators (
    op_id      TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mqtt_users (
    username   TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    site       TEXT,
    pw_line    TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
"""


class KeyStoreError(Exception):
    """Misuse of the key store (unknown id, bad key length, duplicate id)."""



def token_hash(token: str) -> str:
    """How an operator token is stored and compared (hex SHA-256 of its UTF-8 bytes)."""
    return hashlib.sha256(token.encode()).hexdigest()


class Identity:
    """A keyed identity. ``hmac_key`` is secret: it is deliberately absent from ``repr``."""

    __slots__ = ("created_ms", "device_id", "hmac_key", "kind", "meta", "rotated_ms", "site")

    def __init__(self, device_id: str, site: str, kind: str, hmac_key: bytes, created_ms: int,
                 rotated_ms: int | None = None, meta: dict | None = None):
        self.device_id = device_id
        self.site = site
        self.kind = kind
        self.hmac_key = hmac_key
        self.created_ms = created_ms
        self.rotated_ms = rotated_ms
        self.meta = meta or {}

    def __repr__(self) -> str:
        return f"Identity({self.device_id!r}, site={self.site!r}, kind={self.kind!r}, key=<hidden>)"


class Operator:
    __slots__ = ("created_ms", "name", "op_id", "role", "token_hash")

    def __init__(self, op_id: str, name: str, role: str, token_hash: str, created_ms: int):
        self.op_id = op_id
        self.name = name
        self.role = role
        self.token_hash = token_hash
        self.created_ms = created_ms

    def __repr__(self) -> str:
        return f"Operator({self.op_id!r}, name={self.name!r}, role={self.role!r})"


class MQTTUser:
    __slots__ = ("created_ms", "pw_line", "role", "site", "username")

    def __init__(self, username: str, role: str, site: str | None, pw_line: str, created_ms: int):
        self.username = username
        self.role = role
        self.site = site
        self.pw_line = pw_line
        self.created_ms = created_ms

    def __repr__(self) -> str:
        return f"MQTTUser({self.username!r}, role={self.role!r})"


def _create_private(path: Path) -> None:
    """Create ``path`` with mode 0600 if missing; tighten the mode if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class KeyStore:
    """SQLite-backed store; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        _create_private(self.path)
        self._lock = threading.Lock()
        self._db = walstore.connect(self.path, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._blocks: dict[str, list[int]] = {}  # device -> [last counter issued, persisted high-water mark]
        self._rows: dict[str, Identity | None] = {}  # device -> Identity (get() cache; callers never mutate it)
        self._ops: dict[str, Operator | None] = {}  # op_id -> Operator (get_operator() cache)
        self._data_version = self._version()
        self._version_due = 0.0
        cols = [r[1] for r in self._db.execute("PRAGMA table_info(identities)")]
        if "pending_key" not in cols:  # keystores created before rotation support
            self._db.execute("ALTER TABLE identities ADD COLUMN pending_key BLOB")
        if "pw_hash" not in [r[1] for r in self._db.execute("PRAGMA table_info(operators)")]:
            # the web console's operator passwords (scrypt, gateway/admin/passwords.py); NULL = token only
            self._db.execute("ALTER TABLE operators ADD COLUMN pw_hash TEXT")

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    # -- identities ------------------------------------------------------------------------------------------
    @staticmethod
    def _identity(row) -> Identity:
        return Identity(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], json.loads(row[6] or "{}"))

    _ID_COLS = "device_id, site, kind, hmac_key, created_ms, rotated_ms, meta"

    def get(self, device_id: str) -> Identity | None:
        """Rows are cached (the gateway looks a key up for every command and result); the cache is dropped on
        our own writes and whenever another connection committed to the file (``PRAGMA data_version``)."""
        with self._lock:
            self._check_version()
            try:
                return self._rows[device_id]
            except KeyError:
                row = self._db.execute(
                    f"SELECT {self._ID_COLS} FROM identities WHERE device_id = ?", (device_id,)).fetchone()
                ident = self._rows[device_id] = self._identity(row) if row else None
        return ident

    def list(self, kind: str | None = None, site: str | None = None) -> list[Identity]:
        cond, args = walstore.where(("kind = ?", kind), ("site = ?", site))
        with self._lock:
            rows = self._db.execute(f"SELECT {self._ID_COLS} FROM identities{cond} ORDER BY device_id",
                                    args).fetchall()
        return [self._identity(r) for r in rows]

    def create(self, device_id: str, site: str, kind: str, key: bytes | None = None,
               meta: dict | None = None) -> Identity:
        """Create a new identity with a fresh random key; KeyStoreError if the id exists."""
        _check_id(device_id, "device_id")
        _check_id(site, "site")
        if kind not in KEY_KINDS:
            raise KeyStoreError(f"kind {kind!r} not one of {', '.join(KEY_KINDS)}")
        key = secrets.token_bytes(KEY_LEN) if key is None else bytes(key)
        _check_key(key)
        now = _now_ms()
        with self._lock:
            self._rows.pop(device_id, None)  # get() cache
            try:
                self._db.execute(
                    "INSERT INTO identities (device_id, site, kind, hmac_key, ctr, created_ms, meta)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?)", (device_id, site, kind, key, now, json.dumps(meta or {})))
            except sqlite3.IntegrityError:
                raise KeyStoreError(f"identity {device_id!r} already exists") from None
        return Identity(device_id, site, kind, key, now, None, meta or {})

    def ensure(self, device_id: str, site: str, kind: str, meta: dict | None = None) -> Identity:
        """Return the identity, creating it with a random key if missing (demo/dev convenience)."""
        got = self.get(device_id)
        if got is not None:
            return got
        try:
            return self.create(device_id, site, kind, meta=meta)
        except KeyStoreError:  # created concurrently by another process
            got = self.get(device_id)
            if got is None:
                raise
            return got

    def _version(self) -> int:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def _check_version(self) -> None:
        """Another connection committed to the file: drop the caches (lock held). Checked at most every
        ``VERSION_CHECK_S``: each SQLite call releases the GIL, which costs the gateway's event loop more than
        the query itself. So a key changed by another process is seen within that time; counters stay unique
        regardless (another process always issues above our persisted high-water mark)."""
        t = time.monotonic()
        if t < self._version_due:
            return
        self._version_due = t + VERSION_CHECK_S
        v = self._version()
        if v != self._data_version:
            self._data_version = v
            self._blocks.clear()
            self._rows.clear()
            self._ops.clear()

    def next_counter(self, device_id: str) -> int:
        """Return the next command counter, ``max(last + 1, now_ms)``; its block is persisted before return."""
        now = _now_ms()
        with self._lock:
            self._check_version()
            blk = self._blocks.get(device_id)
            if blk is not None:
                ctr = max(blk[0] + 1, now)
                if ctr <= blk[1]:
                    blk[0] = ctr
                    return ctr
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT ctr FROM identities WHERE device_id = ?", (device_id,)).fetchone()
                if row is None:
                    raise KeyStoreError(f"no identity {device_id!r}")
                # renewing our own block (the row still holds its mark): continue from the last counter issued
                last = blk[0] if blk is not None and blk[1] == row[0] else row[0]
                ctr = max(last + 1, now)
                hw = ctr + COUNTER_BLOCK_MS
                self._db.execute("UPDATE identities SET ctr = ? WHERE device_id = ?", (hw, device_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._blocks[device_id] = [ctr, hw]
        return ctr

    def last_counter(self, device_id: str) -> int:
        """The last counter this process issued; else the persisted high-water mark (nothing above is used)."""
        with self._lock:
            self._check_version()
            blk = self._blocks.get(device_id)
            if blk is not None:
                return blk[0]
            row = self._db.execute("SELECT ctr FROM identities WHERE device_id = ?", (device_id,)).fetchone()
        if row is None:
            raise KeyStoreError(f"no identity {device_id!r}")
        return row[0]

    def set_key(self, device_id: str, new_key: bytes) -> None:
        """Replace the key after the node confirmed a rotation (the counter is kept: it must keep growing).

        Clears any pending key.
        """
        new_key = bytes(new_key)
        _check_key(new_key)
        with self._lock:
            self._rows.pop(device_id, None)  # get() cache
            cur = self._db.execute("UPDATE identities SET hmac_key = ?, rotated_ms = ?, pending_key = NULL"
                                   " WHERE device_id = ?",
                                   (new_key, _now_ms(), device_id))
        if cur.rowcount != 1:
            raise KeyStoreError(f"no identity {device_id!r}")

    def begin_rotation(self, device_id: str) -> bytes:
        """Make (or return the already pending) next key for ``device_id``; the current key stays in force.

        Send it with ``signing.wrap_key`` in a ``rotate_key`` command; call ``set_key`` once the node's ``done``
        result verifies (or a message verifies with the pending key); ``cancel_rotation`` to drop it.
        """
        with self._lock:
            row = self._db.execute("SELECT pending_key FROM identities WHERE device_id = ?", (device_id,)).fetchone()
            if row is None:
                raise KeyStoreError(f"no identity {device_id!r}")
            if row[0] is not None:
                return bytes(row[0])
            key = secrets.token_bytes(KEY_LEN)
            self._db.execute("UPDATE identities SET pending_key = ? WHERE device_id = ?", (key, device_id))
        return key

    def pending_key(self, device_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT pending_key FROM identities WHERE device_id = ?", (device_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def cancel_rotation(self, device_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE identities SET pending_key = NULL WHERE device_id = ?", (device_id,))

    def set_meta(self, device_id: str, meta: dict) -> None:
        with self._lock:
            self._rows.pop(device_id, None)  # get() cache
            cur = self._db.execute("UPDATE identities SET meta = ? WHERE device_id = ?",
                                   (json.dumps(meta), device_id))
        if cur.rowcount != 1:
            raise KeyStoreError(f"no identity {device_id!r}")

    def remove(self, device_id: str) -> bool:
        """Revoke: forget the key and the broker login of ``device_id``. True if anything was removed."""
        with self._lock:
            self._rows.pop(device_id, None)  # get() cache
            a = self._db.execute("DELETE FROM identities WHERE device_id = ?", (device_id,)).rowcount
            b = self._db.execute("DELETE FROM mqtt_users WHERE username = ? AND role != 'operator'",
                                 (device_id,)).rowcount
        return bool(a or b)

    # -- operators -------------------------------------------------------------------------------------------
    def add_operator(self, op_id: str, name: str, role: str, token: str | None = None) -> str:
        """Create an operator; return its secret token (shown once, only its hash is stored). ``token``: one
        issued elsewhere (a county operator known to several township gateways under one token)."""
        _check_id(op_id, "op_id")
        if role not in OPERATOR_ROLES:
            raise KeyStoreError(f"role {role!r} not one of {', '.join(OPERATOR_ROLES)}")
        if token is not None and (not isinstance(token, str) or len(token) < 32):
            raise KeyStoreError("an imported token must be at least 32 characters")
        token = token or secrets.token_urlsafe(32)
        with self._lock:
            self._ops.pop(op_id, None)
            try:
                self._db.execute("INSERT INTO operators (op_id, name, role, token_hash, created_ms)"
                                 " VALUES (?, ?, ?, ?, ?)", (op_id, name, role, token_hash(token), _now_ms()))
            except sqlite3.IntegrityError:
                raise KeyStoreError(f"operator {op_id!r} already exists") from None
        return token

    def get_operator(self, op_id: str) -> Operator | None:
        """Cached like ``get()`` (the gateway checks the operator of every request): an operator added or
        removed by another process is seen within ``VERSION_CHECK_S``."""
        with self._lock:
            self._check_version()
            try:
                return self._ops[op_id]
            except KeyError:
                row = self._db.execute("SELECT op_id, name, role, token_hash, created_ms FROM operators"
                                       " WHERE op_id = ?", (op_id,)).fetchone()
                op = self._ops[op_id] = Operator(*row) if row else None
        return op

    def list_operators(self) -> builtins.list[Operator]:  # builtins.: the class has a list() method
        with self._lock:
            rows = self._db.execute("SELECT op_id, name, role, token_hash, created_ms FROM operators"
                                    " ORDER BY op_id").fetchall()
        return [Operator(*r) for r in rows]

    def verify_operator(self, op_id: str, token: str) -> Operator | None:
        """The operator if ``token`` is its token (constant-time compare), else None."""
        op = self.get_operator(op_id)
        if op is None or not isinstance(token, str):
            return None
        return op if hmac.compare_digest(op.token_hash, token_hash(token)) else None

    def set_operator_password(self, op_id: str, pw_hash: str | None) -> None:
        """Store (or with None, remove) the scrypt hash of an operator's web console password."""
        with self._lock:
            n = self._db.execute("UPDATE operators SET pw_hash = ? WHERE op_id = ?", (pw_hash, op_id)).rowcount
        if not n:
            raise KeyStoreError(f"unknown operator {op_id!r}")

    def operator_password(self, op_id: str) -> str | None:
        """The stored password hash of ``op_id`` (None: no password set, or no such operator)."""
        with self._lock:
            row = self._db.execute("SELECT pw_hash FROM operators WHERE op_id = ?", (op_id,)).fetchone()
        return row[0] if row else None

    def remove_operator(self, op_id: str) -> bool:
        with self._lock:
            self._ops.pop(op_id, None)
            a = self._db.execute("DELETE FROM operators WHERE op_id = ?", (op_id,)).rowcount
            b = self._db.execute("DELETE FROM mqtt_users WHERE username = ? AND role = 'operator'",
                                 (op_id,)).rowcount
        return bool(a or b)

    # -- broker logins ---------------------------------------------------------------------------------------
    def set_mqtt_user(self, username: str, role: str, pw_line: str, site: str | None = None) -> None:
        """Store (or replace) a broker login: ``pw_line`` is the password-file hash, never the password."""
        _check_id(username, "username")
        if role not in MQTT_ROLES:
            raise KeyStoreError(f"mqtt role {role!r} not one of {', '.join(MQTT_ROLES)}")
        if "\n" in pw_line or ":" in pw_line:
            raise KeyStoreError("pw_line must be the hash part only (no ':' or newline)")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO mqtt_users (username, role, site, pw_line, created_ms)"
                             " VALUES (?, ?, ?, ?, ?)", (username, role, site, pw_line, _now_ms()))

    def mqtt_users(self) -> builtins.list[MQTTUser]:
        with self._lock:
            rows = self._db.execute("SELECT username, role, site, pw_line, created_ms FROM mqtt_users"
                                    " ORDER BY username").fetchall()
        return [MQTTUser(*r) for r in rows]


def _check_id(value: str, what: str) -> None:
    if not is_valid_id(value):
        raise KeyStoreError(f"invalid {what} {value!r}: expected 1-32 chars of [a-z0-9_-], first a letter or digit")


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise KeyStoreError(f"key must be {KEY_LEN} bytes, got {len(key)}")

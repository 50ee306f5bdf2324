"""Who is at the screen: sign-in, sessions, CSRF tokens, and the brake on guessing.

Theory of operation
-------------------
An operator signs in with the identity the CLI uses: the operator id and either its token (``KeyStore.
verify_operator``) or a password set with ``lookout provision operator --password`` (scrypt, admin/passwords.py).
A successful sign-in creates a ``Session`` held in memory: a random 256-bit id in an ``HttpOnly``,
``SameSite=Strict`` cookie, and its own random CSRF token that every state-changing request must echo in the
``X-CSRF-Token`` header (or a ``csrf`` form field). A session ends when unused for ``idle_s``, after ``max_s``
whatever happens (one shift), at sign-out, or when the gateway restarts: in-memory sessions are deliberate —
a restart is rare and signing in again is cheap, while a session file would be one more secret on disk.

The sign-in form itself is protected by a double-submit token: ``GET /login`` sets a random ``lk_pre`` cookie and
puts the same value in the form; the POST must carry both (another site can neither read the cookie nor set it).

``LoginGuard`` slows guessing: after ``MAX_FAILS`` failures for one operator id or one client address within
``WINDOW_S`` further attempts are refused until the window has passed (answered 429, nothing checked). Failures
are journaled under ``security`` with the id tried and the address, never the secret; a locked-out key is
journaled once per window, so a flood cannot grow the journal.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_FAILS = 5
WINDOW_S = 300.0
MAX_SESSIONS = 1000  # bound on memory; the oldest session is dropped past it
MAX_GUARD_KEYS = 10_000


@dataclass
class Session:
    sid: str
    op_id: str
    name: str
    role: str
    lang: str
    csrf: str
    created: float  # monotonic s
    last: float
    how: str  # "token" | "password"
    sockets: set = field(default_factory=set)  # open WebSockets of this session (closed when it ends)

    def check_csrf(self, token: str | None) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """In-memory sessions with idle and absolute expiry."""

    def __init__(self, idle_s: float, max_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self.clock = clock
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, op_id: str, name: str, role: str, lang: str, how: str) -> Session:
        now = self.clock()
        while len(self._by_id) >= MAX_SESSIONS:
            self._by_id.pop(next(iter(self._by_id)))
        s = Session(secrets.token_urlsafe(32), op_id, name, role, lang, secrets.token_urlsafe(32), now, now, how)
        self._by_id[s.sid] = s
        return s

    def _expired(self, s: Session, now: float) -> bool:
        return now - s.last > self.idle_s or now - s.created > self.max_s

    def get(self, sid: str | None, touch: bool = True) -> Session | None:
        """The live session for a cookie value (None if unknown or expired); ``touch`` counts as activity."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        now = self.clock()
        if self._expired(s, now):
            return None  # removed (and journaled) by the next expire()
        if touch:
            s.last = now
        return s

    def drop(self, sid: str) -> Session | None:
        return self._by_id.pop(sid, None)

    def expire(self) -> list[Session]:
        """Remove and return every expired session (the console closes their sockets)."""
        now = self.clock()
        gone = [s for s in self._by_id.values() if self._expired(s, now)]
        for s in gone:
            self._by_id.pop(s.sid, None)
        return gone

    def of(self, op_id: str) -> list[Session]:
        return [s for s in self._by_id.values() if s.op_id == op_id]


class LoginGuard:
    """Failure counts per key (``op:<id>``, ``ip:<addr>``) in a sliding window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._fails: dict[str, list[float]] = {}
        self.refused = 0  # attempts refused while locked out (not checked at all)

    def _recent(self, key: str, now: float) -> list[float]:
        ts = [t for t in self._fails.get(key, ()) if now - t < WINDOW_S]
        if ts:
            self._fails[key] = ts
        else:
            self._fails.pop(key, None)
        return ts

    def locked(self, *keys: str) -> bool:
        now = self.clock()
        if any(len(self._recent(k, now)) >= MAX_FAILS for k in keys):
            self.refused += 1
            return True
        return False

    def fail(self, *keys: str) -> bool:
        """Count a failure; True when this failure locked a key (journal that once)."""
        now = self.clock()
        if len(self._fails) > MAX_GUARD_KEYS:
            self._fails.pop(next(iter(self._fails)))
        locked = False
        for k in keys:
            ts = self._recent(k, now)
            ts.append(now)
            self._fails[k] = ts
            locked |= len(ts) == MAX_FAILS
        return locked

    def ok(self, *keys: str) -> None:
        for k in keys:
            self._fails.pop(k, None)


__all__ = ["LoginGuard", "MAX_FAILS", "Session", "Sessions", "WINDOW_S"]

"""Can the gateway write its data directory? One answer for the whole service.

Theory of operation: every store lives under ``data_dir`` (SQLite files, evidence, audio). When that disk is full
or the directory turns read-only, the stores fail one by one, each in its own way; half-done work would follow.
``StorageHealth`` turns that into one state with a reason an operator can act on ("data directory /var/lib/lookout:
no space left (0.4 MiB free, 16 MiB needed)"): the operator API refuses new work while it is set (code ``busy``),
and everything already accepted keeps its place in memory (journal rows, event ids, command status changes) until
the stores can write again.

- ``check(now_ms)`` (the service's tick, at most once a second) reads ``statvfs``: free space below ``min_free``
  or a read-only mount is a failure at once. Writers that hit an error say so with ``failed(where, exc)``, which
  covers what statvfs cannot see (permissions, a dying disk).
- Recovery needs statvfs to be fine, a probe file to be written and removed, and every registered source
  (``add_source``: the journal writer's last error) to be clear; then ``on_change`` is called so the service can
  journal the outage and its length.

No polling writes while healthy: a probe file is written only while failed (to notice the recovery).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MIN_FREE_MB = 16  # SQLite needs room for its WAL and rollback journals; evidence uploads keep their own margin
CHECK_MS = 1000
PROBE = ".write-probe"


class StorageHealth:
    def __init__(self, data_dir: Path, min_free_bytes: int = MIN_FREE_MB << 20,
                 on_change: Callable[[str | None, str | None, int], None] | None = None):
        self.dir = Path(data_dir)
        self.min_free = min_free_bytes
        self.on_change = on_change  # (old problem, new problem, now_ms)
        self.problem: str | None = None  # None: writable
        self.since_ms: int | None = None
        self.refused = 0  # new work refused while failed
        self._sources: list[Callable[[], BaseException | None]] = []
        self._checked_ms = -CHECK_MS

    def add_source(self, fn: Callable[[], BaseException | None]) -> None:
        """``fn()``: a store's write error (None when its writes work); called while failed, so it may retry
        what waits (the journal writer retries by itself and reports its last error)."""
        self._sources.append(fn)

    def describe(self, e: BaseException) -> str:
        """What an operator should read about ``e``: the directory and the cause, without a stack trace."""
        no = getattr(e, "errno", None)
        text = str(e)
        if no == errno.ENOSPC or "disk is full" in text or "No space" in text:
            why = "no space left on the device"
        elif no == errno.EROFS or "readonly" in text or "read-only" in text.lower():
            why = "the file system is read-only"
        elif no in (errno.EACCES, errno.EPERM):
            why = "permission denied"
        else:
            why = (os.strerror(no) if isinstance(no, int) else text) or type(e).__name__
        return f"data directory {self.dir}: {why}"

    def failed(self, where: str, e: BaseException, now_ms: int) -> None:
        """A store could not write (``where`` names it for the log)."""
        problem = self.describe(e)
        if self.problem is None:
            log.error("cannot write (%s): %s; new work refused until it can, nothing accepted is dropped",
                      where, problem)
        self._set(problem, now_ms)

    def _statvfs_problem(self) -> str | None:
        try:
            st = os.statvfs(self.dir)
        except OSError as e:
            return self.describe(e)
        if st.f_flag & os.ST_RDONLY:
            return f"data directory {self.dir}: the file system is read-only"
        free = st.f_bavail * st.f_frsize
        if free < self.min_free:
            return (f"data directory {self.dir}: no space left ({free / 2**20:.1f} MiB free, "
                    f"{self.min_free / 2**20:g} MiB needed)")
        return None

    def _probe(self) -> str | None:
        p = self.dir / PROBE
        try:
            with open(p, "wb") as f:
                f.write(b"\0" * 4096)
            p.unlink()
        except OSError as e:
            try:
                p.unlink()
            except OSError:
                pass
            return self.describe(e)
        for src in self._sources:
            err = src()
            if err is not None:
                return self.describe(err)
        return None

    def check(self, now_ms: int) -> str | None:
        """Look again (at most once per ``CHECK_MS``); returns the current problem (None: writable)."""
        if now_ms - self._checked_ms < CHECK_MS:
            return self.problem
        self._checked_ms = now_ms
        problem = self._statvfs_problem()
        if problem is None and self.problem is not None:
            problem = self._probe()  # failed before: writable again only if a write works
        self._set(problem, now_ms)
        return self.problem

    def _set(self, problem: str | None, now_ms: int) -> None:
        old = self.problem
        if (old is None) == (problem is None):
            self.problem = problem  # still failing (perhaps for another reason), or still fine
            return
        self.problem = problem
        if problem is None:
            log.warning("data directory %s writable again after %.1f s (%d requests refused meanwhile)",
                        self.dir, (now_ms - (self.since_ms or now_ms)) / 1000, self.refused)
        else:
            self.since_ms = now_ms
            log.error("%s: new work refused until it can be written", problem)
        if self.on_change is not None:
            self.on_change(old, problem, now_ms)
        if problem is None:
            self.since_ms = None
            self.refused = 0

    def startup_check(self) -> None:
        """Before the stores open: an OSError whose text names the directory and the cause."""
        self.dir.mkdir(parents=True, exist_ok=True)
        problem = self._statvfs_problem() or self._probe()
        if problem is not None:
            raise OSError(f"{problem} (the gateway keeps its stores there; free space or fix the mount, then "
                          "start it again)")

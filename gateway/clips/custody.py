"""Custody of recorder clips: metadata, the custody steps in the duty journal, retention, holds, export, verify.

Theory of operation
-------------------
A body-worn recorder's clip is evidence (evidence practice: hash at the source, custody from upload, each custody event
hashed with the previous one, originals never edited, access logged, kept 6 months or for good when it is
evidence). The bytes live in the evidence store (gateway/clips/store.py: ``evidence/<sha256>.<ext>``, read-only,
content-addressed); this module keeps what a court asks about them:

- ``recordings`` (in ``clips/evidence.db``, next to the store's ``evidence`` index): one row per clip SHA-256:
  recorder, officer, clip id, start/end, GPS track summary, size, MIME type, the recorder's evidence mark, state
  (``recorded`` while only announced, ``stored`` once its whole content matched the hash, ``expired`` after
  retention removed the file), the hold (flagged as evidence: kept until released);
- the custody steps, each a ``custody`` entry in the hash-chained duty journal with ``detail.sha256`` naming the
  clip, so the journal's chain orders and seals them: ``recorded`` (the recorder reported the closed file and
  its hash), ``uploaded`` (every byte arrived; transfer figures), ``verified`` (the SHA-256 of the stored bytes
  equals the recorder's signed hash: filed, visible; again whenever an operator re-checks it), ``accessed``
  (shown to an operator), ``exported`` (copied out, the copy's hash checked), ``held``/``released``,
  ``expired`` (retention removed the bytes; the row and its hash stay);
- ``trail(sha)`` lists a clip's steps; ``verify(sha)`` re-hashes the file, checks the journal chain and that the
  trail runs recorded -> uploaded -> verified before anything else, and journals the result.

Two users: the gateway's ClipStore (``Custody(db, journal, ...)`` on its own connection, owner of the journal)
and the ``lookout clips`` tool on the gateway host (``Custody.open(data_dir)``: its own connection, a journal
guest whose entries the running gateway chains). Both only read the store's files; neither deletes anything but
retention does (``sweep``, the gateway).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lookout.gateway.core.clock import now_ms

RETENTION_DAYS = 183  # Chinese police practice: footage kept at least 6 months; evidence until released
BLOCK = 1 << 20  # bytes per read when hashing or copying (progress steps)
DAY_MS = 86_400_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    sha256 TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, officer TEXT, clip TEXT NOT NULL,
    start_ms INTEGER, end_ms INTEGER, track TEXT, size INTEGER NOT NULL, mime TEXT, kind TEXT,
    mark INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, file TEXT,
    hold INTEGER NOT NULL DEFAULT 0, hold_by TEXT, hold_reason TEXT, hold_ms INTEGER,
    recorded_ms INTEGER NOT NULL, stored_ms INTEGER, expired_ms INTEGER
);
CREATE INDEX IF NOT EXISTS recordings_device ON recordings (device, start_ms);
CREATE INDEX IF NOT EXISTS recordings_officer ON recordings (officer, start_ms);
"""
TRAIL_HEAD = ("recorded", "uploaded", "verified")


class CustodyError(Exception):
    """An operator asked for something that cannot be done (unknown clip, file gone, export target exists)."""


def track_summary(t: Any) -> dict[str, Any] | None:
    """The manifest's ``x_track`` ``[lat0, lon0, lat1, lon1, fixes]`` (degE7) as named fields, or None."""
    if isinstance(t, list) and len(t) == 5 and all(isinstance(x, int) and not isinstance(x, bool) for x in t):
        return {"lat0": t[0], "lon0": t[1], "lat1": t[2], "lon1": t[3], "fixes": t[4]}
    return None


class Custody:
    def __init__(self, db: sqlite3.Connection, journal: Any, evidence_dir: str | Path,
                 clock: Callable[[], int] = now_ms, retention_days: int = RETENTION_DAYS):
        self.db = db
        self.journal = journal
        self.dir = Path(evidence_dir)
        self.clock = clock
        self.retention_ms = retention_days * DAY_MS
        self.db.executescript(SCHEMA)
        self._own: list[Any] = []

    @classmethod
    def open(cls, data_dir: str | Path, retention_days: int = RETENTION_DAYS) -> Custody:
        """For tools on the gateway host: the gateway's files, a journal guest while the gateway runs."""
        from lookout.gateway.core.journal import Journal

        data = Path(data_dir)
        db_path = data / "clips" / "evidence.db"
        if not db_path.exists():
            raise CustodyError(f"no evidence store at {db_path} (is --data-dir the gateway's data_dir?)")
        db = sqlite3.connect(str(db_path), isolation_level=None, timeout=10)
        db.execute("PRAGMA busy_timeout = 10000")
        journal = Journal(data / "journal.db", owner_wait_s=0.2)  # a guest at once while the gateway runs
        c = cls(db, journal, data / "clips" / "evidence", retention_days=retention_days)
        c._own = [journal, db]
        return c

    def close(self) -> None:
        for x in self._own:
            x.close()
        self._own = []

    # -- steps recorded by the gateway ------------------------------------------------------------------------
    def _journal(self, action: str, sha: str, device: str | None, summary: str, operator: str | None = None,
                 ts: int | None = None, **detail: Any) -> Any:
        return self.journal.append("custody", summary, operator=operator, device=device, ts=ts,
                                   detail={"action": action, "sha256": sha, **detail})

    def recorded(self, site: str, device: str, entry: dict[str, Any], officer: str | None, source: str,
                 now: int | None = None) -> bool:
        """The recorder reported a closed recording (catalogue or offer). First report only: True if new."""
        now = self.clock() if now is None else now
        sha = entry["sha256"]
        track = track_summary(entry.get("track"))
        if self.db.execute("SELECT 1 FROM recordings WHERE sha256 = ?", (sha,)).fetchone():
            # a later report (the signed manifest after the catalogue) fills what the first one lacked
            self.db.execute("UPDATE recordings SET track = COALESCE(track, ?), officer = COALESCE(officer, ?), "
                            "end_ms = COALESCE(end_ms, ?) WHERE sha256 = ?",
                            (json.dumps(track) if track else None, officer, entry.get("end"), sha))
            return False
        mark = bool(entry.get("mark"))
        self.db.execute("INSERT INTO recordings (sha256, device, site, officer, clip, start_ms, end_ms, track, size,"
                        " mime, kind, mark, state, hold, recorded_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (sha, device, site, officer, entry["id"], entry.get("start"), entry.get("end"),
                         json.dumps(track) if track else None, entry["size"], entry.get("mime"), entry.get("kind"),
                         int(mark), "recorded", int(mark), now))
        self._journal("recorded", sha, device, f"clip {entry['id']} recorded by {device}"
                      + (f" (officer {officer})" if officer else "") + f": {entry['size']} B, sha256 {sha[:16]}",
                      ts=now, clip=entry["id"], size=entry["size"], start_ms=entry.get("start"),
                      end_ms=entry.get("end"), officer=officer, mark=mark, track=track, source=source)
        if mark:
            self._journal("held", sha, device, f"clip {sha[:16]} held as evidence (marked on the recorder)",
                          ts=now, by=device, reason="marked on the recorder")
        return True

    def stored(self, device: str, sha: str, file: str, transfer: dict[str, Any], now: int | None = None) -> None:
        """Every byte arrived and the hash matched: ``uploaded`` then ``verified``; the clip is now visible."""
        now = self.clock() if now is None else now
        self.db.execute("UPDATE recordings SET state = 'stored', file = ?, stored_ms = ? WHERE sha256 = ?",
                        (file, now, sha))
        self._journal("uploaded", sha, device, f"clip {sha[:16]} uploaded from {device}: {transfer.get('size')} B",
                      ts=now, **transfer)
        self._journal("verified", sha, device, f"clip {sha[:16]} verified: SHA-256 matches the recorder's, filed "
                      f"read-only as {file}", ts=now, by="gateway", file=file, ok=True)

    def duplicate(self, device: str, sha: str, clip: str, now: int | None = None) -> None:
        self._journal("duplicate", sha, device, f"clip {sha[:16]} offered again by {device}: already stored",
                      ts=now, clip=clip)

    # -- queries ----------------------------------------------------------------------------------------------
    def get(self, sha: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM recordings WHERE sha256 = ?", (sha,))
        row = cur.fetchone()
        if row is None:
            return None
        d = dict(zip([c[0] for c in cur.description], row))
        d["track"] = json.loads(d["track"]) if d["track"] else None
        d["mark"], d["hold"] = bool(d["mark"]), bool(d["hold"])
        return d

    def resolve(self, ref: str) -> str:
        """A full SHA-256 or a unique prefix of at least 8 hex digits -> the SHA-256."""
        ref = ref.lower().removeprefix("sha256:")
        if len(ref) < 8 or any(c not in "0123456789abcdef" for c in ref):
            raise CustodyError(f"{ref!r}: give the clip's SHA-256 or at least its first 8 hex digits")
        rows = self.db.execute("SELECT sha256 FROM recordings WHERE sha256 LIKE ? LIMIT 2", (ref + "%",)).fetchall()
        if not rows:
            raise CustodyError(f"no recorder clip {ref}")
        if len(rows) > 1:
            raise CustodyError(f"{ref} matches more than one clip; give more digits")
        return str(rows[0][0])

    def find(self, device: str | None = None, officer: str | None = None, state: str | None = "stored",
             since_ms: int | None = None, until_ms: int | None = None, held: bool | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        cond, args = [], []
        for col, v in (("device = ?", device), ("officer = ?", officer), ("state = ?", state),
                       ("start_ms >= ?", since_ms), ("start_ms < ?", until_ms)):
            if v is not None:
                cond.append(col)
                args.append(v)
        if held is not None:
            cond.append("hold = ?")
            args.append(int(held))
        q = "SELECT sha256 FROM recordings" + (" WHERE " + " AND ".join(cond) if cond else "")
        q += " ORDER BY start_ms DESC, sha256 LIMIT ?"
        args.append(limit)
        return [r for r in (self.get(s) for (s,) in self.db.execute(q, args).fetchall()) if r]

    def path(self, sha: str) -> Path:
        r = self.get(sha)
        if r is None:
            raise CustodyError(f"no recorder clip {sha}")
        if r["state"] != "stored" or not r["file"]:
            raise CustodyError(f"clip {sha[:16]} is {r['state']}: no stored file")
        return self.dir / r["file"]

    def trail(self, sha: str) -> list[dict[str, Any]]:
        """The clip's custody entries from the journal, oldest first (chained ones: seq > 0)."""
        out = []
        for e in self.journal.entries(kind="custody"):
            d = json.loads(e.detail)
            if d.get("sha256") == sha:
                out.append({"seq": e.seq, "ts": e.ts, "operator": e.operator, "device": e.device,
                            "summary": e.summary, "hash": e.hash, **d})
        return out

    # -- operator actions (journaled) -------------------------------------------------------------------------
    def accessed(self, sha: str, who: str, what: str = "show") -> dict[str, Any]:
        r = self.get(sha)
        if r is None:
            raise CustodyError(f"no recorder clip {sha}")
        self._journal("accessed", sha, r["device"], f"clip {sha[:16]} accessed by {who} ({what})", operator=who,
                      what=what)
        return r

    def _hash_file(self, p: Path, progress: Callable[[int], None] | None) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while True:
                b = f.read(BLOCK)
                if not b:
                    break
                h.update(b)
                if progress:
                    progress(len(b))
        return h.hexdigest()

    def verify(self, sha: str, who: str, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Re-hash the stored bytes, check the journal chain and the clip's trail; journal the outcome."""
        r = self.get(sha)
        if r is None:
            raise CustodyError(f"no recorder clip {sha}")
        problems = []
        got = None
        if r["state"] == "stored" and r["file"]:
            try:
                got = self._hash_file(self.dir / r["file"], progress)
            except OSError as e:
                problems.append(f"file {r['file']} unreadable: {e.strerror}")
            if got is not None and got != sha:
                problems.append(f"file hashes to {got}, expected {sha}")
        else:
            problems.append(f"clip is {r['state']}: no stored file to hash")
        chain = self.journal.verify()
        if not chain.ok:
            problems.append(f"duty journal chain broken at seq {chain.bad_seq}: {chain.reason}")
        steps = [t["action"] for t in self.trail(sha)]
        head = [a for a in steps if a in TRAIL_HEAD]
        if head[:3] != list(TRAIL_HEAD):
            problems.append(f"custody trail starts {head[:3]}, expected {list(TRAIL_HEAD)}")
        ok = not problems
        self._journal("verified", sha, r["device"], f"clip {sha[:16]} re-verified by {who}: "
                      + ("ok" if ok else "FAILED: " + "; ".join(problems))[:300], operator=who, by=who, ok=ok,
                      problems=problems, journal_entries=chain.entries)
        return {"sha256": sha, "ok": ok, "problems": problems, "file_sha256": got, "trail": steps,
                "journal_ok": chain.ok, "journal_entries": chain.entries}

    def export(self, sha: str, dest: str | Path, who: str, progress: Callable[[int], None] | None = None
               ) -> dict[str, Any]:
        """Copy the clip to ``dest`` (a new file, or into a directory) and check the copy's hash."""
        src = self.path(sha)
        r = self.get(sha)
        assert r is not None
        d = Path(dest)
        if d.is_dir():
            d = d / f"{r['device']}_{r['clip']}_{sha[:16]}{src.suffix}"
        h = hashlib.sha256()
        try:
            fd = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            raise CustodyError(f"{d} exists; exports never overwrite") from None
        with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
            while True:
                b = f.read(BLOCK)
                if not b:
                    break
                out.write(b)
                h.update(b)
                if progress:
                    progress(len(b))
            out.flush()
            os.fsync(out.fileno())
        ok = h.hexdigest() == sha
        self._journal("exported", sha, r["device"], f"clip {sha[:16]} exported by {who} to {d}"
                      + ("" if ok else " (COPY HASH MISMATCH)"), operator=who, to=str(d), ok=ok,
                      size=r["size"])
        if not ok:
            raise CustodyError(f"the copy at {d} hashes to {h.hexdigest()}, not {sha}")
        return {"sha256": sha, "path": str(d), "size": r["size"], "ok": ok}

    def hold(self, sha: str, who: str, reason: str) -> bool:
        r = self.get(sha)
        if r is None:
            raise CustodyError(f"no recorder clip {sha}")
        if r["hold"]:
            return False
        self.db.execute("UPDATE recordings SET hold = 1, hold_by = ?, hold_reason = ?, hold_ms = ? WHERE sha256 = ?",
                        (who, reason, self.clock(), sha))
        self._journal("held", sha, r["device"], f"clip {sha[:16]} held as evidence by {who}: {reason}"[:300],
                      operator=who, by=who, reason=reason)
        return True

    def release(self, sha: str, who: str, reason: str) -> bool:
        r = self.get(sha)
        if r is None:
            raise CustodyError(f"no recorder clip {sha}")
        if not r["hold"]:
            return False
        self.db.execute("UPDATE recordings SET hold = 0, hold_by = ?, hold_reason = ?, hold_ms = ? WHERE sha256 = ?",
                        (who, reason, self.clock(), sha))
        self._journal("released", sha, r["device"], f"clip {sha[:16]} released by {who}: {reason}"[:300],
                      operator=who, by=who, reason=reason)
        return True

    # -- retention (the gateway) ------------------------------------------------------------------------------
    def sweep(self, now: int | None = None) -> list[str]:
        """Remove the bytes of stored clips older than the retention period and not held; journal each."""
        now = self.clock() if now is None else now
        cutoff = now - self.retention_ms
        rows = self.db.execute("SELECT sha256, file, device FROM recordings WHERE state = 'stored' AND hold = 0 "
                               "AND COALESCE(end_ms, recorded_ms) < ?", (cutoff,)).fetchall()
        out = []
        for sha, file, device in rows:
            p = self.dir / file if file else None
            if p is not None:
                try:
                    os.chmod(p, 0o600)
                    p.unlink()
                except FileNotFoundError:
                    pass
            self.db.execute("UPDATE recordings SET state = 'expired', expired_ms = ? WHERE sha256 = ?", (now, sha))
            self._journal("expired", sha, device, f"clip {sha[:16]} removed after the {self.retention_ms // DAY_MS}"
                          "-day retention period (not held)", ts=now, file=file,
                          retention_days=self.retention_ms // DAY_MS)
            out.append(sha)
        return out


__all__ = ["RETENTION_DAYS", "Custody", "CustodyError", "track_summary"]

"""gateway/core/walstore: every store opens SQLite the same way, and two processes opening a new file at once
both get in (the race behind a CI failure of test_accountability's two-CLI test)."""

from __future__ import annotations

import sqlite3
import threading

from lookout.gateway.core import walstore


def test_wal_switch_waits_for_a_writer_instead_of_failing(tmp_path):
    """SQLite does not run the busy handler for ``PRAGMA journal_mode=WAL`` while another connection holds a
    write lock on a file still in rollback mode: it raises "database is locked" at once. A second process
    creating the same store at the same moment hit exactly that; ``connect`` must wait like any other write."""
    path = tmp_path / "store.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    released = threading.Event()

    def release() -> None:
        released.wait(5)
        other.execute("COMMIT")

    th = threading.Thread(target=release)
    th.start()
    try:
        threading.Timer(0.2, released.set).start()
        db = walstore.connect(path, busy_timeout_ms=5000)
    finally:
        released.set()
        th.join()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    db.close()
    other.close()


def test_wal_switch_still_fails_past_the_busy_timeout(tmp_path):
    path = tmp_path / "store.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    try:
        walstore.connect(path, busy_timeout_ms=100)
    except sqlite3.OperationalError as e:
        assert "locked" in str(e)
    else:
        raise AssertionError("connect() succeeded while another connection held the lock past the timeout")
    finally:
        other.execute("ROLLBACK")
        other.close()

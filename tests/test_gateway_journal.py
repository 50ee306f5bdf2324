"""Duty journal: hash chain, tamper detection by editing the SQLite file directly, export."""

from __future__ import annotations

import csv
import io
import itertools
import json
import sqlite3

from gateway.journal import GENESIS, Journal, entry_hash

T0 = 1_800_000_000_000


def filled(tmp_path, n=5):
    j = Journal(tmp_path / "journal.db")
    for i in range(n):
        j.append("command", f"play -> spk-0{i}", operator="op-1", device=f"spk-0{i}", ts=T0 + i * 1000,
                 detail={"clip": "nofish", "i": i})
    return j


def test_chain_links_and_verifies(tmp_path):
    j = filled(tmp_path)
    es = j.entries()
    assert es[0].prev_hash == GENESIS and all(b.prev_hash == a.hash for a, b in itertools.pairwise(es))
    assert es[0].hash == entry_hash(GENESIS, 1, T0, "op-1", "command", "spk-00", "play -> spk-00",
                                    '{"clip":"nofish","i":0}')
    v = j.verify()
    assert v.ok and v.entries == 5 and v.head == es[-1].hash
    j.close()
    j2 = Journal(tmp_path / "journal.db")  # reopening continues the chain
    e = j2.append("system", "restart", ts=T0 + 9000)
    assert e.seq == 6 and e.prev_hash == es[-1].hash and j2.verify().ok


def test_update_and_delete_refused_by_triggers(tmp_path):
    filled(tmp_path).close()
    db = sqlite3.connect(tmp_path / "journal.db")
    for sql in ("UPDATE journal SET summary = 'x' WHERE seq = 2", "DELETE FROM journal WHERE seq = 2"):
        try:
            db.execute(sql)
            raise AssertionError("trigger did not fire")
        except sqlite3.IntegrityError as e:
            assert "append-only" in str(e)


def tamper(tmp_path, sql):
    db = sqlite3.connect(tmp_path / "journal.db")
    db.execute("DROP TRIGGER journal_no_update")
    db.execute("DROP TRIGGER journal_no_delete")
    db.execute(sql)
    db.commit()
    db.close()
    return Journal(tmp_path / "journal.db").verify()


def test_verify_finds_edited_row(tmp_path):
    filled(tmp_path).close()
    v = tamper(tmp_path, "UPDATE journal SET operator = 'op-2' WHERE seq = 3")
    assert not v.ok and v.bad_seq == 3 and "edited" in v.reason


def test_verify_finds_edited_detail_with_rehash_of_that_row(tmp_path):
    filled(tmp_path).close()
    # an editor who recomputes the edited row's own hash still breaks the next row's link
    db = sqlite3.connect(tmp_path / "journal.db")
    prev, = db.execute("SELECT prev_hash FROM journal WHERE seq = 2").fetchone()
    db.close()
    h = entry_hash(prev, 2, T0 + 1000, "op-1", "command", "spk-01", "nothing happened", '{"clip":"nofish","i":1}')
    v = tamper(tmp_path, f"UPDATE journal SET summary = 'nothing happened', hash = '{h}' WHERE seq = 2")
    assert not v.ok and v.bad_seq == 3 and "prev_hash" in v.reason


def test_verify_finds_deleted_row(tmp_path):
    filled(tmp_path).close()
    v = tamper(tmp_path, "DELETE FROM journal WHERE seq = 2")
    assert not v.ok and v.bad_seq == 3 and "deleted" in v.reason


def test_export_between_times(tmp_path):
    j = filled(tmp_path)
    d = json.loads(j.export("json", T0 + 1000, T0 + 3000))
    assert [e["seq"] for e in d["entries"]] == [2, 3] and d["head_hash"] == j.head()[1]
    assert d["entries"][0]["detail"] == {"clip": "nofish", "i": 1}
    rows = list(csv.reader(io.StringIO(j.export("csv", T0, None))))
    assert rows[0][:3] == ["seq", "ts", "operator"] and len(rows) == 6

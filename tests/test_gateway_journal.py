"""Duty journal: hash chain, tamper detection by editing the SQLite file directly, export."""

from __future__ import annotations

import csv
import io
import itertools
import json
import sqlite3

from lookout.gateway.core.journal import GENESIS, Journal, entry_hash

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


def test_entries_filters_combine(tmp_path):
    """Every filter narrows (AND), None is no filter, ``last`` keeps the newest ``limit`` in order."""
    j = filled(tmp_path)
    j.append("state", "spk-02 online -> offline", device="spk-02", ts=T0 + 2500)
    assert [e.seq for e in j.entries(device="spk-02")] == [3, 6]
    assert [e.seq for e in j.entries(device="spk-02", kind="state")] == [6]
    assert [e.seq for e in j.entries(since_ms=T0 + 1000, until_ms=T0 + 3000, kind="command")] == [2, 3]
    assert [e.seq for e in j.entries(since_ms=T0 + 1000, until_ms=T0 + 3000)] == [2, 3, 6]
    assert [e.seq for e in j.entries(kind="command", limit=2, last=True)] == [4, 5]
    assert j.entries(device="spk-09") == []


def test_entry_hash_fast_path_equals_reference():
    import random

    from lookout.gateway.core.journal import _entry_hash_ref, _jsonable, detail_text, dumps
    r = random.Random(7)
    alpha = 'ab"\\\n\t\x00\x1f\x7f é中\u2028{}:,.5e'
    for i in range(3000):
        s = ["".join(r.choice(alpha) for _ in range(r.randint(0, 10))) for _ in range(5)]
        args = (s[0], r.randint(-5, 2 ** 60), r.randint(0, 2 ** 50), None if i % 3 == 0 else s[1], s[2],
                None if i % 5 == 0 else s[3], s[4], s[0] + s[1])
        assert entry_hash(*args) == _entry_hash_ref(*args)
    for d in ({"a": 1.5}, {"a": [1, 2.0]}, {"a": {"b": -1e20}}, {"x": "1:2.5"}, {"a": 1}, {"k": [1, {"z": 0.5}]}):
        assert detail_text(d) == dumps(_jsonable(d))


def test_append_soon_keeps_call_order(tmp_path):
    import asyncio

    async def run():
        j = Journal(tmp_path / "j.db")
        j.append_soon("command", "first", detail={"n": 1})
        j.append("operator", "second")  # chains the deferred entry first
        j.append_soon("result", "third", detail={"n": 3})
        assert j.head()[0] == 3  # head() drains too
        j.append_soon("result", "fourth")
        await asyncio.sleep(0.05)  # DEFER_MAX_S: chained without anyone asking
        assert j._seq == 4
        j.append_soon("result", "fifth")
        j.close()  # close (flush) chains and writes what is still deferred
        j = Journal(tmp_path / "j.db")
        assert [e.summary for e in j.entries()] == ["first", "second", "third", "fourth", "fifth"]
        assert j.verify().ok
        j.close()
    asyncio.run(run())

"""Blocking work stays off the event loop (issue 10 item 12): while a journal read, a verify, a journal page, a
clip listing or the completion of an evidence upload is held up by a slow or locked disk, the operator API still
answers a ``devices`` request.

The journal cases use a real lock on the SQLite file (another writer holding it, as an admin tool can). A slow
disk cannot be produced here, so the file-system cases hold the one call that touches the disk (a WAV read, a
re-hash, an fsync) on a gate the test opens; ``Gate.timed_out`` says the loop itself was stuck on it. The bound
on the answer is generous; speed is measured in bench/."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import struct
import threading
import time

import pytest
from aiowait import until
from gwserve import serving
from test_gateway_commands import make_cfg

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.clips import distribution, store
from lookout.gateway.service.app import Gateway
from lookout.protocols import canonical, cliptransfer, signing

BOUND_S = 2.0
SITE = "dongshan"


class Gate:
    """Holds whoever calls ``wait`` until ``open()`` (or 6 s: then ``timed_out``)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        self.timed_out = False

    def wait(self) -> None:
        self.entered.set()
        if not self._open.wait(6):
            self.timed_out = True

    def open(self) -> None:
        self._open.set()


async def devices_answer_while(gw, started, gate: Gate | None = None) -> float:
    """Seconds until a ``devices`` request was answered while the operation ``started`` (a task) is held up (at
    ``gate`` when given; else on the journal file's lock, which it reaches within a few loop turns)."""
    t0 = time.monotonic()
    if gate is not None:
        await until(gate.entered.is_set, 8, "the operation to reach the slow disk")
    else:
        await asyncio.sleep(0.05)
    r = await gw.handle_op("op-1", "devices", {}, "d1")
    assert r["code"] == "ok"
    assert not started.done()  # still held up: the answer really came while it ran
    return time.monotonic() - t0


def wav(ms: int) -> bytes:
    n = 8 * ms
    return (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8)
            + b"data" + struct.pack("<I", n) + b"\x80" * n)


@pytest.mark.parametrize("op", ["verify", "page"])
def test_journal_read_on_a_locked_file_does_not_stall_the_api(mosquitto, tmp_path, op):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            for i in range(50):
                gw.journal.append("state", f"entry {i}")
            gw.journal.flush()
            blocker = sqlite3.connect(tmp_path / "data" / "journal.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file for a while
            try:
                gw.journal.append("state", "waits for the lock")  # a read must first see this committed
                args = {"verify": op == "verify", "after": 10, "limit": 5}
                task = asyncio.create_task(gw.handle_op("op-1", "journal", args, "j1"))
                took = await devices_answer_while(gw, task)
                st = await gw.handle_op("op-1", "status", {}, "s1")
                assert ("journal_verify" in st["data"]) == (op == "verify")  # a verify shows its progress
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            r = await asyncio.wait_for(task, 15)
            assert took < BOUND_S, took
            if op == "verify":
                assert r["code"] == "ok" and r["data"]["ok"] and r["data"]["entries"] >= 51
            else:
                assert r["code"] == "ok" and [e["seq"] for e in r["data"]["entries"]] == [11, 12, 13, 14, 15]
                assert r["data"]["more"] is True
        ks.close()

    asyncio.run(main())


def test_clip_listing_does_not_stall_the_api_and_hashes_once(mosquitto, tmp_path, monkeypatch):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            for i in range(3):
                gw.clipdist.audio.put(f"warn{i}", wav(200 + i))
            gate, reads = Gate(), []
            real = distribution.check_wav

            def slow(data):  # reading and parsing a WAV from a slow disk
                reads.append(len(data))
                gate.wait()
                return real(data)

            monkeypatch.setattr(distribution, "check_wav", slow)
            task = asyncio.create_task(gw.handle_op("op-1", "clips", {"action": "list"}, "c1"))
            try:
                took = await devices_answer_while(gw, task, gate)
            finally:
                gate.open()
            r = await asyncio.wait_for(task, 10)
            assert not gate.timed_out and took < BOUND_S, took
            assert [c["id"] for c in r["data"]["clips"]] == ["warn0", "warn1", "warn2"]
            assert r["data"]["clips"][1]["sha256"] == hashlib.sha256(wav(201)).hexdigest()
            assert r["data"]["clips"][1]["ms"] == 201
            n = len(reads)
            r = await gw.handle_op("op-1", "clips", {"action": "list"}, "c2")
            assert len(reads) == n and len(r["data"]["clips"]) == 3  # unchanged files: cached, not re-read
        ks.close()

    asyncio.run(main())


@pytest.mark.parametrize("slow_part", ["rehash", "fsync"])
def test_evidence_completion_does_not_stall_the_api(mosquitto, tmp_path, monkeypatch, slow_part):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        key = ks.ensure("cam-01", SITE, "camera").hmac_key
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            data = b"\xff\xd8" + os.urandom(20000)
            s = cliptransfer.ClipSender(data, 1024, "snap-9", 9, "snapshot", "image/jpeg", 0)
            d = s.manifest.to_dict()
            signing.sign(key, "up", d)
            gw.clipstore.on_message(SITE, "cam-01", "9", canonical.dumpb(d))
            for i in range(1, s.manifest.chunks):  # chunk 0 comes last: the running hash is lost, re-hash
                gw.clipstore.on_message(SITE, "cam-01", "9", s.chunk(i))
            gate = Gate()
            if slow_part == "rehash":
                real_read = store.TempSink.read_all

                def slow_read(self, cb, block=65536):
                    gate.wait()
                    return real_read(self, cb, block)

                monkeypatch.setattr(store.TempSink, "read_all", slow_read)
            else:
                real_fsync = os.fsync

                def slow_fsync(fd):
                    gate.wait()
                    return real_fsync(fd)

                monkeypatch.setattr(store.os, "fsync", slow_fsync)

            async def complete():
                gw.clipstore.on_message(SITE, "cam-01", "9", s.chunk(0))
                while gw.clipstore.get(s.manifest.sha256) is None:
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(complete())
            try:
                took = await devices_answer_while(gw, task, gate)
            finally:
                gate.open()
            await asyncio.wait_for(task, 10)
            assert not gate.timed_out and took < BOUND_S, took
            path = tmp_path / "data" / "clips" / "evidence" / f"{s.manifest.sha256}.jpg"
            assert path.read_bytes() == data
            [cust] = gw.journal.entries(kind="custody")
            assert '"action":"stored"' in cust.detail
        ks.close()

    asyncio.run(main())


def test_journal_page_is_a_cursor_and_verify_reports_progress(tmp_path):
    from lookout.gateway.core.journal import Journal

    j = Journal(tmp_path / "journal.db")
    for i in range(25):
        j.append("alert" if i % 2 else "state", f"e{i}", device="sen-1" if i % 3 else "sen-2", ts=1000 + i)
    rows, more = j.page(after=3, limit=5, device="sen-1")
    want = [e for e in j.entries(device="sen-1") if e.seq > 3]
    assert rows == want[:5] and more is True
    rows, more = j.page(after=want[-2].seq, limit=5, device="sen-1")
    assert rows == want[-1:] and more is False
    rows, _ = j.page(after=0, limit=100, since_ms=1010, until_ms=1012)
    assert [e.summary for e in rows] == ["e10", "e11"]
    seen: list[tuple[int, int]] = []
    v = j.verify(progress=lambda done, total: seen.append((done, total)), batch=10)
    assert v.ok and v.entries == 25 and seen == [(10, 25), (20, 25), (25, 25)]
    j.close()

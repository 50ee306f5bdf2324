"""Bounded growth (issue 10 item 13): paho's outbox, the operator requests in progress, and the journal rows
waiting for a failing SQLite each have a bound; what a full one refuses is counted and exposed as a metric."""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading

import paho.mqtt.client as paho
import pytest
from aiowait import aio, until
from gwserve import serving
from test_gateway_commands import make_cfg, node

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.journal import Journal
from lookout.gateway.links.mqtt import MQTTError, MQTTLink
from lookout.gateway.service.app import MAX_OPREQ_PER_OPERATOR, Gateway
from lookout.protocols import opapi

WAIT = 5.0


@aio
async def test_mqtt_outbox_is_bounded(mosquitto):
    async with MQTTLink(mosquitto.url, "t-bound", max_queued=5) as link:
        mosquitto.stop()
        await until(lambda: not link.connected.is_set(), WAIT, "the link to drop")
        mids = [link.publish_nowait("t/q", b"%d" % i, 1) for i in range(5)]  # kept for after the reconnect
        assert all(m > 0 for m in mids) and link.queued() == 5
        assert link.publish_nowait("t/q", b"6", 1) == -1
        with pytest.raises(MQTTError, match="refused: 5 messages already wait"):
            await link.publish("t/q", b"7", 1, timeout=1)
        assert link.dropped == 2 and link.queued() == 5


def test_operator_requests_in_progress_are_bounded(mosquitto, tmp_path):
    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        token = ks.add_operator("op-1", "Duty officer", "operator")
        n = node(mosquitto, ks, behaviour="silent")  # broadcasts wait for a result that never comes
        got: queue.Queue = queue.Queue()
        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="op-1-watch")
        ready = threading.Event()
        sub.on_subscribe = lambda *_a: ready.set()
        sub.on_message = lambda _c, _u, m: got.put(json.loads(m.payload))
        sub.on_connect = lambda c, *_a: c.subscribe("lookout/v1/dongshan/op-1/opres", 1)
        sub.connect(mosquitto.host, mosquitto.port)
        sub.loop_start()
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)
            assert await asyncio.to_thread(ready.wait, WAIT)
            total = MAX_OPREQ_PER_OPERATOR + 4
            for i in range(total):  # a script flooding the gateway with slow requests
                req = {"id": f"r{i}", "op": "broadcast", "token": token,
                       "args": {"to": "spk-01", "clip": "nofish", "wait": "final", "wait_s": 1}}
                sub.publish("lookout/v1/dongshan/op-1/opreq", json.dumps(req), 1)
            codes = [(await asyncio.to_thread(got.get, True, WAIT))["code"] for _ in range(total)]
            assert codes.count("busy") == 4 and codes.count("timeout") == MAX_OPREQ_PER_OPERATOR
            assert gw.metrics.registry.get_sample_value("lookout_queue_refused_total",
                                                        {"queue": "operator_requests"}) == 4
            await until(lambda: gw.metrics.registry.get_sample_value(
                "lookout_queue_depth", {"queue": "operator_requests"}) == 0, WAIT, "the slots freed")
            r = opapi.decode_response(json.dumps({"id": "x", "ok": False, "code": "busy"}).encode())
            assert r["code"] == "busy"  # part of the contract: operator tools decode it
        sub.disconnect()
        sub.loop_stop()
        n.stop()
        ks.close()

    asyncio.run(main())


def test_journal_rows_waiting_for_a_failing_sqlite_are_bounded(tmp_path):
    j = Journal(tmp_path / "journal.db", max_pending=10)
    blocker = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file: the journal's writer cannot commit
    try:
        entries = [j.append("alert", f"event {i}", device="sen-1") for i in range(15)]
        assert [e.seq for e in entries] == list(range(1, 11)) + [0] * 5  # the refused ones never got a seq
        assert j.dropped == 5 and j.pending == 10
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    j.flush()
    rows = j.entries()
    assert [e.summary for e in rows[:10]] == [f"event {i}" for i in range(10)]
    assert rows[10].kind == "system" and json.loads(rows[10].detail)["dropped"] == {"alert": 5}
    assert j.verify().ok and j.pending == 0
    j.close()

"""Operator reads at scale (issue 17, "defects found at scale"): ``devices`` answers in pages and the CLI follows
them, and an answer the client cannot take says so at once instead of timing out.

At ~400 bytes a device, one ``devices`` response passed the 256 KiB response limit at ~640 devices; the client
dropped it without a word and the operator saw "no answer from the gateway within 60 s". Here the limit is lowered
(``opapi.MAX_RESPONSE``) so that a few dozen devices are past it: a real gateway and Mosquitto, the CLI through
``main()``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import paho.mqtt.client as paho
import pytest
from aiowait import aio
from gwserve import serving
from paho.mqtt.enums import CallbackAPIVersion
from test_gateway_commands import make_cfg, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.cli.main import main
from lookout.gateway.links.opclient import OperatorClient, ResponseError
from lookout.gateway.service.app import Gateway
from lookout.protocols import opapi

N = 30
SMALL = 3000  # bytes: the lowered response limit (each device view is ~250-300 bytes here)


def births(gw: Gateway, n: int, prefix: str = "spk-") -> None:
    now = gw.clock()
    for i in range(n):
        dev = f"{prefix}{i:03d}"
        gw.registry.birth(dev, "dongshan", {"online": True, "kind": "speaker", "bdseq": 0, "fw": "1.0",
                                            "hb_s": 30}, now)
        gw.registry.location(dev, "dongshan", {"seq": 1, "ts": now, "lat": 300000000 + i, "lon": 1200000000 + i,
                                               "alt_mm": 0, "src": "gps"}, now)


@pytest.fixture
def operator_env(monkeypatch, tmp_path):
    ks = KeyStore(tmp_path / "ks.db")
    token = ks.add_operator("op-1", "Duty officer", "operator")
    for k, v in {"LOOKOUT_SITE": "dongshan", "LOOKOUT_OPERATOR": "op-1", "LOOKOUT_TOKEN": token}.items():
        monkeypatch.setenv(k, v)
    yield ks, token
    ks.close()


@aio
async def test_devices_and_watch_list_every_device_past_the_response_limit(mosquitto, tmp_path, monkeypatch,
                                                                         capsys, operator_env):
    ks, _token = operator_env
    monkeypatch.setenv("LOOKOUT_BROKER", mosquitto.url)
    monkeypatch.setattr(opapi, "MAX_RESPONSE", SMALL)
    async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
        births(gw, N)
        whole = len(json.dumps([d.id for d in gw.registry.select()]))
        assert whole > 0 and len(gw.registry.devices) == N + 1

        rc = await asyncio.to_thread(main, ["devices", "--json", "--timeout", "5"])
        out = capsys.readouterr().out
        assert rc == 0, out
        doc = json.loads(out)
        ids = [d["id"] for d in doc["data"]["devices"]]
        assert ids == sorted(gw.registry.devices) and len(ids) == N + 1  # every device once, in id order
        assert doc["code"] == "ok" and doc["data"]["more"] is False
        assert len(json.dumps(doc)) > SMALL  # so it really took more than one page

        rc = await asyncio.to_thread(main, ["watch", "--count", "1", "--timeout", "5"])
        out = capsys.readouterr().out
        assert rc == 0 and f"{N + 1} device(s): {N + 1} online" in out, out

        rc = await asyncio.to_thread(main, ["devices", "--state", "online", "--kind", "speaker", "--timeout", "5"])
        out = capsys.readouterr().out
        assert rc == 0 and f"{N} device(s): {N} online" in out, out
        # the listing is journaled once per reading, not once per page
        listed = [e for e in gw.journal.entries() if e.kind == "operator" and "listed devices" in e.summary]
        assert len(listed) == 3


@aio
async def test_devices_pages_are_bounded_and_a_cursor_sees_each_device_once(mosquitto, tmp_path, monkeypatch):
    monkeypatch.setattr(opapi, "MAX_RESPONSE", SMALL)
    async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=KeyStore(tmp_path / "ks.db"))) as gw:
        births(gw, N)
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            a = {"limit": 7} if after is None else {"limit": 7, "after": after}
            r = await gw.handle_op("op-1", "devices", opapi.validate_args("devices", a))
            assert r["code"] == "ok"
            assert len(opapi.encode_response(r)) <= SMALL  # every page fits the limit
            page = r["data"]["devices"]
            assert 1 <= len(page) <= 7
            seen += [d["id"] for d in page]
            pages += 1
            if pages == 2:  # devices added while a reading is under way: ahead of the cursor they are seen
                births(gw, 2, prefix="zz-")
            if not r["data"]["more"]:
                assert r["data"]["next"] is None
                break
            assert r["data"]["next"] == page[-1]["id"]
            after = r["data"]["next"]
        assert seen == sorted(gw.registry.devices) and len(seen) == N + 3
        assert pages >= (N + 3) // 7
        # the byte budget cuts a page before its limit
        r = await gw.handle_op("op-1", "devices", opapi.validate_args("devices", {"limit": 5000}))
        assert r["data"]["more"] is True and 1 < len(r["data"]["devices"]) < N
        assert len(opapi.encode_response(r)) <= SMALL


@aio
async def test_an_answer_over_the_limit_fails_at_once_and_says_why(mosquitto, operator_env):
    """A response the client cannot take (here: a stand-in gateway answering with more than MAX_RESPONSE bytes)
    fails the request at once with the reason, instead of leaving it to time out."""
    _ks, token = operator_env
    big = json.dumps({"id": None, "ok": True, "code": "ok", "data": {"pad": "x" * (opapi.MAX_RESPONSE + 10)}})
    answered = threading.Event()
    fake = paho.Client(CallbackAPIVersion.VERSION2, client_id="fake-gw")

    def on_message(c, u, m):  # noqa: ANN001 - paho's callback
        rid = json.loads(m.payload)["id"]
        c.publish("lookout/v1/dongshan/op-1/opres", big.replace('"id": null', json.dumps({"id": rid})[1:-1]), 1)
        answered.set()

    fake.on_message = on_message
    fake.on_connect = lambda c, u, f, rc, p: c.subscribe("lookout/v1/dongshan/op-1/opreq", 1)
    fake.connect(mosquitto.host, mosquitto.port)
    fake.loop_start()
    try:
        async with OperatorClient(mosquitto.url, "dongshan", "op-1", token) as cl:
            await until(lambda: fake.is_connected(), 5)
            await asyncio.sleep(0.2)  # the stand-in's subscription
            t = time.monotonic()
            with pytest.raises(ResponseError, match=f"limit {opapi.MAX_RESPONSE}"):
                await cl.request("status", {}, timeout=20)
            assert answered.is_set() and time.monotonic() - t < 10  # not the 20 s time-out
    finally:
        fake.loop_stop()
        fake.disconnect()


@aio
async def test_journal_pages_fit_the_limit_and_an_oversized_answer_says_so(mosquitto, tmp_path, monkeypatch, capsys,
                                                                         operator_env):
    """Journal pages are cut to the response limit too (the CLI asks for 1000 entries a page; real entries are
    300-500 bytes); and the gateway never sends more than the limit: an answer that cannot be cut (one entry
    bigger than the limit) is replaced by an ``internal`` response that says so, which the CLI shows."""
    ks, _token = operator_env
    monkeypatch.setenv("LOOKOUT_BROKER", mosquitto.url)
    async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
        for i in range(40):
            gw.journal.append("system", f"entry {i} " + "x" * 200)
        monkeypatch.setattr(opapi, "MAX_RESPONSE", SMALL)
        rc = await asyncio.to_thread(main, ["journal", "--json", "--timeout", "5", "--last", "0"])
        out, err = capsys.readouterr()
        assert rc == 0, (out, err)
        got = [e["summary"] for e in json.loads(out)["data"]["entries"]]
        assert [s for s in got if s.startswith("entry ")] == [f"entry {i} " + "x" * 200 for i in range(40)]

        gw.journal.append("system", "huge " + "y" * SMALL)
        rc = await asyncio.to_thread(main, ["journal", "--json", "--timeout", "5", "--last", "0"])
        out, err = capsys.readouterr()
        doc = json.loads(out)
        assert rc == 1 and doc["code"] == "internal" and f"limit {SMALL}" in doc["error"], (out, err)

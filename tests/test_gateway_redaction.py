"""Secrets in command arguments (set_config's WiFi/broker passwords and key, rotate_key's wrapped key) never
reach the duty journal, the logs or a final command's stored row: redacted by schema (gateway/core/redact.py)
before anything is written, while the node still receives them in the signed command."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time

from aiowait import until
from gwserve import serving
from test_gateway_commands import make_cfg, node

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core import redact
from lookout.gateway.service.app import Gateway
from lookout.protocols import messages, signing

WIFI = "wifi-Pa55-9f3k2"
BROKER = "mqtt-Pa55-7x1q"
WRAPPED = "5e" * 32


def test_secrets_are_redacted_from_journal_logs_and_stored_commands(mosquitto, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    patch = json.dumps({"wifi": {"ssid": "dam-3", "password": WIFI}, "broker": {"password": BROKER,
                                                                                "host": "10.0.0.9"}})

    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks, "spk-01")
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)
            delivery = {"priority": 1, "queue": True, "wait": "final"}
            r = await gw.handle_op("op-1", "command", {"to": "spk-01", "name": "set_config",
                                                       "args": {"patch": patch, "hb_s": 60}, **delivery}, "r1")
            assert r["code"] == "ok", r
            assert n.received[-1]["args"]["patch"] == patch  # the node gets the secret, signed
            r = await gw.handle_op("op-1", "command", {"to": "spk-01", "name": "rotate_key",
                                                       "args": {"key": WRAPPED, "ctr": 1}, **delivery}, "r2")
            assert r["code"] == "ok", r
            r = await gw.handle_op("op-1", "command", {"to": "north", "name": "set_config",  # spk-02 has no key
                                                       "args": {"patch": patch}, **delivery}, "r3")
            assert r["code"] == "unknown_device"
            # a node that echoes a secret in its result text (a validator quoting the bad value)
            n.behaviour = "silent"
            c = await gw.commands.issue("spk-01", "set_config", {"patch": patch}, op="op-1")
            await until(lambda: any(m["id"] == c.id for m in n.received))
            res = signing.sign(n.key, "res", messages.result(c.id, "rejected", ts=int(time.time() * 1000),
                                                             code="bad_config",
                                                             detail=f"wifi.password: {WIFI!r} too short"))
            gw._on_message(f"lookout/v1/dongshan/spk-01/res", messages.encode("res", res), False)
            assert gw.commands.get(c.id).status == "rejected"
            gw.journal.flush()
            export = gw.journal.export("json")
            details = [json.loads(e.detail) for e in gw.journal.entries()]
            gw.commands.flush()
        n.stop()
        ks.close()
        return export, details

    export, details = asyncio.run(main())
    assert redact.REDACTED in export  # the entries are there, with the secrets taken out
    assert any(d.get("args", {}).get("key") == redact.REDACTED for d in details if d.get("name") == "rotate_key")
    data = tmp_path / "data"
    stored = b"".join(p.read_bytes() for p in data.glob("journal.db*"))
    docs = [json.loads(d) for (d,) in sqlite3.connect(data / "commands.db").execute("SELECT doc FROM commands")]
    assert all(d["wire"] is None for d in docs) and len(docs) == 3  # final: the signed bytes are not kept
    for secret in (WIFI, BROKER, WRAPPED):
        assert secret not in export
        assert secret.encode() not in stored
        assert secret not in caplog.text
        assert secret not in json.dumps(docs)


def test_redaction_follows_the_schema():
    patch = json.dumps({"wifi": {"ssid": "dam-3", "password": WIFI}, "hb_s": 60, "key": "ab" * 32})
    out = redact.command_args("set_config", {"patch": patch, "hb_s": 60, "key": "cd" * 32})
    assert out["hb_s"] == 60 and out["key"] == redact.REDACTED
    assert json.loads(out["patch"]) == {"wifi": {"ssid": "dam-3", "password": redact.REDACTED}, "hb_s": 60,
                                        "key": redact.REDACTED}
    assert redact.command_args("set_config", {"patch": "{not json " + WIFI})["patch"] == redact.REDACTED
    assert redact.command_args("set_config", {"wifi": WIFI})["wifi"] == redact.REDACTED  # not an object: all of it
    assert redact.command_args("play", {"clip": "nofish", "key": "x"}) == {"clip": "nofish", "key": "x"}
    assert redact.command_args("rotate_key", {"key": WRAPPED, "ctr": 5}) == {"key": redact.REDACTED, "ctr": 5}
    assert redact.scrub(f"bad value {WIFI!r}", redact.secret_values("set_config", {"patch": patch})) \
        == f"bad value '{redact.REDACTED}'"

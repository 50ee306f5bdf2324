"""Every ``--json`` prints exactly one JSON document on stdout, the one docs/PROTOCOL.md §17 describes (issue 11,
item 10): the gateway's response object for operator commands (also when it refuses), an error document of the
same shape for a failure before any answer, and the documented shapes of the admin commands.

A real gateway (in this process) and Mosquitto, a paho node for spk-01, the CLI through ``main()``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiowait import aio
from broker import free_port
from gwserve import serving
from test_gateway_commands import make_cfg, node, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.cli.main import main
from lookout.gateway.service.app import Gateway
from lookout.simulators.node import wav_bytes

RESPONSE_KEYS = {"id", "ok", "code"}


def one_document(out: str, one_line: bool = True) -> Any:
    """stdout holds exactly one JSON document (json.loads refuses anything after it), on one line for --json."""
    assert out.endswith("\n") and (out.count("\n") == 1 or not one_line), out
    return json.loads(out)


def response(out: str, code: str) -> dict[str, Any]:
    doc = one_document(out)
    assert isinstance(doc, dict) and RESPONSE_KEYS <= set(doc), doc
    assert doc["code"] == code and doc["ok"] is (code in ("ok", "queued")), doc
    assert set(doc) <= RESPONSE_KEYS | {"data", "error"}, doc
    return doc


@aio
async def test_every_operator_json_is_one_documented_document(mosquitto, tmp_path, monkeypatch, capsys):
    ks = KeyStore(tmp_path / "ks.db")
    token = ks.add_operator("op-1", "Duty officer", "operator")
    ks.ensure("spk-02", "dongshan", "speaker")  # provisioned, never online
    fake = node(mosquitto, ks).start()
    wav = tmp_path / "warn.wav"
    wav.write_bytes(wav_bytes(200))
    for k, v in {"LOOKOUT_BROKER": mosquitto.url, "LOOKOUT_SITE": "dongshan", "LOOKOUT_OPERATOR": "op-1",
                 "LOOKOUT_TOKEN": token}.items():
        monkeypatch.setenv(k, v)

    async def run(*argv: str) -> tuple[int, str]:
        rc = await asyncio.to_thread(main, [*argv, "--json", "--timeout", "8"])
        out, _err = capsys.readouterr()
        return rc, out

    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online", 10)
            rc, out = await run("devices")
            d = response(out, "ok")["data"]["devices"]
            assert rc == 0 and {"spk-01", "gw-1"} <= {x["id"] for x in d}
            assert all({"id", "site", "kind", "state", "reason", "gaps", "transport"} <= set(x) for x in d)

            rc, out = await run("locate", "spk-01")
            assert rc == 1 and response(out, "ok")["data"]["loc"] is None  # no fix yet: exit 1, as in text
            rc, out = await run("locate", "nope")
            assert rc == 2 and response(out, "unknown_device")["error"]

            rc, out = await run("broadcast", "--to", "spk-01", "--clip", "nofish")
            r = response(out, "ok")["data"]["results"]
            assert rc == 0 and r[0]["device"] == "spk-01" and r[0]["status"] == "done"
            rc, out = await run("stop", "--to", "spk-02", "--no-queue")
            assert rc == 3 and response(out, "offline")["data"]["results"][0]["status"] == "refused"
            rc, out = await run("command", "spk-01", "ping")
            assert rc == 0 and response(out, "ok")
            rc, out = await run("command", "nope", "ping")
            assert rc == 2 and response(out, "unknown_device")

            rc, out = await run("journal", "--last", "3")
            j = response(out, "ok")["data"]
            assert rc == 0 and len(j["entries"]) == 3 and j["more"] is False and j["head_seq"] >= 3
            assert {"seq", "ts", "kind", "summary", "hash", "prev_hash"} <= set(j["entries"][0])
            rc, out = await run("journal", "--verify")
            assert rc == 0 and response(out, "ok")["data"]["ok"] is True
            rc, out = await run("journal", "--export")
            assert rc == 2 and response(out, "bad_request")["id"] is None

            rc, out = await run("clips", "upload", str(wav), "--id", "warn")
            assert rc == 0 and response(out, "ok")
            rc, out = await run("clips", "upload", str(wav), "--id", "warn", "--to", "spk-02", "--no-queue")
            assert rc == 3 and response(out, "offline")
            rc, out = await run("clips", "list")
            assert rc == 0 and [c["id"] for c in response(out, "ok")["data"]["clips"]] == ["warn"]
            rc, out = await run("clips", "evidence")
            assert rc == 0 and response(out, "ok")["data"]["evidence"] == []

            # refused by the gateway (wrong token behind an anonymous broker), and failures before any answer
            rc, out = await run("devices", "--token", "wrong")
            assert rc == 2 and response(out, "unauthorized")
            rc, out = await run("devices", "--broker", f"mqtt://127.0.0.1:{free_port()}")
            assert rc == 2 and response(out, "unreachable")["id"] is None
            rc, out = await run("broadcast", "--to", "spk-01", "--clip", "nofish", "--volume", "300")
            assert rc == 2 and "args.volume" in response(out, "bad_request")["error"]
    finally:
        fake.stop()
        ks.close()


def test_admin_json_documents(tmp_path, capsys):
    d = ["--data-dir", str(tmp_path / "data")]
    assert main(["pki", "init", "--site", "dongshan", *d]) == 0
    assert main(["provision", "gateway", "--id", "gw-1", "--site", "dongshan", *d]) == 0
    assert main(["provision", "operator", "--id", "op-1", "--name", "Duty", *d]) == 0
    capsys.readouterr()
    assert main(["provision", "list", "--json", *d]) == 0
    rows = one_document(capsys.readouterr().out)
    assert isinstance(rows, list) and {r["id"] for r in rows} == {"gw-1", "op-1"}
    assert all({"id", "kind", "broker_login"} <= set(r) for r in rows)
    assert main(["pki", "show", *d]) == 0
    show = one_document(capsys.readouterr().out, one_line=False)  # always JSON, indented for people
    assert set(show) == {"ca"} and show["ca"]["subject"]
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "gw-1"\nsite = "dongshan"\ndata_dir = "{tmp_path / "data"}"\n'
                    f'[broker]\nurl = "mqtt://127.0.0.1:{free_port()}"\n')
    assert main(["rotate-key", "spk-09", "--config", str(conf), "--json"]) == 2  # not a node: refused
    doc = one_document(capsys.readouterr().out)
    assert doc["device"] == "spk-09" and doc["status"] == "refused" and doc["code"] == "unknown_device"

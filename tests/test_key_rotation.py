"""Key rotation end to end: gateway/rotation.py (and `lookout rotate-key`) against the real node firmware
(SimNode) through a real Mosquitto; plus the commit rules of ``rotation.judge`` on crafted answers."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiowait import aio

from lookout.gateway.admin import rotation
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.cli.main import main as cli_main
from lookout.gateway.links.mqtt import MQTTLink
from lookout.protocols import messages, signing
from lookout.simulators.node import SimNode, make_config

OLD = bytes(range(32))


def _res(key, cid, status, code=None):
    m = messages.result(cid, status, ts=int(time.time() * 1000), code=code)
    return signing.sign(key, "res", m)


@pytest.fixture
def ks(tmp_path):
    k = KeyStore(tmp_path / "keystore.db")
    k.create("spk-01", "dongshan", "speaker", key=OLD)
    yield k
    k.close()


def test_judge_commit_rules(ks):
    cmd = rotation.rotation_command(ks, "spk-01")
    new = ks.pending_key("spk-01")
    assert cmd["args"]["key"] != new.hex() and signing.unwrap_key(OLD, cmd["args"]["key"], cmd["ctr"]) == new
    signing.verify(OLD, "cmd", cmd)
    cid = cmd["id"]
    assert rotation.judge(ks, "spk-01", cid, _res(OLD, cid, "accepted")) is None
    assert rotation.judge(ks, "spk-01", cid, _res(bytes(32), cid, "done")) is None  # forged: ignored
    assert rotation.judge(ks, "spk-01", cid, _res(OLD, "other", "done")) is None  # another command
    out = rotation.judge(ks, "spk-01", cid, _res(OLD, cid, "rejected", "busy"))
    assert (out.status, out.code) == ("refused", "busy") and ks.get("spk-01").hmac_key == OLD
    assert ks.pending_key("spk-01") == new  # a retry sends the same new key
    cmd2 = rotation.rotation_command(ks, "spk-01")
    assert cmd2["ctr"] > cmd["ctr"] and cmd2["args"]["key"] != cmd["args"]["key"]  # fresh pad per counter
    out = rotation.judge(ks, "spk-01", cmd2["id"], _res(new, cmd2["id"], "rejected", "bad_mac"))
    assert (out.status, out.via) == ("committed", "new_key")  # the node had already switched
    assert ks.get("spk-01").hmac_key == new and ks.pending_key("spk-01") is None


def test_judge_done_under_old_key_commits_and_probe(ks):
    cmd = rotation.rotation_command(ks, "spk-01")
    new = ks.pending_key("spk-01")
    probe = rotation.probe_command(ks, "spk-01")
    signing.verify(new, "cmd", probe)
    out = rotation.judge(ks, "spk-01", cmd["id"], _res(OLD, probe["id"], "rejected", "bad_mac"), probe["id"])
    assert out.status == "refused" and ks.get("spk-01").hmac_key == OLD
    out = rotation.judge(ks, "spk-01", cmd["id"], _res(OLD, cmd["id"], "done"))
    assert (out.status, out.via) == ("committed", "done") and ks.get("spk-01").hmac_key == new


@pytest.mark.mosquitto
@aio
async def test_rotation_through_mosquitto_and_cli(tmp_path, mosquitto, ks):
    node = SimNode(tmp_path / "node", make_config("spk-01", "dongshan", "speaker", OLD.hex(), mosquitto.host,
                                                  mosquitto.port))
    await node.start()
    try:
        await node.wait_online()
        async with MQTTLink(mosquitto.url, "gw-rot-test") as link:
            out = await rotation.rotate_over_mqtt(link, ks, "spk-01", timeout=5)
            assert (out.status, out.via) == ("committed", "done"), out
            new = ks.get("spk-01").hmac_key
            assert new != OLD and node.node.key == new
            assert json.loads((tmp_path / "node" / "config.json").read_text())["key"] == new.hex()

            # a command from the gateway's normal path now verifies on the node; the old key is refused
            got: asyncio.Queue = asyncio.Queue()
            link.subscribe("lookout/v1/dongshan/spk-01/res", lambda t, p, r: got.put_nowait(json.loads(p)), 1)
            await link.subscribed(5)
            for cid, key in (("p-new", new), ("p-old", OLD)):
                now = int(time.time() * 1000)
                m = signing.sign(key, "cmd", messages.command(cid, "spk-01", "ping", {}, now, now + 30000, 1,
                                                              ks.next_counter("spk-01")))
                await link.publish("lookout/v1/dongshan/spk-01/cmd", messages.encode("cmd", m), 1)
            finals = {}
            while len(finals) < 2:
                r = await asyncio.wait_for(got.get(), 5)
                if r["status"] != "accepted":
                    signing.verify(new, "res", r)
                    finals[r["id"]] = (r["status"], r.get("code"))
            assert finals == {"p-new": ("done", None), "p-old": ("rejected", "bad_mac")}

        # the CLI, as an admin runs it next to the gateway
        conf = tmp_path / "gateway.toml"
        conf.write_text(f'[gateway]\nid = "gw-1"\nsite = "dongshan"\ndata_dir = "{tmp_path}"\n'
                        f'[broker]\nurl = "{mosquitto.url}"\n')
        rc = await asyncio.to_thread(cli_main, ["rotate-key", "spk-01", "--config", str(conf), "--timeout", "5"])
        assert rc == 0
        with KeyStore(tmp_path / "keystore.db") as ks2:
            newer = ks2.get("spk-01").hmac_key
        assert newer not in (OLD, new) and node.node.key == newer
    finally:
        await node.stop()
    rc = await asyncio.to_thread(cli_main, ["rotate-key", "spk-01", "--config", str(conf), "--timeout", "2"])
    assert rc == 3  # the node's retained death: refused without sending


@pytest.mark.mosquitto
@aio
async def test_rotation_sends_only_after_its_subscription_is_acknowledged(mosquitto, ks):
    """The rotation command goes out only once the broker acknowledged the subscription to the node's results
    (an answer before that would be lost and the key left pending), however slow the SUBACK."""
    async with MQTTLink(mosquitto.url, "gw-rot-suback") as link:
        outstanding: list[bool] = []
        real = link.publish

        async def publish(*a, **kw):
            outstanding.append(bool(link._subacks))  # a SUBSCRIBE still waiting for its SUBACK
            return await real(*a, **kw)

        link.publish = publish  # type: ignore[method-assign]
        mosquitto.proc.send_signal(19)  # SIGSTOP: the SUBACK cannot come yet
        task = asyncio.ensure_future(rotation.rotate_over_mqtt(link, ks, "spk-01", timeout=1))
        try:
            await asyncio.sleep(0.4)  # holds the broker, the rotation must wait (not a guessed wait for a result)
        finally:
            mosquitto.proc.send_signal(18)  # SIGCONT
        out = await asyncio.wait_for(task, 10)
        assert out.status == "unconfirmed"  # no node here
        assert outstanding and not any(outstanding), outstanding

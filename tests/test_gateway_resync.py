"""A node whose command state is unreadable fails closed and the gateway re-synchronises it, end to end: the real
firmware (SimNode) boots with a damaged ``cmdstate.json``, refuses commands, reports ``state_lost`` with its
challenge in the heartbeat; the real Gateway answers with a signed ``resync`` through its command path, and
commands work again with counters above the resync's."""

from __future__ import annotations

import asyncio
import binascii

from gwserve import serving
from test_gateway_commands import make_cfg, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.commands import Command
from lookout.gateway.service.app import Gateway
from lookout.protocols import messages, signing, topics
from lookout.simulators.fakenode import FakeNode
from lookout.simulators.node import SimNode, make_config


def test_lost_command_state_is_resynchronised_by_the_gateway(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        ident = ks.ensure("spk-01", "dongshan", "speaker")
        node = SimNode(tmp_path / "node", make_config("spk-01", "dongshan", "speaker",
                                                       binascii.hexlify(ident.hmac_key).decode(), mosquitto.host,
                                                       mosquitto.port, hb_s=5), speed=20)
        node.add_clip("nofish", ms=300)
        (tmp_path / "node" / "cmdstate.json").write_bytes(b'{"ctr": 17000000000')  # torn by a power cut
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            resyncs: dict[str, Command] = {}
            gw.commands.add_listener(lambda c, old: resyncs.update({c.id: c}) if c.name == "resync" else None)
            await node.start()
            await until(lambda: [c for c in resyncs.values() if c.status == "done"], 10)
            [rs] = resyncs.values()  # sent on the first heartbeat, which said state_lost with the challenge
            assert len(rs.args["nonce"]) == 16 and rs.data == {"ctr": rs.ctr} and rs.op is None
            assert node.node.proc.lost is None and node.node.proc.last_ctr == rs.ctr
            # a broadcast now runs, with a counter above the resync's
            r = await gw.handle_op("op-1", "broadcast", {"to": "spk-01", "clip": "nofish", "repeat": 1,
                                                         "priority": 1, "queue": True, "wait": "final",
                                                         "wait_s": 8}, "r1")
            assert r["code"] == "ok" and r["data"]["results"][0]["status"] == "done", r
            assert node.node.proc.last_ctr > rs.ctr and node.plays
            hb = node.node.heartbeat()
            assert hb["state"] != "state_lost" and "nonce" not in hb
            # the next heartbeat (sent now rather than in hb_s) says so to the gateway; no second resync was sent
            await node.node._pub0("hb", hb)
            await until(lambda: gw.registry.get("spk-01").info.get("state") == "ok", 10)
            assert len(resyncs) == 1
            journaled = [e.summary for e in gw.journal.entries(device="spk-01") if "resync" in e.summary]
            assert journaled[0].startswith("resync -> spk-01") and "done" in journaled[-1], journaled
            await node.stop()
        ks.close()

    asyncio.run(main())


def test_one_resync_at_a_time_and_none_where_commands_cannot_go(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        ident = ks.ensure("spk-01", "dongshan", "speaker")
        ks.ensure("sen-01", "dongshan", "sensor")
        n = FakeNode(mosquitto.host, mosquitto.port, "spk-01", "dongshan", ident.hmac_key, behaviour="silent")
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online")
            gw.registry.touch("sen-01", "dongshan", gw.clock(), kind="sensor", hb_s=30, transport="coap")

            def hb(dev: str, up_s: int, nonce: str | None = "0123456789abcdef") -> None:
                m = {"seq": up_s, "up_s": up_s, "hb_s": 30, "state": "state_lost"}
                if nonce:
                    m["nonce"] = nonce
                assert n._client is not None
                n._client.publish(topics.topic("dongshan", dev, "hb"), messages.encode("hb", m), 1)

            for i in range(1, 4):  # a node that stays silent keeps saying state_lost
                hb("spk-01", i)
            hb("sen-01", 1)  # a CoAP sensor takes no commands
            hb("sen-01", 2, nonce=None)
            await until(lambda: gw.registry.get("spk-01").info.get("up_s") == 3
                        and gw.registry.get("sen-01").info.get("up_s") == 2)
            [c] = gw.commands.active_for("spk-01", "resync")
            assert c.args == {"nonce": "0123456789abcdef"} and c.op is None
            assert gw.commands.active_for("sen-01") == []
            [got] = await asyncio.to_thread(n.wait_commands, 1)
            assert got["name"] == "resync" and got["args"] == {"nonce": "0123456789abcdef"}
            signing.verify(ident.hmac_key, "cmd", got)
        n.stop()
        ks.close()

    asyncio.run(main())

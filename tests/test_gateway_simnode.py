"""End to end with the REAL node firmware (simulators/node.py SimNode): birth, signed broadcast, result, will."""

from __future__ import annotations

import asyncio
import binascii

from gwserve import serving
from test_gateway_commands import make_cfg, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.service.app import Gateway
from lookout.simulators.node import SimNode, make_config


def test_broadcast_to_firmware_node_and_offline_queue(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        ident = ks.ensure("spk-01", "dongshan", "speaker")
        cfg_node = make_config("spk-01", "dongshan", "speaker", binascii.hexlify(ident.hmac_key).decode(),
                               mosquitto.host, mosquitto.port, hb_s=5)
        node = SimNode(tmp_path / "node", cfg_node, speed=20)
        node.add_clip("nofish", ms=500)
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await node.start()
            await node.wait_online()
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online", 10)
            assert gw.registry.get("spk-01").kind == "speaker"
            r = await gw.handle_op("op-1", "broadcast", {"to": "spk-01", "clip": "nofish", "repeat": 1,
                                                         "priority": 1, "queue": True, "wait": "final",
                                                         "wait_s": 8}, "r1")
            assert r["code"] == "ok", r
            assert r["data"]["results"][0]["status"] == "done"
            assert node.plays and gw.commands.forged == 0 and gw.commands.unsigned == 0
            # the node dies (will fires); a broadcast is queued and delivered after it boots again
            await node.kill()
            await until(lambda: gw.registry.get("spk-01").state == "offline", 10)
            r = await gw.handle_op("op-1", "broadcast", {"to": "spk-01", "clip": "nofish", "repeat": 1,
                                                         "priority": 1, "queue": True, "wait": "final"}, "r2")
            assert r["code"] == "queued"
            cid = r["data"]["results"][0]["id"]
            node2 = SimNode(tmp_path / "node", None, speed=20)
            await node2.start()
            [c] = await gw.commands.wait([cid], "final", 10)
            assert c.status == "done", c
            await node2.stop()
            await until(lambda: gw.registry.get("spk-01").state == "offline", 10)
            assert gw.journal.verify().ok
        ks.close()

    asyncio.run(main())

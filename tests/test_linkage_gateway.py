"""Linkage end to end: the real gateway, Mosquitto, the REAL firmware in SimNode speakers and a PIR sensor, and a
phone app (an MQTT client) subscribed to a cadre's notification topic."""

from __future__ import annotations

import asyncio
import binascii
import json
import time

from aiowait import until
from gwserve import serving

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.config import from_dict
from lookout.gateway.links.mqtt import MQTTLink
from lookout.gateway.service.app import Gateway
from lookout.protocols import notify
from lookout.simulators.node import SimNode, make_config

SITE = "dongshan"
SPOTS = {"sen-ferry": ("sensor", 299050000, 1196100000),
         "spk-ferry": ("speaker", 299062000, 1196108000),  # ~155 m from the sensor
         "spk-dam": ("speaker", 299140000, 1196120000)}  # ~1 km: out of range
WARN_WITHIN_S = 5.0  # detection -> speaker playing, on loopback with the nodes at speed 20


def gateway_cfg(tmp_path, url, after_s=2):
    return from_dict({
        "gateway": {"id": "gw-1", "site": SITE, "data_dir": str(tmp_path / "data")},
        "broker": {"url": url},
        "registry": {"min_hb_s": 1},
        "commands": {"retry_s": 1, "max_attempts": 3, "wait_s": 5},
        "zones": {"ferry": ["sen-ferry"]},
        "linkage": {
            "contact": [{"id": "cadre-wang", "name": "王建国", "lat": 29.9071, "lon": 119.6122}],
            "rule": [{"name": "ferry-presence", "cooldown_s": 300,
                      "match": {"kind": "presence", "zone": "ferry"},
                      "act": {"broadcast": {"clip": "nofish", "within_m": 600, "priority": "priority"}},
                      "escalate": {"after_s": after_s, "notify": {"within_m": 3000}}}]},
    })


async def start_nodes(tmp_path, ks, mosquitto):
    sims = {}
    for dev, (role, lat, lon) in SPOTS.items():
        ident = ks.ensure(dev, SITE, role)
        cfg = make_config(dev, SITE, role, binascii.hexlify(ident.hmac_key).decode(), mosquitto.host,
                          mosquitto.port, hb_s=5, position={"lat": lat, "lon": lon, "alt_mm": 0},
                          sensor={"sensitivity": 100, "min_interval_s": 0, "debounce_ms": 0})
        sims[dev] = SimNode(tmp_path / "nodes" / dev, cfg, speed=20, pir=role == "sensor")
        if role == "speaker":
            sims[dev].add_clip("nofish", ms=500)
    for s in sims.values():
        await s.start()
    for s in sims.values():
        await s.wait_online()
    return sims


def test_detection_warns_from_the_nearest_speaker_once_and_escalates_to_the_cadre(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        got: list[dict] = []
        phone = MQTTLink(mosquitto.url, "cadre-wang-phone")
        phone.subscribe(f"lookout/v1/{SITE}/cadre-wang/notify", lambda t, p, r: got.append(notify.decode(p)))
        async with phone, serving(Gateway(gateway_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await phone.subscribed()
            sims = await start_nodes(tmp_path, ks, mosquitto)
            await until(lambda: all((d := gw.registry.get(i)) and d.state == "online" and d.last_loc
                                    for i in SPOTS), 10, "nodes online with positions")
            t0 = time.monotonic()
            sims["sen-ferry"].trigger_pir()
            await until(lambda: gw.linkage.store.active, 5, "an incident")
            [inc] = gw.linkage.store.active.values()
            await until(lambda: inc.state == "warned", WARN_WITHIN_S, "the warning")
            warned_s = time.monotonic() - t0
            assert len(sims["spk-ferry"].plays) <= 1 and not sims["spk-dam"].plays
            # the intruder stays: more detections join the same incident, no second broadcast
            for _ in range(4):
                await asyncio.sleep(0.1)
                sims["sen-ferry"].trigger_pir()
            await until(lambda: inc.detections >= 5, 5, "follow-ups absorbed")
            # still only warned after after_s: escalation notifies the cadre's phone (QoS 1, retained)
            await until(lambda: got, 6, "the notification")
            assert got[0]["incident"] == inc.id and got[0]["site"] == SITE and got[0]["state"] == "warned"
            await until(lambda: sims["spk-ferry"].plays, 5, "the play finished")
            assert len(sims["spk-ferry"].plays) == 1 and not sims["spk-dam"].plays
            # one signed play command, journaled under the rule that issued it
            cmd_entries = [e for e in gw.journal.entries(kind="command") if "play" in e.summary]
            assert len(cmd_entries) == 1 and cmd_entries[0].operator == "rule.ferry-presence"
            c = gw.commands.get(json.loads(cmd_entries[0].detail)["id"])
            assert c.device == "spk-ferry" and c.op == "rule.ferry-presence" and c.prio == 2
            assert inc.history[1]["state"] == "warned" and inc.history[1]["by"] == "rule.ferry-presence"
            assert len(gw.linkage.store.active) == 1
            # an operator lists and closes it over the operator API
            r = await gw.handle_op("op-1", "incidents", {"state": "active", "limit": 50})
            assert [i["id"] for i in r["data"]["incidents"]] == [inc.id]
            r = await gw.handle_op("op-1", "incident", {"action": "close", "incident": inc.id, "why": "left"})
            assert r["code"] == "ok"
            await until(lambda: got[-1]["state"] == "closed", 5, "the closing notification")
            assert gw.journal.verify().ok
        for s in sims.values():
            await s.stop()
        ks.close()
        print(f"warned {warned_s:.2f} s after the PIR edge")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_gateway_restart_mid_incident_keeps_it_and_its_escalation_timer(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        cfg = gateway_cfg(tmp_path, mosquitto.url, after_s=4)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            sims = await start_nodes(tmp_path, ks, mosquitto)
            await until(lambda: all((d := gw.registry.get(i)) and d.state == "online" and d.last_loc
                                    for i in SPOTS), 10, "nodes online with positions")
            sims["sen-ferry"].trigger_pir()
            await until(lambda: gw.linkage.store.active and next(iter(gw.linkage.store.active.values())).state
                        == "warned", 5, "warned")
            [inc] = gw.linkage.store.active.values()
            due = inc.escalate_at_ms
            assert due is not None and due - inc.opened_ms == 4000
        # the gateway is down for a moment; the incident and its deadline come back from incidents.db
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            again = gw.linkage.store.active.get(inc.id)
            assert again is not None and again.state == "warned" and again.escalate_at_ms == due
            assert gw.clock() < due, "restart took longer than the escalation delay: test is meaningless"
            await until(lambda: again.escalated, 8, "the escalation after the restart")
            [esc] = [e for e in gw.journal.entries(kind="incident") if "escalated" in e.summary]
            assert esc.ts >= due and esc.operator == "rule.ferry-presence"
            assert any("notified" in e.summary for e in gw.journal.entries(kind="incident"))
            # a follow-up joins the restored incident: still one play in all
            sims["sen-ferry"].trigger_pir()
            await until(lambda: again.detections >= 2, 5, "follow-up absorbed")
            await asyncio.sleep(0.5)
            assert len(gw.linkage.store.active) == 1
            assert len([e for e in gw.journal.entries(kind="command") if "play" in e.summary]) == 1
            assert gw.journal.verify().ok
        assert len(sims["spk-ferry"].plays) == 1
        for s in sims.values():
            await s.stop()
        ks.close()

    asyncio.run(asyncio.wait_for(main(), 60))

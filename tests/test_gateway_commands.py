"""Gateway end to end against a real Mosquitto: registry, commands, durable queue, groups, operator API."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from aiowait import until
from gwserve import serving

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.config import from_dict
from lookout.gateway.service.app import Gateway
from lookout.simulators.fakenode import FakeNode


def make_cfg(tmp_path, url, **registry):
    return from_dict({
        "gateway": {"id": "gw-1", "site": "dongshan", "data_dir": str(tmp_path / "data")},
        "broker": {"url": url},
        "registry": {"min_hb_s": 1, **registry},
        "commands": {"retry_s": 1, "max_attempts": 3, "wait_s": 5},
        "zones": {"north": ["spk-01", "spk-02"]},
    })


def node(mosquitto, ks, dev="spk-01", **kw):
    ident = ks.ensure(dev, "dongshan", "speaker")
    return FakeNode(mosquitto.host, mosquitto.port, dev, "dongshan", ident.hmac_key, **kw)


def test_vertical_slice(mosquitto, tmp_path):
    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online")
            c = await gw.commands.issue("spk-01", "play", {"clip": "nofish", "repeat": 1}, op="op-1")
            [c] = await gw.commands.wait([c.id], "final", 5)
            assert c.status == "done" and c.data == {"played": 1}
            assert n.received[0]["ctr"] > 0
            kinds = [e.kind for e in gw.journal.entries()]
            assert "command" in kinds and "result" in kinds and "state" in kinds
            assert gw.journal.verify().ok
        n.stop()
        ks.close()

    asyncio.run(main())


def test_durable_queue_across_gateway_restart(mosquitto, tmp_path):
    """Queued for an offline node, the gateway restarts, the node is born: the command arrives and is answered."""
    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks)
        async with Gateway(cfg, keystore=ks) as gw:
            c = await gw.commands.issue("spk-01", "play", {"clip": "nofish"}, op="op-1", ttl_s=60)
            assert c.status == "queued"
            refused = await gw.commands.issue("spk-01", "stop", {}, queue=False)
            assert refused.status == "refused" and refused.code == "offline"
        # gateway down; the command lives in commands.db
        assert sqlite3.connect(tmp_path / "data" / "commands.db").execute(
            "SELECT status FROM commands WHERE id = ?", (c.id,)).fetchone() == ("queued",)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            assert [q.id for q in gw.commands.queued("spk-01")] == [c.id]
            await asyncio.to_thread(n.start)
            [c2] = await gw.commands.wait([c.id], "final", 5)
            assert c2.status == "done" and c2.attempts == 1
            assert [m["id"] for m in n.received] == [c.id]
        n.stop()
        ks.close()

    asyncio.run(main())


def test_expired_queued_command_is_not_sent(mosquitto, tmp_path):
    async def main():
        now = [1_900_000_000_000]
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks)
        async with Gateway(cfg, keystore=ks, clock=lambda: now[0]) as gw:
            c = await gw.commands.issue("spk-01", "play", {"clip": "x"}, ttl_s=10)
            now[0] += 11_000
            await gw.commands.tick()
            assert gw.commands.get(c.id).status == "expired"
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01").state == "online")
            # a fence: a command issued after the birth reaches the node after anything the birth released
            # (one publisher, one topic, QoS 1: the broker keeps the order)
            fence = await gw.commands.issue("spk-01", "ping", {}, ttl_s=60)
            await until(lambda: n.received, what="the fence command")
            assert [m["id"] for m in n.received] == [fence.id]
        n.stop()
        ks.close()

    asyncio.run(main())


def test_group_command_per_device_results(mosquitto, tmp_path):
    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        ok = node(mosquitto, ks, "spk-01")
        bad = node(mosquitto, ks, "spk-02", behaviour="failed")
        ks.ensure("spk-03", "dongshan", "speaker")  # provisioned, never seen: offline -> queued
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            for x in (ok, bad):
                await asyncio.to_thread(x.start)
            await until(lambda: all(gw.registry.get(d) and gw.registry.get(d).live for d in ("spk-01", "spk-02")))
            resp = await gw.handle_op("op-1", "broadcast", {"to": "dongshan", "clip": "nofish", "repeat": 1,
                                                            "priority": 1, "queue": True, "wait": "final"}, "r1")
            res = {r["device"]: r for r in resp["data"]["results"]}
            assert resp["code"] == "partial" and resp["data"]["group"]
            assert res["spk-01"]["status"] == "done"
            assert res["spk-02"]["status"] == "failed" and res["spk-02"]["code"] == "no_clip"
            assert res["spk-03"]["status"] == "queued"
            zone = await gw.handle_op("op-1", "stop", {"to": "north", "priority": 1, "queue": False,
                                                       "wait": "final"}, "r2")
            assert sorted(r["device"] for r in zone["data"]["results"]) == ["spk-01", "spk-02"]
        ok.stop()
        bad.stop()
        ks.close()

    asyncio.run(main())


def test_forged_and_unsigned_results_are_not_acted_on(mosquitto, tmp_path):
    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks, behaviour="forge", send_accepted=False)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)
            c = await gw.commands.issue("spk-01", "play", {"clip": "x"})
            await until(lambda: gw.commands.forged >= 1)
            assert gw.commands.get(c.id).status == "sent"  # the forged "done" changed nothing
            n.event("e1", sign=False)
            n.event("e2")
            await until(lambda: gw.commands.unsigned >= 1 and any(
                e.kind == "alert" for e in gw.journal.entries()))
            sec = [e for e in gw.journal.entries(kind="security")]
            assert {json.loads(e.detail)["code"] for e in sec} == {"bad_mac", "unsigned"}
            alerts = [e for e in gw.journal.entries(kind="alert")]
            assert [json.loads(e.detail)["id"] for e in alerts] == ["e2"]
        n.stop()
        ks.close()

    asyncio.run(main())


def test_retries_then_timeout_and_offline_requeue(mosquitto, tmp_path):
    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks, behaviour="silent")
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)
            c = await gw.commands.issue("spk-01", "play", {"clip": "x"})
            [c] = await gw.commands.wait([c.id], "final", 8)
            assert c.status == "timeout" and c.attempts == 3 and c.code == "no_response"
            got = n.wait_commands(3)
            assert len({m["mac"] for m in got}) == 1  # retries are the identical signed message
            c2 = await gw.commands.issue("spk-01", "play", {"clip": "y"})
            assert c2.status == "sent"
            n.die()
            await until(lambda: gw.registry.get("spk-01").state == "offline", what="spk-01's will (offline)")
            assert gw.commands.get(c2.id).status == "queued", gw.commands.get(c2.id)
        ks.close()

    asyncio.run(main())


def test_serve_returns_after_stop_even_if_a_cancel_is_lost(mosquitto, tmp_path):
    """stop() ends serve() even when the tick loop swallows its TaskGroup's cancel, as a 3.11 ``wait_for`` did
    when a PUBACK landed in the same loop turn (the CI hang this guards against)."""
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        async with Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks) as gw:
            swallowed = []
            inside = asyncio.Event()

            async def tick():  # parks, like a re-send waiting for its PUBACK; loses the first cancel
                inside.set()
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    if swallowed:
                        raise
                    swallowed.append(True)

            gw.commands.tick = tick
            task = asyncio.create_task(gw.serve())
            await asyncio.wait_for(inside.wait(), 5)  # the tick loop is inside tick()
            gw.stop()
            done, _ = await asyncio.wait({task}, timeout=5)
            if not done:
                task.cancel()
            assert swallowed == [True] and task in done
            await task
        ks.close()

    asyncio.run(main())


def test_operator_requests_authenticated_over_mqtt(mosquitto, tmp_path):
    from lookout.gateway.links.opclient import OperatorClient

    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)
        ks = KeyStore(tmp_path / "ks.db")
        token = ks.add_operator("op-1", "Duty officer", "operator")
        n = node(mosquitto, ks)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)
            async with OperatorClient(mosquitto.url, "dongshan", "op-1", token) as cl:
                r = await cl.request("broadcast", {"to": "spk-01", "clip": "nofish"}, timeout=5)
                assert r["code"] == "ok" and r["data"]["results"][0]["status"] == "done"
                r = await cl.request("command", {"to": "nope", "name": "play"}, timeout=5)
                assert r["code"] == "unknown_device"
            async with OperatorClient(mosquitto.url, "dongshan", "op-1", "wrong-token") as cl:
                r = await cl.request("devices", {}, timeout=5)
                assert r["code"] == "unauthorized"
            async with OperatorClient(mosquitto.url, "dongshan", "intruder", "x") as cl:
                r = await cl.request("stop", {"to": "spk-01"}, timeout=5)
                assert r["code"] == "unauthorized"
            ops = gw.journal.entries(kind="operator")
            assert any(e.operator == "op-1" and "broadcast" in e.summary for e in ops)
            sec = gw.journal.entries(kind="security")
            assert {e.operator for e in sec} >= {"op-1", "intruder"}
            assert gw.journal.verify().ok
        n.stop()
        ks.close()

    asyncio.run(main())


def test_fast_mac_equals_reference_signing():
    from lookout.gateway.core.commands import canonical_fast, mac_hex
    from lookout.protocols import canonical, messages, signing

    key = bytes(range(32))
    msgs = [
        messages.command("c1", "spk-01", "play", {"clip": "nofish", "repeat": 2}, 1_800_000_000_000,
                         1_800_000_060_000, 3, 1_800_000_000_001, "op-1"),
        messages.result("c1", "done", ts=1_800_000_000_500, data={"played_ms": 2000, "note": "水库 ok"}, seq=7),
        {"id": "e1", "seq": 1, "ts": 1_800_000_000_000, "kind": "fishing", "sev": "general",
         "detail": 'quote " back \\ slash'},
        {"id": "x", "args": {"s": "line\nbreak\ttab\x01"}, "n": None, "b": True, "l": [1, "a", None]},
    ]
    for m in msgs:
        assert canonical_fast(m) == canonical.dumpb(m)
        for purpose in ("cmd", "res", "evt"):
            assert mac_hex(key, purpose, m) == signing.compute_mac(key, purpose, m)


def test_counter_reservation_never_goes_backwards(tmp_path):
    """Spare counters reserved in the background race direct reservations: used counters still only grow."""
    from lookout.gateway.core.commands import CommandService
    from lookout.gateway.core.config import CommandsConfig, RegistryConfig
    from lookout.gateway.core.registry import Registry

    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        for i in range(5):
            ks.ensure(f"spk-{i}", "dongshan", "speaker")
        cs = CommandService(CommandsConfig(), ks, Registry(RegistryConfig()))
        used = {f"spk-{i}": [] for i in range(5)}

        async def use(dev):
            async with cs._device_lock(dev):
                used[dev].append(await cs._counter(dev))

        for _ in range(20):
            for dev in used:
                cs.reserve_counter(dev)
            await asyncio.gather(*(use(d) for d in used for _ in range(3)))
            await asyncio.sleep(0)
        for dev, seq in used.items():
            assert seq == sorted(seq) and len(set(seq)) == len(seq), dev
        cs.close()
        ks.close()

    asyncio.run(main())


def test_group_refused_means_nothing_was_sent(mosquitto, tmp_path):
    """Issue 10 item 4: a zone with one member the gateway has no key for is refused as a whole, before any
    command is stored or sent; the response and the journal name each target's problem, and agree."""
    async def main():
        cfg = make_cfg(tmp_path, mosquitto.url)  # zone north = spk-01 (keyed, online), spk-02 (no key)
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks, "spk-01")
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)
            resp = await gw.handle_op("op-1", "broadcast", {"to": "north", "clip": "nofish", "repeat": 1,
                                                            "priority": 1, "queue": True, "wait": "final"}, "r1")
            assert resp["code"] == "unknown_device" and "spk-02" in resp["error"]
            assert resp["data"]["refused"] == [{"device": "spk-02", "code": "unknown_device",
                                                "error": "unknown device 'spk-02': no key in the key store"}]
            assert gw.commands.active == {} and gw.commands.depths() == {"queued": 0, "sent": 0, "accepted": 0}
            fence = await gw.commands.issue("spk-01", "ping", {})  # after anything the refusal could have sent
            await until(lambda: n.received, what="the fence command")
            assert [m["id"] for m in n.received] == [fence.id]
            entries = gw.journal.entries()
            assert not [e for e in entries if e.kind in ("command", "result") and "play" in e.summary]
            [refusal] = [e for e in entries if e.kind == "operator" and "refused" in e.summary]
            assert json.loads(refusal.detail)["refused"] == resp["data"]["refused"]
        n.stop()
        ks.close()

    asyncio.run(main())

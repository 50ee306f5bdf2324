"""Registry state machine with injected time (no sleeping), persistence, and the real last will via Mosquitto."""

from __future__ import annotations

import asyncio

import pytest

from lookout.gateway.core.config import RegistryConfig
from lookout.gateway.core.registry import Registry

CFG = RegistryConfig(offline_after_missed=3, stale_after_missed=1, grace_ms=1000, min_hb_s=5, max_hb_s=600)
T0 = 1_800_000_000_000


def birth(bdseq=0, hb_s=30):
    return {"online": True, "kind": "speaker", "bdseq": bdseq, "fw": "1.0", "hb_s": hb_s}


def test_birth_heartbeat_timeout_stale_offline():
    r = Registry(CFG)
    events = []
    r.add_listener(events.append)
    [c] = r.birth("spk-01", "s1", birth(), T0)
    assert (c.old, c.new, c.what) == ("unknown", "online", "birth")
    assert r.tick(T0 + 30_000 + 999) == []  # the first heartbeat is not late yet (grace)
    [c] = r.tick(T0 + 31_000)
    assert (c.new, c.what) == ("stale", "timeout")
    assert r.tick(T0 + 60_000) == []  # stays stale until 3 periods
    r.heartbeat("spk-01", "s1", {"seq": 1, "up_s": 60, "hb_s": 30}, T0 + 61_000)
    assert r.get("spk-01").state == "online"
    [c] = r.tick(T0 + 61_000 + 90_000 + 1000)
    assert (c.old, c.new, c.what) == ("online", "offline", "timeout")  # a tick past both deadlines: one step
    assert c.detail["silent_ms"] == 91_000
    assert [e.new for e in events if e.transition] == ["online", "stale", "online", "offline"]


def test_death_and_late_will_from_older_session():
    r = Registry(CFG)
    r.birth("spk-01", "s1", birth(bdseq=4), T0)
    [c] = r.death("spk-01", "s1", {"online": False, "bdseq": 3}, T0 + 10)  # will of the previous session
    assert c.what == "bdseq_stale" and not c.transition
    assert r.get("spk-01").state == "online"
    [c] = r.death("spk-01", "s1", {"online": False, "bdseq": 4, "reason": "lost"}, T0 + 20)
    assert (c.new, c.what) == ("offline", "death")
    assert r.tick(T0 + 10_000_000) == []  # offline devices do not time out again


def test_bad_interval_is_clamped_not_mass_offline():
    r = Registry(CFG)
    out = r.birth("spk-01", "s1", birth(hb_s=1), T0)  # 1 s announced; policy floor is 5 s
    assert any(c.what == "interval_clamped" and c.detail["used_s"] == 5 for c in out)
    assert r.tick(T0 + 3_000) == []  # 3 s of silence: with 1 s it would already be offline
    r.birth("spk-02", "s1", birth(hb_s=86400), T0)
    assert r.get("spk-02").hb_s == 600
    assert r.tick(T0 + 3 * 600_000 + 1001)[-1].new == "offline"


def test_sequence_gaps_per_channel():
    r = Registry(CFG)
    r.birth("spk-01", "s1", birth(), T0)
    r.heartbeat("spk-01", "s1", {"seq": 1, "up_s": 1, "hb_s": 30}, T0)
    r.location("spk-01", "s1", {"seq": 1, "ts": T0, "lat": 1, "lon": 1, "fix": 1, "src": "gps"}, T0)
    out = r.heartbeat("spk-01", "s1", {"seq": 4, "up_s": 1, "hb_s": 30}, T0 + 1)
    assert [c.detail["missing"] for c in out if c.what == "gap"] == [2]
    r.heartbeat("spk-01", "s1", {"seq": 5, "up_s": 1, "hb_s": 30}, T0 + 2)
    assert r.get("spk-01").gaps == 2
    r.birth("spk-01", "s1", birth(bdseq=1), T0 + 3)  # new session: counters restart without a gap
    r.heartbeat("spk-01", "s1", {"seq": 1, "up_s": 1, "hb_s": 30}, T0 + 4)
    assert r.get("spk-01").gaps == 2


def test_persistence_and_rebase(tmp_path):
    p = tmp_path / "registry.db"
    r = Registry(CFG, p)
    r.birth("spk-01", "s1", birth(), T0)
    r.location("spk-01", "s1", {"seq": 1, "ts": T0, "lat": 301234567, "lon": 1201234567, "fix": 1,
                                "src": "gps"}, T0)
    r.close()
    r2 = Registry(CFG, p)
    d = r2.get("spk-01")
    assert d.state == "online" and d.last_loc["lat"] == 301234567 and d.kind == "speaker"
    later = T0 + 3_600_000  # the gateway was down for an hour
    r2.rebase(later)
    assert r2.tick(later + 1000) == []  # no mass-offline for our own downtime
    assert r2.tick(later + 91_000)[-1].new == "offline"
    r2.close()


@pytest.mark.mosquitto
def test_last_will_marks_offline(mosquitto, tmp_path):
    from test_gateway_commands import make_cfg, until

    from lookout.gateway.admin.keystore import KeyStore
    from lookout.gateway.service.app import Gateway
    from lookout.simulators.fakenode import FakeNode

    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        ident = ks.ensure("spk-01", "dongshan", "speaker")
        n = FakeNode(mosquitto.host, mosquitto.port, "spk-01", "dongshan", ident.hmac_key)
        async with Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online")
            n.die()  # socket closed without DISCONNECT: the broker fires the will after keepalive... or at once
            await until(lambda: gw.registry.get("spk-01").state == "offline", timeout=8)
            assert gw.registry.get("spk-01").reason == "death"
        ks.close()

    asyncio.run(main())

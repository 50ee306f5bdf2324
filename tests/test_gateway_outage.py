"""A broker outage must not stall the gateway (issue 10 item 11): command re-sends never hold up the tick, so
deadlines and offline detection keep their schedule with 100 commands waiting on a broker that does not answer.

Time is the gateway's injected clock (advanced by the test); the broker is a real Mosquitto, stopped with SIGSTOP
(a hung broker: the TCP session stays up, no PUBACK comes) or terminated (the link drops). The bounds on the
waits are generous (seconds) and far below what the old behaviour needed (10 s per re-send, one after another)."""

from __future__ import annotations

import asyncio
import signal
import time

from aiowait import until
from gwserve import serving
from test_gateway_commands import make_cfg, node

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.service.app import Gateway

N = 100
BOUND_S = 5.0


async def _hundred_sent(gw, n, now):
    await asyncio.to_thread(n.start)
    await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)
    short = await gw.commands.issue("spk-01", "play", {"clip": "a"}, ttl_s=30)
    cmds = [await gw.commands.issue("spk-01", "play", {"clip": f"c{i}"}, ttl_s=3600) for i in range(N)]
    assert {c.status for c in [short, *cmds]} == {"sent"}  # the node is silent: no results
    return short, cmds


def test_hung_broker_does_not_stall_expiry_or_offline_detection(mosquitto, tmp_path):
    async def main():
        now = [int(time.time() * 1000)]
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks, behaviour="silent")
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks, clock=lambda: now[0])) as gw:
            short, cmds = await _hundred_sent(gw, n, now)
            mosquitto.proc.send_signal(signal.SIGSTOP)
            try:
                now[0] += 2_000  # past retry_s: every command is due for a re-send, none can get its PUBACK
                await until(lambda: sum(gw.commands.get(c.id).attempts > 1 for c in cmds) == N, BOUND_S,
                            "all re-sends started")
                assert gw.link.connected.is_set()  # hung, not disconnected: the registry keeps ticking
                now[0] += 120_000  # past the short command's deadline and 3 missed heartbeats of 30 s
                await until(lambda: gw.commands.get(short.id).status == "expired", BOUND_S, "expiry")
                await until(lambda: gw.registry.get("spk-01").state == "offline", BOUND_S, "offline detection")
                assert all(gw.commands.get(c.id).status == "queued" for c in cmds)  # back in the queue
            finally:
                mosquitto.proc.send_signal(signal.SIGCONT)
        n.stop()
        ks.close()

    asyncio.run(main())


def test_crashed_broker_keeps_deadlines_and_burns_no_attempts(mosquitto, tmp_path):
    async def main():
        now = [int(time.time() * 1000)]
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks, behaviour="silent")
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks, clock=lambda: now[0])) as gw:
            short, cmds = await _hundred_sent(gw, n, now)
            mosquitto.proc.send_signal(signal.SIGKILL)  # a crash: no wills, the registry still has spk-01 live
            mosquitto.proc.wait()
            await until(lambda: not gw.link.connected.is_set(), BOUND_S, "the link to notice")
            def failed() -> float:
                return gw.metrics.registry.get_sample_value("lookout_command_sends_failed_total",
                                                            {"reason": "link_down"}) or 0

            for k in range(1, 4):  # three retry periods with no broker: every re-send fails at once, uncounted
                now[0] += 2_000
                await until(lambda: failed() >= k * (N + 1), BOUND_S, f"re-send round {k}")
            now[0] += 30_000
            await until(lambda: gw.commands.get(short.id).status == "expired", BOUND_S, "expiry")
            assert {gw.commands.get(c.id).status for c in cmds} == {"sent"}
            assert {gw.commands.get(c.id).attempts for c in cmds} == {1}  # nothing left the gateway again
        n.die()
        ks.close()

    asyncio.run(main())

"""gateway/mqtt.MQTTLink driven from the event loop (paho's external-loop API, no paho thread), against Mosquitto:

- publish/subscribe and PUBACK-resolved publishes; ``publish_nowait`` from another thread still goes out;
- a broker restart: the link reconnects by itself, resubscribes, republishes its retained birth, and a QoS 1
  publish made while the broker was down completes after the reconnect;
- TLS (mqtts://) through the SSL socket, a large message and a burst of small ones; a wrong CA names the cause;
- clean shutdown: socket unwatched, pending publishes fail, no reader left on the loop; the last will is not fired;
- an unreachable broker fails the entry within connect_timeout with the cause in the message.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from aiowait import aio
from broker import Mosquitto, free_port

from lookout.gateway.admin.pki import SiteCA
from lookout.gateway.links.mqtt import Message, MQTTError, MQTTLink

pytestmark = pytest.mark.mosquitto
WAIT = 5.0


def collector() -> tuple[asyncio.Queue, object]:
    q: asyncio.Queue = asyncio.Queue()
    return q, lambda t, p, r: q.put_nowait((t, p, r))


@aio
async def test_pubsub_puback_and_foreign_thread(mosquitto):
    q, h = collector()
    async with MQTTLink(mosquitto.url, "t-a") as a, MQTTLink(mosquitto.url, "t-b") as b:
        b.subscribe("t/x", h, 1)
        await b.subscribed(WAIT)
        await a.publish("t/x", b"one", 1, timeout=WAIT)
        assert await asyncio.wait_for(q.get(), WAIT) == ("t/x", b"one", False)
        th = threading.Thread(target=a.publish_nowait, args=("t/x", b"two", 1))
        th.start()
        th.join()
        assert await asyncio.wait_for(q.get(), WAIT) == ("t/x", b"two", False)
        for i in range(50):  # a burst: several packets per readable event
            a.publish_nowait("t/x", b"%d" % i, 1)
        got = [(await asyncio.wait_for(q.get(), WAIT))[1] for _ in range(50)]
        assert got == [b"%d" % i for i in range(50)]
        assert b.messages_in == 52


@aio
async def test_reconnect_resubscribes_and_republishes_birth(mosquitto):
    q, h = collector()
    births, hb = collector()
    ups: list[int] = []
    birth = Message("t/state/gw", b"online", 1, True)
    will = Message("t/state/gw", b"lost", 1, True)
    link = MQTTLink(mosquitto.url, "t-gw", birth=birth, will=will, keepalive=5, on_connect=lambda: ups.append(1))
    link.subscribe("t/in", h, 1)
    async with link, MQTTLink(mosquitto.url, "t-peer") as peer:
        peer.subscribe("t/state/+", hb, 1)
        assert (await asyncio.wait_for(births.get(), WAIT))[1] == b"online"
        mosquitto.stop()  # persistence off: retained state and subscriptions are gone with it
        await asyncio.wait_for(_until(lambda: not link.connected.is_set()), WAIT)
        pending = asyncio.ensure_future(link.publish("t/in", b"queued", 1, timeout=15))
        await asyncio.wait_for(_until(lambda: link._pending), WAIT)  # in paho's outbox while the broker is down
        assert not link.connected.is_set()
        mosquitto.start()
        await asyncio.wait_for(link.connected.wait(), 10)
        await asyncio.wait_for(peer.connected.wait(), 10)
        await asyncio.wait_for(pending, 15)  # the outbox went out after the reconnect, PUBACK resolved it
        assert len(ups) == 2
        await link.subscribed(WAIT)  # the new session has t/in again
        await peer.publish("t/in", b"after", 1, timeout=WAIT)
        payloads = set()
        while b"after" not in payloads:
            payloads.add((await asyncio.wait_for(q.get(), WAIT))[1])
        # the birth was republished (retained) on the new broker instance
        while (await asyncio.wait_for(births.get(), WAIT))[1] != b"online":
            pass


async def _until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.02)


async def fence(link: MQTTLink, topic: str, q: asyncio.Queue, rounds: int = 2) -> list:
    """What ``q`` received before ``rounds`` markers that ``link`` publishes on ``topic`` (matched by the same
    subscription) came back. The broker handles a connection's packets in order and answers a socket it found
    ready in the same pass as the marker's, so anything it was going to send because of what happened before
    the first marker (a will, a command) arrives before the last one: "nothing arrived" without a guessed
    sleep."""
    seen = []
    for i in range(rounds):
        marker = b"fence-%d" % i
        await link.publish(topic, marker, 1, timeout=WAIT)
        while True:
            t, p, r = await asyncio.wait_for(q.get(), WAIT)
            if (t, p) == (topic, marker):
                break
            seen.append((t, p, r))
    return seen


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("mqttlink-tls")
    ca = SiteCA(root / "pki")
    ca.init("dongshan")
    crt, key = ca.issue_server(["localhost", "127.0.0.1"])
    port = free_port()
    user = "user root\n" if os.geteuid() == 0 else ""  # else mosquitto drops to a user that cannot read tmp_path
    b = Mosquitto(root / "broker", conf_extra=f"{user}listener {port} 127.0.0.1\ncafile {ca.ca_crt}\n"
                                                f"certfile {crt}\nkeyfile {key}\n").start()
    b.tls_port, b.ca = port, ca
    yield b
    b.stop()


@aio
async def test_tls_link(tls_broker):
    url = f"mqtts://127.0.0.1:{tls_broker.tls_port}"
    ca = str(tls_broker.ca.ca_crt)
    q, h = collector()
    async with MQTTLink(url, "t-tls-a", ca=ca) as a, MQTTLink(url, "t-tls-b", ca=ca) as b:
        b.subscribe("t/tls", h, 1)
        await b.subscribed(WAIT)
        await a.publish("t/tls", b"x" * 5000, 1, timeout=WAIT)  # spans several TLS records / recv calls
        assert (await asyncio.wait_for(q.get(), WAIT))[1] == b"x" * 5000
        for i in range(100):  # a burst of small packets over TLS
            a.publish_nowait("t/tls", b"%d" % i, 1)
        got = [(await asyncio.wait_for(q.get(), WAIT))[1] for _ in range(100)]
        assert got == [b"%d" % i for i in range(100)]


@aio
async def test_tls_wrong_ca_fails_with_cause(tls_broker, tmp_path):
    other = SiteCA(tmp_path / "other")
    other.init("elsewhere")
    link = MQTTLink(f"mqtts://127.0.0.1:{tls_broker.tls_port}", "t-tls-bad", ca=str(other.ca_crt),
                    connect_timeout=1.5)
    with pytest.raises(MQTTError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await link.__aenter__()


@aio
async def test_close_unwatches_and_fails_pending(mosquitto):
    loop = asyncio.get_running_loop()
    q, h = collector()
    will = Message("t/state/x", b"lost", 1, True)
    async with MQTTLink(mosquitto.url, "t-obs") as obs:
        obs.subscribe("t/state/+", h, 1)
        await obs.subscribed(WAIT)
        link = MQTTLink(mosquitto.url, "t-x", will=will)
        await link.__aenter__()
        fd = link._fd
        assert fd >= 0 and loop._selector.get_map().get(fd) is not None  # watched by the loop
        mosquitto.proc.send_signal(19)  # SIGSTOP: no PUBACK can come
        try:
            fut = asyncio.ensure_future(link.publish("t/y", b"p", 1))
            await asyncio.wait_for(_until(lambda: link._pending), WAIT)  # parked on its PUBACK
            await link.close()
            with pytest.raises(MQTTError, match="closed before PUBACK"):
                await fut
        finally:
            mosquitto.proc.send_signal(18)  # SIGCONT
        assert link._fd == -1 and loop._selector.get_map().get(fd) is None
        assert not link._tasks
        assert await fence(obs, "t/state/fence", q) == []  # clean DISCONNECT: the will was not published


@aio
async def test_unreachable_broker_names_the_cause():
    link = MQTTLink(f"mqtt://127.0.0.1:{free_port()}", "t-none", connect_timeout=1.0)
    with pytest.raises(MQTTError, match=r"no CONNACK .* within 1 s \(last error: .*refused"):
        await link.__aenter__()
    assert not link._tasks


@aio
async def test_cancel_in_the_turn_the_puback_lands_is_not_lost(mosquitto):
    """A task stopped (e.g. by its TaskGroup) in the very loop turn its PUBACK arrives still ends cancelled.

    With ``asyncio.wait_for`` on 3.11 it returned normally instead: the gateway's tick loop carried on and
    ``serve()`` never returned after ``stop()``."""
    async with MQTTLink(mosquitto.url, "t-c") as link:
        mosquitto.proc.send_signal(19)  # SIGSTOP: the real PUBACK cannot overtake the one delivered below
        try:
            started = link.start_publish("t/c", b"x", 1)
            mid = started[0]
            waiter = asyncio.ensure_future(link.wait_puback(started, "t/c", timeout=WAIT))
            await asyncio.sleep(0)  # the waiter is now parked on the PUBACK
            link._p_publish(link._client, None, mid, None, None)  # the PUBACK lands ...
            waiter.cancel()  # ... and the stop arrives in the same turn
            with pytest.raises(asyncio.CancelledError):
                await waiter
        finally:
            mosquitto.proc.send_signal(18)  # SIGCONT


@aio
async def test_subscribed_waits_for_suback_and_keeps_refusals(mosquitto, caplog):
    """``subscribed()`` returns only after the SUBACK; a 0x80 (the broker's ACL said no) is logged once and kept
    in ``refused``. Mosquitto 2.0 grants denied filters and filters delivery instead, so the refusal is
    delivered to the link's paho callback directly while the broker is stopped."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    async with MQTTLink(mosquitto.url, "t-s") as link:
        await link.subscribed(WAIT)  # nothing asked yet
        mosquitto.proc.send_signal(19)  # SIGSTOP: no SUBACK can come
        try:
            link.subscribe("t/ok", lambda t, p, r: None, 1)
            with pytest.raises(MQTTError, match="not acknowledged within 0.3 s"):
                await link.subscribed(0.3)
            [mid] = list(link._subacks)
            link._p_subscribe(link._client, None, mid, [ReasonCode(PacketTypes.SUBACK, identifier=0x80)], None)
            await link.subscribed(WAIT)
            assert link.refused == {"t/ok"}
            assert any("refused the subscription to t/ok (SUBACK 0x80)" in r.getMessage() for r in caplog.records)
        finally:
            mosquitto.proc.send_signal(18)  # SIGCONT


@aio
async def test_a_backlog_is_read_in_batches_not_one_loop_pass_per_message(mosquitto):
    """While the loop was busy, 400 messages piled up in the socket: they are read in a few readable events
    (``READ_BATCH`` packets each at most), not 400 passes of the event loop (paho reads one packet per call)."""
    import time

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from lookout.gateway.links.mqtt import READ_BATCH

    q, h = collector()
    async with MQTTLink(mosquitto.url, "t-batch") as b:
        b.subscribe("t/burst", h, 0)
        await b.subscribed(WAIT)
        calls = []
        real = b._readable
        b._readable = lambda: calls.append(1) or real()  # type: ignore[method-assign]
        asyncio.get_running_loop().remove_reader(b._fd)
        asyncio.get_running_loop().add_reader(b._fd, b._readable)
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="t-burst-pub")
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        try:
            infos = [pub.publish("t/burst", b"%d" % i, 0) for i in range(400)]
            for info in infos:
                info.wait_for_publish(WAIT)
            time.sleep(0.3)  # the loop is held: everything reaches the socket before it reads
            got = [(await asyncio.wait_for(q.get(), WAIT))[1] for _ in range(400)]
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert got == [b"%d" % i for i in range(400)]
        assert len(calls) <= 400 // READ_BATCH + 3, len(calls)

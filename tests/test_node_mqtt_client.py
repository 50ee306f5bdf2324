"""The node MQTT client (firmware/lib/lookout_node/mqtt.py) against a real Mosquitto, observed with paho 2.x.

CPython only. Short keepalive and backoff keep each test within a few seconds; assertions are on what the
broker and the observer saw, never on elapsed wall-clock time.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import paho.mqtt.publish as paho_publish
import pytest
from aiowait import until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware" / "lib"))

from lookout_node import mqtt  # noqa: E402

pytestmark = pytest.mark.mosquitto

STATE = "lookout/v1/s1/n1/state"
CMD = "lookout/v1/s1/n1/cmd"
EVT = "lookout/v1/s1/n1/evt"
_ids = itertools.count(1)


class Observer:
    """A paho client in its own thread that records every message on ``topics``."""

    def __init__(self, broker, topics):
        self.messages: queue.Queue = queue.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="observer-%d" % next(_ids))
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, flags, rc, props: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, props: subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(5), "observer could not subscribe"

    async def wait_for(self, pred, timeout=5.0):
        """The first message matching ``pred``; messages before it are returned too, for ordering checks."""
        seen = []
        while True:
            m = await asyncio.to_thread(self.messages.get, True, timeout)
            seen.append(m)
            if pred(m):
                return m, seen

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def make_client(broker, **kw):
    logs = []
    args = dict(client_id="n1", keepalive_s=5, will=(STATE, b"offline"), birth=(STATE, b"online"),
                backoff_min_ms=50, backoff_max_ms=300, puback_timeout_ms=1000,
                on_log=lambda level, text: logs.append((level, text)))
    args.update(kw)
    c = mqtt.MQTTClient(broker.host, broker.port, **args)
    c.logs = logs
    return c


def test_retained_birth_visible_to_late_subscriber(mosquitto):
    async def main():
        c = make_client(mosquitto)
        c.start()
        await asyncio.wait_for(c.connected.wait(), 5)
        obs = Observer(mosquitto, [STATE])  # subscribes only after the birth went out
        try:
            m, _ = await obs.wait_for(lambda m: m.topic == STATE)
            assert m.payload == b"online"
            assert m.retain
        finally:
            obs.close()
            await c.disconnect()

    asyncio.run(main())


def test_last_will_published_when_socket_dies(mosquitto):
    async def main():
        obs = Observer(mosquitto, [STATE])
        c = make_client(mosquitto)
        c.start()
        try:
            await asyncio.wait_for(c.connected.wait(), 5)
            await obs.wait_for(lambda m: m.payload == b"online")
            c.writer.transport.abort()  # no DISCONNECT: the broker must publish the will (§3.1.2.5)
            m, _ = await obs.wait_for(lambda m: m.payload == b"offline")
            assert m.topic == STATE
            # ... and the client comes back by itself and says so again.
            await obs.wait_for(lambda m: m.payload == b"online")
            await until(lambda: c.connects == 2 and c.is_connected(), 5, "the reconnect")
        finally:
            obs.close()
            await c.disconnect()

    asyncio.run(main())


def test_clean_disconnect_leaves_offline_state(mosquitto):
    async def main():
        c = make_client(mosquitto)
        c.start()
        await asyncio.wait_for(c.connected.wait(), 5)
        await c.disconnect()
        obs = Observer(mosquitto, [STATE])
        try:
            m, _ = await obs.wait_for(lambda m: m.topic == STATE)
            assert (m.payload, m.retain) == (b"offline", True)
        finally:
            obs.close()

    asyncio.run(main())


def test_qos1_publish_acknowledged(mosquitto):
    async def main():
        obs = Observer(mosquitto, [EVT])
        c = make_client(mosquitto)
        c.start()
        try:
            await asyncio.wait_for(c.connected.wait(), 5)
            await c.publish(EVT, b'{"seq":1}', qos=1)  # returns only after PUBACK
            m, _ = await obs.wait_for(lambda m: m.topic == EVT)
            assert (m.payload, m.qos) == (b'{"seq":1}', 1)
            assert not [t for lv, t in c.logs if "resend" in t]
        finally:
            obs.close()
            await c.disconnect()
        with pytest.raises(mqtt.NotConnected):
            await c.publish(EVT, b"late", qos=1)

    asyncio.run(main())


def test_subscription_survives_broker_restart(mosquitto):
    async def main():
        c = make_client(mosquitto)
        assert await c.subscribe(CMD, 1) is None  # offline: remembered, sent with the CONNECT
        c.start()
        try:
            await asyncio.wait_for(c.connected.wait(), 5)
            await asyncio.to_thread(paho_publish.single, CMD, b"one", qos=1, hostname=mosquitto.host,
                                    port=mosquitto.port)
            m = await asyncio.wait_for(c.next_message(), 5)
            assert (m.topic, m.payload) == (CMD, b"one")

            await asyncio.to_thread(mosquitto.restart)  # a fresh broker: no session, no subscription
            await until(lambda: c.connects >= 2 and c.is_connected(), 10, "the reconnect")
            await asyncio.to_thread(paho_publish.single, CMD, b"two", qos=1, hostname=mosquitto.host,
                                    port=mosquitto.port)
            m = await asyncio.wait_for(c.next_message(), 5)
            assert (m.topic, m.payload, m.qos) == (CMD, b"two", 1)
            assert [t for lv, t in c.logs if lv == "info" and "reconnecting" in t]
        finally:
            await c.disconnect()

    asyncio.run(main())


def test_keepalive_ping_keeps_session(mosquitto):
    async def main():
        obs = Observer(mosquitto, [STATE])
        c = make_client(mosquitto, keepalive_s=1)  # the broker drops a client silent for 1.5 s (§3.1.2.10)
        c.start()
        try:
            await asyncio.wait_for(c.connected.wait(), 5)
            await obs.wait_for(lambda m: m.payload == b"online")
            # ~2 s of idling with pings only: past the broker's 1.5 s cut-off
            await until(lambda: sum(1 for lv, t in c.logs if t == "PINGREQ") >= 4, 10, "four PINGREQs")
            assert c.connects == 1 and c.is_connected()
            assert c.last_error is None
            await c.publish(EVT, b"still here", qos=1)
            assert obs.messages.empty()  # no will: the broker never thought we were gone
        finally:
            obs.close()
            await c.disconnect()

    asyncio.run(main())

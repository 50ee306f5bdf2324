"""MQTT client without a network: backoff, offline errors, the delivery policy against an in-memory broker.

Runs under CPython (pytest) and MicroPython (tests/test_micropython_dual.py; the wasm port has no sockets, so
the broker here is a scripted fake behind the client's ``open_connection`` hook).
"""

import asyncio

from ptest import raises

try:
    from lookout_node import mqtt
except ImportError:  # CPython: firmware/lib is /lib on a device
    import sys

    sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/firmware/lib")
    from lookout_node import mqtt

from protocols import mqttpacket as mp
from protocols import mqttserver as ms
from protocols.errors import LocalProtocolError


def _drive(coro):
    """Run an async test body on either runtime: CPython runs it here; the MicroPython runner awaits what a
    test returns (its wasm port has no asyncio.run)."""
    if hasattr(asyncio, "run"):
        asyncio.run(coro)
        return None
    return _in_task(coro)


async def _in_task(coro):
    # The wasm port's top-level coroutine is not a Task, and asyncio.wait_for only works inside one.
    done = asyncio.Event()
    failed = []

    async def wrapper():
        try:
            await coro
        except Exception as e:
            failed.append(e)
        done.set()

    asyncio.create_task(wrapper())
    await done.wait()
    if failed:
        raise failed[0]


class _Pipe:
    """Broker -> client byte stream with the ``read(n)`` of an asyncio StreamReader."""

    def __init__(self):
        self.buf = b""
        self.ready = asyncio.Event()
        self.closed = False

    def feed(self, data):
        self.buf += data
        self.ready.set()

    def close(self):
        self.closed = True
        self.ready.set()

    async def read(self, n):
        while not self.buf and not self.closed:
            self.ready.clear()
            await self.ready.wait()
        out = self.buf[:n]
        self.buf = self.buf[n:]
        return out


class _Writer:
    def __init__(self, broker, pipe):
        self.broker = broker
        self.pipe = pipe

    def write(self, data):
        self.broker.on_packet(self.pipe, bytes(data))

    async def drain(self):
        await asyncio.sleep(0)

    def close(self):
        self.pipe.close()

    async def wait_closed(self):
        pass


class _FakeBroker:
    """Answers what the client writes (one packet per write): CONNACK, SUBACK, PUBACK, PINGRESP.

    ``drop_pubacks``: PUBLISHes to leave unacknowledged; ``garbage``: bytes sent after the first CONNACK.
    """

    def __init__(self, drop_pubacks=0, garbage=None, refuse=0):
        self.drop_pubacks = drop_pubacks
        self.garbage = garbage
        self.refuse = refuse
        self.conns = 0
        self.packets = []  # (connection number, raw packet) in arrival order

    async def open_connection(self, host, port, **kw):
        self.conns += 1
        pipe = _Pipe()
        return pipe, _Writer(self, pipe)

    def on_packet(self, pipe, data):
        self.packets.append((self.conns, data))
        ptype = data[0] >> 4
        length, i = mp.decode_varint(data, 1)
        if ptype == ms.CONNECT:
            if self.refuse:
                self.refuse -= 1
                pipe.feed(ms.encode_connack(5))
                return
            pipe.feed(ms.encode_connack(0))
            if self.garbage is not None and self.conns == 1:
                pipe.feed(self.garbage)
        elif ptype == ms.SUBSCRIBE:
            pid = (data[i] << 8) | data[i + 1]
            j = i + 2
            codes = []
            while j < len(data):
                n = (data[j] << 8) | data[j + 1]
                j += 2 + n
                codes.append(data[j])
                j += 1
            pipe.feed(ms.encode_suback(pid, codes))
        elif ptype == mp.PUBLISH and (data[0] >> 1) & 3 == 1:
            tlen = (data[i] << 8) | data[i + 1]
            pid = (data[i + 2 + tlen] << 8) | data[i + 3 + tlen]
            if self.drop_pubacks > 0:
                self.drop_pubacks -= 1
            else:
                pipe.feed(mp.encode_puback(pid))
        elif ptype == ms.PINGREQ:
            pipe.feed(ms.encode_pingresp())

    def of_type(self, ptype):
        return [p for _, p in self.packets if p[0] >> 4 == ptype]


def _client(broker, **kw):
    args = dict(client_id="n1", open_connection=broker.open_connection, puback_timeout_ms=40,
                publish_retries=2, backoff_min_ms=5, backoff_max_ms=20, keepalive_s=60, rand=lambda: 0.5)
    args.update(kw)
    return mqtt.MQTTClient("broker.invalid", 1883, **args)


async def _until(cond, timeout_s=3):
    async def poll():
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


def test_backoff_bounds_and_cap():
    assert mqtt.backoff_ms(0, 1000, 60000, lambda: 0.0) == 500  # equal jitter: never below half
    assert mqtt.backoff_ms(0, 1000, 60000, lambda: 0.999) == 999
    assert mqtt.backoff_ms(1, 1000, 60000, lambda: 0.0) == 1000
    assert mqtt.backoff_ms(3, 1000, 60000, lambda: 0.5) == 6000  # cap 8000: 4000 + 2000
    for attempt in (6, 7, 30, 10000):  # capped at max, no huge shifts
        assert 30000 <= mqtt.backoff_ms(attempt, 1000, 60000, lambda: 0.999) < 60000
    prev = 0
    for attempt in range(10):
        d = mqtt.backoff_ms(attempt, 100, 5000, lambda: 0.0)
        assert d >= prev
        prev = d
    d = mqtt.backoff_ms(2)  # default random source and defaults from protocols/defaults.py
    assert 2000 <= d < 4000


def test_client_id_and_arguments_validated_up_front():
    c = mqtt.MQTTClient("h", rand=lambda: 0.5)
    assert c.client_id == "lookout-7fffffff"
    assert c.port == 1883
    assert mqtt.MQTTClient("h", ssl=True).port == 8883
    with raises(LocalProtocolError, match="wildcard"):
        mqtt.MQTTClient("h", will=("a/#", b"offline"))
    with raises(LocalProtocolError, match="qos"):
        mqtt.MQTTClient("h", birth=("a", b"online", 2))
    with raises(LocalProtocolError, match="backoff"):
        mqtt.MQTTClient("h", backoff_min_ms=10, backoff_max_ms=5)
    assert issubclass(mqtt.DeliveryFailed, mqtt.NotConnected)


def test_publish_offline_raises_not_connected():
    async def body():
        c = mqtt.MQTTClient("h", client_id="n1")
        assert not c.is_connected()
        with raises(mqtt.NotConnected, match="not connected"):
            await c.publish("lookout/v1/s1/n1/evt", b"{}", qos=1)
        with raises(LocalProtocolError, match="qos"):
            await c.publish("a", b"", qos=2)
        assert await c.subscribe("lookout/v1/s1/n1/cmd", 1) is None  # remembered for the next connect
        assert c.subs == {"lookout/v1/s1/n1/cmd": 1}
        with raises(LocalProtocolError, match="topic_filter"):
            await c.subscribe("a/#/b")

    return _drive(body())


def test_inbox_counts_drops():
    async def body():
        broker = _FakeBroker()
        c = _client(broker, inbox_size=2)  # no handler: messages queue for next_message()
        c.start()
        await asyncio.wait_for(c.connected.wait(), 3)
        pub = mp.encode_publish
        c.reader.feed(pub("cmd/a", b"1", 1, False, False, 7) + pub("cmd/b", b"2")
                            + pub("cmd/c", b"3", 1, False, False, 8))
        await _until(lambda: c.dropped == 1)
        assert len(c.inbox) == 2
        assert broker.of_type(mp.PUBACK) == [b"\x40\x02\x00\x07"]  # queued = acked; the dropped one is not
        assert (await c.next_message()).topic == "cmd/a"
        assert (await c.next_message()).payload == b"2"
        await c.disconnect()

    return _drive(body())


def test_connect_resubscribe_birth_then_resend_with_dup():
    async def body():
        broker = _FakeBroker()
        c = _client(broker, birth=("s/n1", b"online"), will=("s/n1", b"offline"))
        await c.subscribe("cmd/#", 1)
        c.start()
        await asyncio.wait_for(c.connected.wait(), 3)
        kinds = [p[0] >> 4 for _, p in broker.packets]
        assert kinds == [ms.CONNECT, ms.SUBSCRIBE, mp.PUBLISH]  # subscribed before announcing the birth
        assert broker.of_type(mp.PUBLISH)[0][0] == 0x33  # birth: QoS 1, retained
        broker.drop_pubacks = 1
        await c.publish("evt", b"x", qos=1)
        sent = broker.of_type(mp.PUBLISH)[1:]
        assert len(sent) == 2
        assert sent[0][0] == 0x32 and sent[1][0] == 0x3A  # the resend carries DUP
        assert sent[0][1:] == sent[1][1:]  # same packet id, same content
        assert c.connects == 1
        await c.disconnect()
        assert broker.of_type(ms.DISCONNECT)
        will = broker.of_type(mp.PUBLISH)[-1]  # the will: we publish it (§3.14.4 drops it)
        assert will[0] == 0x33 and will[2:8] == b"\x00\x04s/n1" and will.endswith(b"offline")
        assert not c.is_connected()

    return _drive(body())


def test_no_puback_raises_delivery_failed_and_reconnects():
    async def body():
        broker = _FakeBroker()
        c = _client(broker)
        c.start()
        await asyncio.wait_for(c.connected.wait(), 3)
        broker.drop_pubacks = 3
        with raises(mqtt.DeliveryFailed, match="3 sends"):
            await c.publish("evt", b"x", qos=1)
        await _until(lambda: c.connects == 2)
        await c.publish("evt", b"y", qos=1)
        await c.disconnect()

    return _drive(body())


def test_malformed_packet_reconnects_instead_of_dying():
    async def body():
        logs = []
        broker = _FakeBroker(garbage=b"\x36\x00")  # QoS bits 3: malformed (§3.3.1.2)
        c = _client(broker, on_log=lambda level, text: logs.append((level, text)))
        c.start()
        await _until(lambda: c.connects >= 2 and c.is_connected())
        assert [t for lv, t in logs if lv == "warning" and "malformed" in t]
        assert c.last_error.startswith("malformed packet")
        await c.publish("evt", b"ok", qos=1)
        await c.disconnect()

    return _drive(body())


def test_refused_connack_backs_off_and_retries():
    async def body():
        broker = _FakeBroker(refuse=2)
        c = _client(broker)
        c.start()
        await asyncio.wait_for(c.connected.wait(), 3)
        assert broker.conns == 3
        assert c.connects == 1
        await c.disconnect()

    return _drive(body())


def test_incoming_qos1_acked_after_handler_in_order():
    async def body():
        broker = _FakeBroker()
        seen = []

        async def handler(msg):
            seen.append((msg.topic, msg.payload, len(broker.of_type(mp.PUBACK))))
            await c.publish("res", msg.payload, qos=1)  # publishing from a handler must not deadlock

        c = _client(broker, on_message=handler)
        c.start()
        await asyncio.wait_for(c.connected.wait(), 3)
        pipe = c.reader
        pipe.feed(mp.encode_publish("cmd/a", b"1", 1, False, False, 7) + mp.encode_publish("cmd/b", b"2", 0)
                  + mp.encode_publish("cmd/c", b"3", 1, False, False, 8))
        await _until(lambda: len(broker.of_type(mp.PUBACK)) == 2)
        assert [s[:2] for s in seen] == [("cmd/a", b"1"), ("cmd/b", b"2"), ("cmd/c", b"3")]
        assert seen[0][2] == 0  # no PUBACK before the handler ran
        assert broker.of_type(mp.PUBACK) == [b"\x40\x02\x00\x07", b"\x40\x02\x00\x08"]  # §4.6 order
        await c.disconnect()

    return _drive(body())

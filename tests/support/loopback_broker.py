"""An in-process MQTT 3.1.1 broker for one client: a test double, not node code.

For the MicroPython (wasm) runtime, which has no sockets, and for the footprint bench. Runs on CPython and
MicroPython. The node's MQTT client gets it as its transport:
``hal.open_connection = broker.open_connection``.
The client's bytes are decoded with ``protocols.mqttserver`` (a malformed packet closes the connection, as a
real broker would, §4.8); answers are CONNACK (accepted, or 1 for a protocol level other than 4), SUBACK
granting the requested QoS (at most 1), UNSUBACK, PUBACK, PINGRESP; DISCONNECT closes. ``published`` records
the client's messages as ``(topic, payload)``; ``inject(topic, payload)`` delivers a QoS 1 message to it.
"""

import asyncio

from protocols import mqttpacket as mp
from protocols import mqttserver as ms
from protocols.errors import MQTTPacketError


class _LoopStream:
    """One client connection: the client's reader and writer in one object."""

    def __init__(self, broker):
        self.broker = broker
        self.rx = b""
        self.ev = asyncio.Event()
        self.closed = False
        self.packets = ms.server_reader()

    # reader side (what the broker sends to the client)
    async def read(self, n):
        while not self.rx and not self.closed:
            self.ev.clear()
            await self.ev.wait()
        d, self.rx = self.rx[:n], self.rx[n:]
        return d

    def feed(self, data):
        if not self.closed:
            self.rx += data
            self.ev.set()

    # writer side (what the client sends)
    def write(self, data):
        if self.closed:
            return
        try:
            self.packets.receive_data(bytes(data))
            while True:
                p = self.packets.next_event()
                if p is mp.NEED_DATA:
                    return
                self.broker._packet(self, p)
        except MQTTPacketError as e:
            self.broker.errors.append(e)
            self.close()

    async def drain(self):
        pass

    def close(self):
        self.closed = True
        self.ev.set()

    async def wait_closed(self):
        pass


class LoopbackBroker:
    def __init__(self):
        self.published = []
        self.errors = []  # MQTTPacketError from malformed client packets (each closed its connection)
        self.conn = None
        self._pid = 0

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        self.conn = _LoopStream(self)
        return self.conn, self.conn

    def _packet(self, c, p):
        t = p.type
        if t == ms.CONNECT:
            c.feed(ms.encode_connack(0 if p.level == 4 else 1))
        elif t == ms.SUBSCRIBE:
            c.feed(ms.encode_suback(p.packet_id, [min(q, 1) for _, q in p.topics]))
        elif t == ms.UNSUBSCRIBE:
            c.feed(ms.encode_unsuback(p.packet_id))
        elif t == ms.PUBLISH:
            if p.qos:
                c.feed(mp.encode_puback(p.packet_id))
            self.published.append((p.topic, p.payload))
        elif t == ms.PINGREQ:
            c.feed(ms.encode_pingresp())
        elif t == ms.DISCONNECT:
            c.close()

    def inject(self, topic, payload):
        self._pid = self._pid % 65535 + 1
        self.conn.feed(mp.encode_publish(topic, payload, 1, False, False, self._pid))

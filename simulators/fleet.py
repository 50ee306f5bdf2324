"""A fleet of simulated GPS nodes for load: many nodes per process over a few MQTT connections.

Theory of operation
-------------------
``Fleet(host, port, site, ids, conns=K)`` opens K plain MQTT 3.1.1 connections (asyncio streams, packets from
``protocols/mqttpacket``) and spreads the nodes over them; what the gateway receives is what N separate nodes
would send (the topic names the node, not the connection): each node's retained ``birth`` (QoS 1, as a node's),
then a heartbeat every ``hb_s`` and a location every ``loc_s`` (QoS 0, the documented rates: GB/T 28181 style 30 s
and 5 s), each node at its own phase, with per-channel sequence numbers. Sharing connections is what lets one
process carry 20,000 nodes (one paho client per node costs a thread's worth of work per node); the price is that
nodes have no last will of their own, which a load test does not need (liveness here is the heartbeat deadline).

``run(seconds)`` sends on a 50 ms tick (a late tick catches up: no message is skipped, so the offered rate is
exact); ``blast(count)`` sends ``count`` heartbeats as fast as the sockets take them (saturated ingest);
``sent`` counts by channel. Reads are drained (PUBACKs of the births, PINGRESP) and a PINGREQ keeps each
connection alive. Not firmware: ``simulators/node.py`` runs the real one; ``fakenode.py`` is one paho node that
answers commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence

from lookout.protocols import mqttpacket, topics

TICK_S = 0.05
KEEPALIVE_S = 60


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.pid = 0
        self.acked = 0
        self.task: asyncio.Task[None] | None = None

    def next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    async def drain_reads(self) -> None:
        r = mqttpacket.PacketReader()
        while True:
            data = await self.reader.read(65536)
            r.receive_data(data)
            while True:
                ev = r.next_event()
                if ev is mqttpacket.NEED_DATA or ev is mqttpacket.CLOSED:
                    break
                if ev.type == mqttpacket.PUBACK:
                    self.acked += 1
            if not data:
                return


class Fleet:
    def __init__(self, host: str, port: int, site: str, ids: Sequence[str], conns: int = 4, hb_s: int = 30,
                 loc_s: int = 5, kind: str = "sensor", seed: int = 1, client_prefix: str = "fleet"):
        self.host, self.port, self.site = host, port, site
        self.ids = list(ids)
        self.nconns = max(1, min(conns, len(self.ids)))
        self.hb_s, self.loc_s, self.kind = hb_s, loc_s, kind
        self.client_prefix = client_prefix
        rnd = random.Random(seed)
        base = topics.ROOT + "/" + site + "/"
        self._topic = {d: (base + d + "/hb", base + d + "/loc") for d in self.ids}
        # each node at its own phase: slot index on the tick grid within its period
        self._hb_slots = self._slots(rnd, hb_s)
        self._loc_slots = self._slots(rnd, loc_s)
        self._pos = {d: (299000000 + rnd.randrange(20000), 1196000000 + rnd.randrange(20000)) for d in self.ids}
        self._seq: dict[str, list[int]] = {d: [0, 0] for d in self.ids}
        self._conn_of = {d: i % self.nconns for i, d in enumerate(self.ids)}
        self.conns: list[_Conn] = []
        self.sent = {"birth": 0, "hb": 0, "loc": 0}
        self.started = time.monotonic()
        self._ping: asyncio.Task[None] | None = None

    def _slots(self, rnd: random.Random, period_s: int) -> list[list[str]]:
        n = max(1, round(period_s / TICK_S))
        slots: list[list[str]] = [[] for _ in range(n)]
        for d in self.ids:
            slots[rnd.randrange(n)].append(d)
        return slots

    async def __aenter__(self) -> Fleet:
        for k in range(self.nconns):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(mqttpacket.encode_connect(f"{self.client_prefix}-{self.site}-{k}", keepalive=KEEPALIVE_S))
            await writer.drain()
            pr = mqttpacket.PacketReader()
            while True:
                data = await asyncio.wait_for(reader.read(4096), 10)
                if not data:
                    raise ConnectionError("broker closed the connection before CONNACK")
                pr.receive_data(data)
                ev = pr.next_event()
                if ev is not mqttpacket.NEED_DATA:
                    break
            if ev.type != mqttpacket.CONNACK or ev.return_code != 0:
                raise ConnectionError(f"broker refused the fleet connection: {ev!r}")
            c = _Conn(reader, writer)
            c.task = asyncio.get_running_loop().create_task(c.drain_reads())
            self.conns.append(c)
        self._ping = asyncio.get_running_loop().create_task(self._pinger())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ping is not None:
            self._ping.cancel()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.writer.write(mqttpacket.DISCONNECT_BYTES)
                c.writer.close()
            if c.task is not None:
                c.task.cancel()
        self.conns = []

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S / 2)
            for c in self.conns:
                c.writer.write(mqttpacket.PINGREQ_BYTES)

    async def births(self, timeout: float = 120.0, bdseq: int = 0) -> None:
        """Every node's retained birth (QoS 1); returns once the broker acknowledged them all."""
        from lookout.protocols import messages

        want = [c.acked for c in self.conns]
        for i, d in enumerate(self.ids):
            c = self.conns[self._conn_of[d]]
            payload = messages.encode("birth", messages.birth(self.kind, bdseq, "fleet-1", self.hb_s, ts=_now_ms(),
                                                              site=self.site))
            c.writer.write(mqttpacket.encode_publish(topics.topic(self.site, d, "state"), payload, 1, True,
                                                     packet_id=c.next_pid()))
            want[self._conn_of[d]] += 1
            if i % 500 == 499:
                await asyncio.gather(*(x.writer.drain() for x in self.conns))
        self.sent["birth"] += len(self.ids)
        await asyncio.gather(*(x.writer.drain() for x in self.conns))
        end = time.monotonic() + timeout
        while any(c.acked < w for c, w in zip(self.conns, want, strict=True)):
            if time.monotonic() > end:
                raise TimeoutError("births not acknowledged by the broker")
            await asyncio.sleep(0.05)

    def _hb(self, d: str, now: int) -> bytes:
        s = self._seq[d]
        s[0] += 1
        return (f'{{"seq":{s[0]},"ts":{now},"up_s":{int(time.monotonic() - self.started)},"hb_s":{self.hb_s},'
                f'"rssi":-70,"bat_mv":3900}}').encode()

    def _loc(self, d: str, now: int) -> bytes:
        s = self._seq[d]
        s[1] += 1
        lat, lon = self._pos[d]
        return (f'{{"seq":{s[1]},"ts":{now},"lat":{lat + s[1] % 7},"lon":{lon},"alt_mm":0,"fix":1,'
                f'"src":"gps"}}').encode()

    async def run(self, seconds: float) -> None:
        """Heartbeats and locations at the documented rates for ``seconds``."""
        t0 = time.monotonic()
        done = 0  # ticks handled
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= seconds:
                return
            due = int(elapsed / TICK_S) + 1
            now = _now_ms()
            while done < due:
                for d in self._hb_slots[done % len(self._hb_slots)]:
                    self.conns[self._conn_of[d]].writer.write(
                        mqttpacket.encode_publish(self._topic[d][0], self._hb(d, now)))
                    self.sent["hb"] += 1
                for d in self._loc_slots[done % len(self._loc_slots)]:
                    self.conns[self._conn_of[d]].writer.write(
                        mqttpacket.encode_publish(self._topic[d][1], self._loc(d, now)))
                    self.sent["loc"] += 1
                done += 1
            await asyncio.gather(*(c.writer.drain() for c in self.conns))
            await asyncio.sleep(max(0.0, t0 + done * TICK_S - time.monotonic()))

    async def blast(self, count: int, chunk: int = 200) -> float:
        """``count`` heartbeats, round robin over the nodes, as fast as the connections take them; returns the
        seconds it took to hand them all to the sockets."""
        t0 = time.monotonic()
        now = _now_ms()
        n = 0
        ids = self.ids
        while n < count:
            for _ in range(min(chunk, count - n)):
                d = ids[n % len(ids)]
                self.conns[self._conn_of[d]].writer.write(
                    mqttpacket.encode_publish(self._topic[d][0], self._hb(d, now)))
                n += 1
            await asyncio.gather(*(c.writer.drain() for c in self.conns))
        self.sent["hb"] += count
        return time.monotonic() - t0

    def rate(self) -> float:
        """Messages per second ``run`` offers: every node's heartbeat and location."""
        return len(self.ids) * (1 / self.hb_s + 1 / self.loc_s)

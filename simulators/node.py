"""SimNode: the REAL node firmware (lookout_node.node.Node over hal_host.HostHal) in the current asyncio loop.

Used by the integration tests and the gateway demo::

    node = SimNode(tmpdir, make_config("spk-01", "dongshan", "speaker", key_hex, host, port))
    node.add_clip("nofish", seconds=1)
    await node.start(); await node.wait_online()
    node.trigger_pir(); node.feed_gps(nmea.encode_gga(...)); await node.kill()  # last will fires
    await node.stop()

A reboot command (or a config change on trial) ends ``Node.run()``; SimNode then boots a new Node from the
same directory, exactly as a board would after ``machine.reset()``: flash (config, counters, outbox) survives,
RAM does not.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

from lookout.tools import firmware_host

firmware_host.install()  # this module hosts the firmware: the device names protocols and lookout_node

from lookout_node import hal_host  # noqa: E402
from lookout_node.node import Node  # noqa: E402


def make_config(device_id, site, role, key_hex, host="127.0.0.1", port=1883, **extra) -> dict:
    cfg = {"id": device_id, "site": site, "role": role, "key": key_hex,
           "broker": {"host": host, "port": port, "user": device_id, "password": "", "tls": False, "keepalive": 30},
           "transport": "mqtt", "hb_s": 30, "loc_s": 5, "position": {"lat": 300000000, "lon": 1200000000,
                                                                      "alt_mm": 0},
           "quiet_hours": [], "local_warning": {"enabled": False, "clip": "nofish"}}
    cfg.update(extra)
    return cfg


def wav_bytes(ms=1000, rate=8000) -> bytes:
    """A mono 16-bit WAV of ``ms`` milliseconds (a quiet sawtooth)."""
    n = rate * ms // 1000
    data = bytes((i * 7) & 0xFF for i in range(n * 2))
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate,
            rate * 2, 2, 16) + b"data" + struct.pack("<I", len(data)) + data)


class SimHal(hal_host.HostHal):
    """HostHal plus the network a simulation needs: ``net`` switches the link (a connection attempt while it is
    down fails), ``kill_connections()`` drops every open connection without a DISCONNECT (the broker then
    publishes the will), and ``lose_tx`` (callable (topic, payload) -> True) drops a publish of the node's
    ``publish()`` ("lost on air")."""

    def __init__(self, root, **kw):
        super().__init__(root, **kw)
        self.net = True
        self.writers = []
        self.lose_tx = None

    def network_up(self):
        return self.net

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        if not self.net:
            raise OSError("network down (host hal)")
        r, w = await super().open_connection(host, port, ssl, server_hostname)
        self.writers.append(w)
        return r, w

    def kill_connections(self):
        """Drop every open connection without a DISCONNECT, like a modem losing power (last will fires)."""
        ws, self.writers = self.writers, []
        for w in ws:
            t = getattr(w, "transport", None)
            if t is not None:
                t.abort()
            else:
                try:
                    w.close()
                except Exception:
                    pass

    def lossy(self, publish):
        """Wrap a node's ``publish`` so ``lose_tx`` can drop messages."""
        async def pub(topic, payload, qos=0, retain=False):
            if self.lose_tx is not None and self.lose_tx(topic, payload):
                return
            await publish(topic, payload, qos, retain)
        return pub


class SimNode:
    def __init__(self, root, config=None, speed=1, gps=False, pir=False, camera=False, mqtt_opts=None,
                 log=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (self.root / "config.json").write_text(json.dumps(config))
        self.hal = SimHal(str(self.root), speed=speed, gps=gps, pir=pir, camera=camera)
        self.hal.on_reboot = self._on_reboot
        self.mqtt_opts = mqtt_opts if mqtt_opts is not None else {"backoff_min_ms": 100, "backoff_max_ms": 1000}
        self.log = log
        self.node: Node | None = None
        self.boots = 0
        self.exits: list[str] = []
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._booted = asyncio.Event()

    # ---- setup ---------------------------------------------------------------------------------------------
    def add_clip(self, clip_id, data=None, ms=1000):
        (self.root / "clips").mkdir(exist_ok=True)
        (self.root / "clips" / clip_id).write_bytes(data if data is not None else wav_bytes(ms))

    @property
    def plays(self):
        return self.hal.audio.plays

    # ---- lifecycle -------------------------------------------------------------------------------------------
    async def start(self):
        self._stopping = False
        self.hal.net = True
        self._booted.clear()
        self._task = asyncio.create_task(self._loop())
        await asyncio.wait_for(self._booted.wait(), 5)
        return self

    async def _loop(self):
        while not self._stopping:
            self.node = Node(self.hal, mqtt_opts=self.mqtt_opts, log=self.log)
            self.node.publish = self.hal.lossy(self.node.publish)
            self.boots += 1
            self._booted.set()
            reason = await self.node.run()
            self.exits.append(reason)
            if reason in ("stop", "kill"):
                return
            self.hal.audio.stop()

    def _on_reboot(self):
        if self.node is not None:
            self.node.request_exit("reboot")

    async def wait_online(self, timeout=10.0):
        async def _w():
            while self.node is None or self.node.client is None or not self.node.client.is_connected():
                await asyncio.sleep(0.02)
        await asyncio.wait_for(_w(), timeout)

    async def wait_boots(self, n, timeout=10.0):
        async def _w():
            while self.boots < n:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(_w(), timeout)

    async def stop(self):
        """Graceful stop: the node publishes its own death and disconnects."""
        self._stopping = True
        if self.node is not None and self._task is not None and not self._task.done():
            self.node.request_exit("stop")
            await asyncio.wait_for(self._task, 10)

    async def kill(self):
        """Abrupt loss (power/modem): the socket drops without DISCONNECT, so the broker publishes the will."""
        self._stopping = True
        self.hal.net = False
        self.hal.kill_connections()
        if self.node is not None and self._task is not None and not self._task.done():
            self.node.request_exit("kill")
            await asyncio.wait_for(self._task, 10)

    # ---- stimuli -----------------------------------------------------------------------------------------------
    def trigger_pir(self, at_ticks=None):
        self.hal.pir.trigger(at_ticks)

    def feed_gps(self, data: bytes):
        self.hal.gps.feed(data)

    def network(self, up: bool):
        """Cut or restore the node's network (a cut also drops the open connection)."""
        self.hal.net = up
        if not up:
            self.hal.kill_connections()

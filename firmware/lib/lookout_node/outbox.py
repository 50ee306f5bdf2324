"""Outbox: events and command results waiting for the broker, kept across outages and reboots.

Theory of operation (ThingsBoard gateway users report data lost in offline storage): an item is appended before the
first send attempt and removed only after the broker acknowledged it (PUBACK for QoS 1), so a crash or link loss
between the two re-sends it (at-least-once; the gateway de-duplicates by the message ``id``). The queue is
bounded by item count and by bytes; when full the *oldest* item is dropped and ``dropped`` counts it, and the
heartbeat reports both figures. Every change is written to ``outbox.json`` through FileStore's write-then-rename,
so a power cut leaves either the old or the new queue. Heartbeats and location reports never go here: a stale
one is worth nothing.
"""

import json

from lookout_node.hal import asyncio


class Outbox:
    # bounds, design choices: 64 items = a few hours of events at a busy ferry landing after rate limiting;
    # 24 KB of flash-backed JSON, loaded into RAM at boot
    def __init__(self, fs=None, name="outbox.json", max_items=64, max_bytes=24576):
        if max_items < 1 or max_bytes < 64:
            raise ValueError("outbox bounds too small")
        self.fs = fs
        self.name = name
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items = []  # [topic, payload text]
        self.bytes = 0
        self.dropped = 0
        self._ev = asyncio.Event()
        raw = fs.read(name) if fs is not None else None
        try:
            d = json.loads(raw) if raw else {}
            for t, p in d.get("items", ()):
                t, p = str(t), str(p)
                self.items.append([t, p])
                self.bytes += len(t) + len(p)
            self.dropped = int(d.get("dropped", 0))
        except (ValueError, TypeError, AttributeError):  # a corrupt file: start empty rather than refuse to boot
            self.items = []
            self.bytes = self.dropped = 0
        self._trim()
        if self.items:
            self._ev.set()

    def _save(self):
        if self.fs is not None:
            self.fs.write(self.name, json.dumps({"dropped": self.dropped, "items": self.items}).encode())

    def _trim(self):
        n = 0
        while self.items and (len(self.items) > self.max_items or self.bytes > self.max_bytes):
            t, p = self.items.pop(0)
            self.bytes -= len(t) + len(p)
            self.dropped += 1
            n += 1
        return n

    def put(self, topic, payload):
        """Queue one message (payload bytes or text); returns how many old items were dropped to make room."""
        if isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload).decode()
        size = len(topic) + len(payload)
        if size > self.max_bytes:
            self.dropped += 1
            self._save()
            return 1
        self.items.append([topic, payload])
        self.bytes += size
        n = self._trim()
        self._save()
        self._ev.set()
        return n

    def peek(self):
        if self.items:
            t, p = self.items[0]
            return t, p.encode()
        return None

    def pop(self):
        """Remove the head after the broker acknowledged it."""
        head = self.peek()
        if head is not None:
            t, p = self.items.pop(0)
            self.bytes -= len(t) + len(p)
            if not self.items:
                self._ev.clear()
            self._save()
        return head

    def __len__(self):
        return len(self.items)

    async def wait(self):
        """Return when there is something to send."""
        while not self.items:
            self._ev.clear()
            await self._ev.wait()

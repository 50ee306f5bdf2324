"""Outbox: events and command results waiting for the broker, kept across outages, reboots and power cuts.

Theory of operation (ThingsBoard gateway users report data lost in offline storage):
- An item is appended before the first send attempt and removed only after the broker acknowledged it (PUBACK
  for QoS 1), so a crash or link loss between the two re-sends it (at-least-once; the gateway de-duplicates by
  the message ``id``). Every item has its own number (``iid``): the sender ``take()``s the oldest, and after the
  PUBACK ``ack(iid)`` removes exactly that item, whatever arrived or was dropped meanwhile.
- Bounds: item count and bytes. When full, a victim is chosen by rank, then age: location reports first, then
  command results, events last (``RANKS``); the item being sent is never the victim (it is probably delivered
  already). The victim may be the item just put (a result arriving while the box is full of events). Every
  victim is counted in ``dropped`` (heartbeat), persistently.
- Storage is an append-only log of one-line records, so a message costs two small appends (``P`` when put, ``A``
  when acknowledged; ``D`` for a victim) instead of a rewrite of the queue. Each line is
  ``<8 hex: first 4 bytes of SHA-256 of the rest><record>\\n``; a line that does not check (a torn last append,
  a zeroed FAT sector) is skipped and the rest still loads.
- Two files, ``<name>.0`` and ``<name>.1``, take turns: when the log passes ``log_limit`` bytes (or the queue is
  empty and the log is past an eighth of that) the live items are written as a snapshot into the other file
  (a header ``H<gen> <next iid> <dropped> <n>`` and ``n`` puts, one FileStore write), then the old file is
  removed. At boot the file with the highest generation whose snapshot is complete wins and the other is
  removed, so a power cut at any point leaves the old or the new log. A log with a bad line is compacted at boot,
  so the next append never extends a torn line.
Heartbeats never go here (a stale one is worth nothing); ``loc`` has the lowest rank should a caller queue one.
"""

from lookout_node.hal import asyncio, seal, unseal

RANKS = {"loc": 0, "evt": 2}  # any other channel (res): 1


def _line(body):
    """One record as stored: check, body, newline (bytes)."""
    return seal(body.encode()) + b"\n"


def _body(line):
    """The record body of a stored line, or None if the line is torn or damaged."""
    if line[-1:] != b"\n":
        return None
    b = unseal(line[:-1])
    if not b:
        return None
    try:
        return b.decode()
    except UnicodeError:
        return None


class Outbox:
    # bounds, design choices: 64 items = a few hours of events at a busy ferry landing after rate limiting;
    # 24 KB of queued JSON held in RAM; the log on flash stays under log_limit (+ one record) per file
    def __init__(self, fs=None, name="outbox", max_items=64, max_bytes=24576, log_limit=None):
        if max_items < 1 or max_bytes < 64:
            raise ValueError("outbox bounds too small")
        self.fs = fs
        self.name = name
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.log_limit = log_limit or 2 * max_bytes
        self.items = []  # [iid, rank, topic, payload text], oldest first
        self.bytes = 0
        self.dropped = 0
        self.next = 1  # iid of the next item
        self.gen = -1  # generation of the current log file; -1: none yet
        self.size = 0  # bytes in the current log file
        self.inflight = None  # iid being sent (never chosen as a victim)
        self._ev = asyncio.Event()
        damaged = self._load() if fs is not None else False
        self._make_room()
        if damaged:
            self._compact()
        if self.items:
            self._ev.set()

    # ---- storage ------------------------------------------------------------------------------------------
    def _file(self, gen):
        return "%s.%d" % (self.name, gen & 1)

    def _scan(self, name):
        """(gen, header, records, size, damaged) of one log file; gen -1 when it has no complete snapshot."""
        try:
            f = self.fs.open(name, "rb")
        except OSError:
            return -1, None, None, 0, False
        recs = []
        gen = head = None
        want = size = 0  # want: snapshot records still to come after the header
        damaged = False
        try:
            while True:
                line = f.readline()
                if not line:
                    break
                size += len(line)
                body = _body(line)
                if body is None or (head is None and body[0] != "H") or (want and body[0] != "P"):
                    if head is None or want:
                        break  # no header, or a snapshot cut short: the file is not usable
                    damaged = True
                    continue
                if head is None:
                    head = [int(x) for x in body[1:].split(" ")]
                    gen, want = head[0], head[3]
                    continue
                if want:
                    want -= 1
                recs.append(body)
        except (ValueError, IndexError):
            head = None
        finally:
            f.close()
        if head is None or want:
            return -1, None, None, 0, True
        return gen, head, recs, size, damaged

    def _load(self):
        """Replay the newest complete log; remove the other file. Returns True when a line was damaged."""
        a = self._scan(self._file(0))
        b = self._scan(self._file(1))
        cur, other = (a, 1) if a[0] >= b[0] else (b, 0)
        if cur[0] < 0:  # a fresh node, or nothing usable
            if a[4] or b[4]:
                for i in (0, 1):
                    self.fs.remove(self._file(i))
            return a[4] or b[4]
        self.fs.remove(self._file(other))
        self.gen, head, recs, self.size, damaged = cur
        self.next, self.dropped = head[1], head[2]
        live = set()
        for r in recs:
            k = r[0]
            if k == "P":
                iid, t, p = r[1:].split(" ", 2)
                iid = int(iid)
                if iid not in live:
                    live.add(iid)
                    self.items.append([iid, self._rank(t), t, p])
                    self.bytes += len(t) + len(p)
            elif k == "A" or k == "D":
                iid = int(r[1:])
                if k == "D":
                    self.dropped += 1
                if iid in live:
                    live.remove(iid)
                    self._remove(iid)
            else:
                continue
            if iid >= self.next:
                self.next = iid + 1
        return damaged

    def _append(self, body):
        if self.fs is None:
            return
        if self.gen < 0:
            self._compact()
        line = _line(body)
        self.fs.append(self._file(self.gen), line)
        self.size += len(line)

    def _compact(self):
        """Write the live items as a snapshot into the other file, then remove the current one."""
        if self.fs is None:
            return
        old = self.gen
        self.gen += 1
        out = [_line("H%d %d %d %d" % (self.gen, self.next, self.dropped, len(self.items)))]
        for it in self.items:
            out.append(_line("P%d %s %s" % (it[0], it[2], it[3])))
        data = b"".join(out)
        self.fs.remove(self._file(self.gen))
        self.fs.write(self._file(self.gen), data)
        self.size = len(data)
        if old >= 0:
            self.fs.remove(self._file(old))

    def _maybe_compact(self):
        if self.size > self.log_limit or (not self.items and self.size > self.log_limit // 8):
            self._compact()

    # ---- queue --------------------------------------------------------------------------------------------
    @staticmethod
    def _rank(topic):
        return RANKS.get(topic[topic.rfind("/") + 1:], 1)

    def _remove(self, iid):
        for i, it in enumerate(self.items):
            if it[0] == iid:
                self.items.pop(i)
                self.bytes -= len(it[2]) + len(it[3])
                return True
        return False

    def _make_room(self):
        """Drop victims (lowest rank, then oldest; never the one in flight) until within bounds."""
        n = 0
        while len(self.items) > self.max_items or self.bytes > self.max_bytes:
            victim = None
            for it in self.items:
                if it[0] != self.inflight and (victim is None or it[1] < victim[1]):
                    victim = it
            if victim is None:
                break
            self._remove(victim[0])
            self._append("D%d" % victim[0])
            self.dropped += 1  # after the append: a first append writes a header, which must not count it
            n += 1
        return n

    def put(self, topic, payload):
        """Queue one message (payload bytes or text); returns how many items were dropped to make room (the new
        one included, if it was the victim)."""
        if isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload).decode()
        if "\n" in payload or " " in topic or "\n" in topic:
            raise ValueError("outbox: a topic without spaces and a one-line payload expected")
        iid = self.next
        self.next += 1
        size = len(topic) + len(payload)
        if size > self.max_bytes:
            self._append("D%d" % iid)
            self.dropped += 1
            return 1
        self._append("P%d %s %s" % (iid, topic, payload))
        self.items.append([iid, self._rank(topic), topic, payload])
        self.bytes += size
        n = self._make_room()
        self._maybe_compact()
        if self.items:
            self._ev.set()
        return n

    def peek(self):
        """(topic, payload bytes) of the item the sender would take next, or None."""
        if self.items:
            it = self.items[0]
            return it[2], it[3].encode()
        return None

    def take(self):
        """(iid, topic, payload bytes) of the oldest item, now in flight; None when empty."""
        if not self.items:
            return None
        it = self.items[0]
        self.inflight = it[0]
        return it[0], it[2], it[3].encode()

    def release(self):
        """The send failed (link down): the item in flight may be chosen as a victim again."""
        self.inflight = None

    def ack(self, iid):
        """The broker acknowledged item ``iid``: remove exactly it (False if it had been dropped meanwhile)."""
        if self.inflight == iid:
            self.inflight = None
        if not self._remove(iid):
            return False
        self._append("A%d" % iid)
        if not self.items:
            self._ev.clear()
        self._maybe_compact()
        return True

    def __len__(self):
        return len(self.items)

    async def wait(self):
        """Return when there is something to send."""
        while not self.items:
            self._ev.clear()
            await self._ev.wait()

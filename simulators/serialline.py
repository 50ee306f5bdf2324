"""A serial line for simulated recorders: a pseudo-terminal pair behind a device link, paced like a real line.

Theory of operation
-------------------
``PtyCable`` is the USB cable: a pty pair whose slave end appears at a device path of our choosing (a symlink,
as udev makes ``/dev/serial/by-id/usb-...``), which the gateway opens with pyserial like any USB-serial
adapter. ``unplug()`` removes the link and closes both ends, so the device vanishes (the gateway's read fails
and its watcher sees the path go); ``plug()`` creates a fresh pair at the same path. The simulator keeps a slave
fd of its own open, so the pty lives (and the master never reads EIO) while the gateway has it closed.

``PacedLine`` is one direction of the wire: bytes leave one after another at ``baud / 10`` bytes per second
(8N1: start bit, 8 data bits, stop bit), arrive ``latency_ms`` later (a radio modem's delay), and suffer
injected faults on the way: each *data* bit flips with probability ``ber``, each byte is lost with probability
``drop``. The writer sees a transmit FIFO (``backlog``) and hands over frames only while it has room, so
throughput is bounded like a UART's, and a frame's timestamp is when it starts to leave. The schedule is kept in
absolute time, so an event loop that wakes late never slows the line below its nominal rate (it catches up
with a burst, as a UART's FIFO would have).

Faults are drawn from a seeded ``random.Random`` with geometric gaps (one draw per fault, not per bit), so a
line at 921,600 baud costs little CPU.
"""

from __future__ import annotations

import math
import os
import random
import tty
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LineConfig:
    """Line emulation. ``baud``: symbol rate (bytes/s = baud / 10 for 8N1); ``ber``: bit error rate on data
    bits; ``drop``: probability a byte is lost; ``latency_ms``: one-way delay; ``seed``: fault pattern."""

    baud: int = 115200
    ber: float = 0.0
    drop: float = 0.0
    latency_ms: float = 0.0
    seed: int | None = None

    @property
    def bytes_per_s(self) -> float:
        return self.baud / 10

    def __post_init__(self) -> None:
        if self.baud < 300:
            raise ValueError(f"baud {self.baud}: at least 300")
        if not 0 <= self.ber < 0.1 or not 0 <= self.drop < 0.5:
            raise ValueError(f"ber {self.ber} / drop {self.drop} out of range")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")


class _Gaps:
    """Positions of independent events with probability ``p`` each: geometric gaps from one random draw."""

    def __init__(self, p: float, rng: random.Random):
        self.p = p
        self.rng = rng
        self.left = self._gap()

    def _gap(self) -> int:
        if self.p <= 0:
            return 1 << 62
        u = self.rng.random()
        return int(math.log(1.0 - u) / math.log(1.0 - self.p))

    def hits(self, n: int) -> list[int]:
        """Indexes in ``range(n)`` where an event happens; advances the stream by n trials."""
        out = []
        pos = 0
        while pos + self.left < n:
            pos += self.left
            out.append(pos)
            pos += 1
            self.left = self._gap()
        self.left -= n - pos
        return out


class PacedLine:
    """One direction: ``push(data, now)`` then ``pop(now)`` what has arrived. Times in seconds (monotonic)."""

    def __init__(self, cfg: LineConfig, seed_offset: int = 0):
        self.cfg = cfg
        rng = random.Random(None if cfg.seed is None else cfg.seed + seed_offset)
        self._flips = _Gaps(cfg.ber, rng)
        self._drops = _Gaps(cfg.drop, rng)
        self._rng = rng
        self.free_at = 0.0  # when the transmitter is idle again
        self.queue: list[tuple[float, bytes]] = []
        self.cut = False
        self.sent = 0
        self.flipped = 0
        self.dropped = 0

    def backlog(self, now: float) -> int:
        """Bytes still in the transmit FIFO."""
        left = self.free_at - now
        return 0 if left <= 0 else int(left * self.cfg.bytes_per_s) + 1

    def push(self, data: bytes, now: float) -> None:
        if not data:
            return
        start = max(self.free_at, now)
        self.free_at = start + len(data) / self.cfg.bytes_per_s
        self.sent += len(data)
        if self.cut:
            return
        buf = bytearray(data)
        for i in self._flips.hits(len(buf) * 8):
            buf[i >> 3] ^= 1 << (i & 7)
            self.flipped += 1
        drops = self._drops.hits(len(buf))
        if drops:
            for i in reversed(drops):
                del buf[i]
            self.dropped += len(drops)
        self.queue.append((self.free_at + self.cfg.latency_ms / 1000, bytes(buf)))

    def pop(self, now: float) -> bytes:
        got = []
        while self.queue and self.queue[0][0] <= now:
            got.append(self.queue.pop(0)[1])
        return b"".join(got)

    def next_arrival(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def clear(self) -> None:
        self.queue.clear()


class PtyCable:
    """A pty pair whose slave is reachable at ``path`` (a symlink). ``master`` is ours; the gateway opens ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.master: int | None = None
        self._slave: int | None = None
        self.slave_name: str | None = None
        self.plugs = 0

    @property
    def plugged(self) -> bool:
        return self.master is not None

    def plug(self) -> None:
        if self.master is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, no CR/LF translation: a byte pipe
        tty.setraw(master)
        os.set_blocking(master, False)
        self.master, self._slave = master, slave
        self.slave_name = os.ttyname(slave)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.slave_name)
        tmp.replace(self.path)  # appears atomically, like a udev link
        self.plugs += 1

    def unplug(self) -> None:
        if self.master is None:
            return
        try:
            if self.path.is_symlink() and os.readlink(self.path) == self.slave_name:
                self.path.unlink()
        except FileNotFoundError:
            pass
        for fd in (self.master, self._slave):
            if fd is not None:
                os.close(fd)
        self.master = self._slave = None

    def write(self, data: bytes) -> int:
        """Write what the pty takes now; the rest is lost (a line nobody drains overflows the same way)."""
        if self.master is None or not data:
            return 0
        try:
            return os.write(self.master, data)
        except BlockingIOError:
            return 0
        except OSError:
            return 0

    def read(self) -> bytes:
        if self.master is None:
            return b""
        try:
            return os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:  # EIO: no slave open (cannot happen while we hold one, but never crash on it)
            return b""


__all__ = ["LineConfig", "PacedLine", "PtyCable"]

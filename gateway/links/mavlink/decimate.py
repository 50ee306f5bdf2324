"""Decimation of one telemetry topic: at most ``hz`` publishes a second, and the latest value is always delivered.

Theory of operation (sans-IO: the caller passes the time in ms and runs the timer): a value that arrives when the
last publish is at least one period old goes out at once (``offer`` returns True), so a steady stream is published
with no added delay. A value that arrives sooner is only marked pending; the caller builds the payload from the
vehicle's state when it publishes, so whatever goes out is the newest value, never an old sample (the
mavlink2rest model: latest value per message type). If the stream stops while a value is pending, ``due_ms`` says
when it must go out anyway: one period plus ``tail`` after the last publish. So a 50 Hz stream becomes ``hz``
messages a second and its last value reaches the broker within 1.5 periods: no stale tail.
"""

from __future__ import annotations


class Decimator:
    __slots__ = ("last_ms", "pending", "period_ms", "tail_ms")

    def __init__(self, hz: int, tail_fraction: float = 0.5):
        if hz <= 0:
            raise ValueError(f"rate must be at least 1 Hz, got {hz}")
        self.period_ms = 1000 // hz
        self.tail_ms = int(self.period_ms * tail_fraction)
        self.last_ms: int | None = None
        self.pending = False

    def offer(self, now_ms: int) -> bool:
        """A new value arrived: True = publish it now; False = held (publish by ``due_ms``)."""
        if self.last_ms is None or now_ms - self.last_ms >= self.period_ms:
            self.last_ms = now_ms
            self.pending = False
            return True
        self.pending = True
        return False

    def due_ms(self) -> int | None:
        """When a held value must go out, or None when nothing is held."""
        if not self.pending or self.last_ms is None:
            return None
        return self.last_ms + self.period_ms + self.tail_ms

    def flush(self, now_ms: int) -> bool:
        """The timer fired: True if the held value must be published now."""
        due = self.due_ms()
        if due is None or now_ms < due:
            return False
        self.last_ms = now_ms
        self.pending = False
        return True

    def reset(self) -> None:
        self.last_ms = None
        self.pending = False


__all__ = ["Decimator"]

"""Prometheus metrics of one gateway, on a private ``CollectorRegistry`` (no process-global state).

Devices by state and queue depths are gauges read at scrape time from the registry and the command service
(a callback collector), so they can never drift from the truth; message counters and the command latency
histogram are updated as things happen.

The HTTP server answers in its own thread, but the registry, the command table and the queues belong to the event
loop, which changes them between any two bytecodes: reading them from the server's thread failed with
"dictionary changed size during iteration" (HTTP 500) while devices were being added. Once ``bind_loop`` is
called, every callback gauge is read on the loop (``call_soon_threadsafe``, waiting at most ``READ_TIMEOUT_S``);
a loop that does not answer in time leaves those gauges out of that scrape instead of failing it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_TIMEOUT_S = 5.0

# garbage-collection pauses (seconds): a full collection walks every live container object, so it grows with the
# number of devices and is the event loop's longest stop (issue 17: 41-144 ms at 5,000-10,000 devices)
GC_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)

# command latency buckets (seconds): loopback round trips are ms; a sleeping node on a bad radio link is seconds
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class _OnLoop:
    """Runs a reader on the event loop that owns what it reads (see the module docstring)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = 0

    def read(self, fn: Callable[[], T]) -> T | None:
        loop = self.loop
        if loop is None or threading.get_ident() == self.thread:
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # handed to the scrape's thread, which logs it
                    fut.set_exception(e)

        try:
            loop.call_soon_threadsafe(run)
            return fut.result(READ_TIMEOUT_S)
        except (RuntimeError, concurrent.futures.TimeoutError) as e:  # loop closed, or too busy to answer
            fut.cancel()
            log.warning("metrics: gauges left out of this scrape: the event loop did not answer (%s)",
                        type(e).__name__)
            return None


class _Live(Collector):
    def __init__(self, devices: Callable[[], dict[tuple[str, str], int]], depths: Callable[[], dict[str, int]],
                 on_loop: _OnLoop):
        self._devices = devices
        self._depths = depths
        self._on_loop = on_loop

    def collect(self):
        got = self._on_loop.read(lambda: (self._devices(), self._depths()))
        if got is None:
            return
        devices, depths = got
        g = GaugeMetricFamily("lookout_devices", "Devices by kind and state", labels=["kind", "state"])
        for (kind, state), n in sorted(devices.items()):
            g.add_metric([kind, state], n)
        yield g
        q = GaugeMetricFamily("lookout_commands", "Commands not yet final, by status", labels=["status"])
        for status, n in sorted(depths.items()):
            q.add_metric([status], n)
        yield q


class _Bounds(Collector):
    """Every bounded queue of the gateway: what it holds now and what it refused so far."""

    def __init__(self, bounds: Callable[[], dict[str, tuple[int, int]]], on_loop: _OnLoop):
        self._bounds = bounds
        self._on_loop = on_loop

    def collect(self):
        bounds = self._on_loop.read(self._bounds)
        if bounds is None:
            return
        held = GaugeMetricFamily("lookout_queue_depth", "Items held by a bounded queue", labels=["queue"])
        refused = CounterMetricFamily("lookout_queue_refused", "Items a full bounded queue dropped or refused",
                                      labels=["queue"])
        for name, (n, r) in sorted(bounds.items()):
            held.add_metric([name], n)
            refused.add_metric([name], r)
        yield held
        yield refused


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("lookout_messages_in", "Messages received", ["channel"], registry=r)
        self.messages_out = Counter("lookout_messages_out", "Messages published", ["channel"], registry=r)
        self.rejected = Counter("lookout_messages_rejected", "Messages dropped as invalid, unsigned or forged",
                                ["reason"], registry=r)
        self.commands = Counter("lookout_commands_final", "Commands that reached a final status", ["status"],
                                registry=r)
        self.latency = Histogram("lookout_command_latency_seconds", "First send to final result",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.transitions = Counter("lookout_state_changes", "Device state transitions", ["to"], registry=r)
        self.duplicates = Counter("lookout_duplicates", "Messages already seen (same device and id), absorbed",
                                  ["channel"], registry=r)
        self.send_failures = Counter("lookout_command_sends_failed", "Command sends the broker did not take "
                                     "(link_down: not sent; no_puback: no PUBACK in time); re-sent later",
                                     ["reason"], registry=r)
        self.gc_pause = Histogram("lookout_gc_pause_seconds", "Garbage-collection pauses of the gateway process",
                                  ["generation"], buckets=GC_BUCKETS, registry=r)
        self._server: Any = None
        self._on_loop = _OnLoop()
        self._gc_started = 0.0

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pause.labels(str(info.get("generation"))).observe(time.perf_counter() - self._gc_started)

    def watch_gc(self) -> None:
        """Time every collection (``gc.callbacks`` is process-wide: ``unwatch_gc`` when the gateway stops)."""
        if self._gc not in gc.callbacks:
            gc.callbacks.append(self._gc)

    def unwatch_gc(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the callback gauges on ``loop`` (the one that owns the registry and the command table)."""
        self._on_loop.loop = loop
        self._on_loop.thread = threading.get_ident()

    def bind(self, devices: Callable[[], dict[tuple[str, str], int]], depths: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_Live(devices, depths, self._on_loop))

    def bind_bounds(self, bounds: Callable[[], dict[str, tuple[int, int]]]) -> None:
        """``bounds()`` -> {queue name: (held now, refused so far)}: mqtt_outbox, journal_pending, ..."""
        self.registry.register(_Bounds(bounds, self._on_loop))

    def serve(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self._server = server
        return server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

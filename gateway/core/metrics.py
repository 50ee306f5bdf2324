"""Prometheus metrics of one gateway, on a private ``CollectorRegistry`` (no process-global state).

Devices by state and queue depths are gauges read at scrape time from the registry and the command service
(a callback collector), so they can never drift from the truth; message counters and the command latency
histogram are updated as things happen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# command latency buckets (seconds): loopback round trips are ms; a sleeping node on a bad radio link is seconds
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class _Live(Collector):
    def __init__(self, devices: Callable[[], dict[tuple[str, str], int]], depths: Callable[[], dict[str, int]]):
        self._devices = devices
        self._depths = depths

    def collect(self):
        g = GaugeMetricFamily("lookout_devices", "Devices by kind and state", labels=["kind", "state"])
        for (kind, state), n in sorted(self._devices().items()):
            g.add_metric([kind, state], n)
        yield g
        q = GaugeMetricFamily("lookout_commands", "Commands not yet final, by status", labels=["status"])
        for status, n in sorted(self._depths().items()):
            q.add_metric([status], n)
        yield q


class _Bounds(Collector):
    """Every bounded queue of the gateway: what it holds now and what it refused so far."""

    def __init__(self, bounds: Callable[[], dict[str, tuple[int, int]]]):
        self._bounds = bounds

    def collect(self):
        held = GaugeMetricFamily("lookout_queue_depth", "Items held by a bounded queue", labels=["queue"])
        refused = CounterMetricFamily("lookout_queue_refused", "Items a full bounded queue dropped or refused",
                                      labels=["queue"])
        for name, (n, r) in sorted(self._bounds().items()):
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
        self._server: Any = None

    def bind(self, devices: Callable[[], dict[tuple[str, str], int]], depths: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_Live(devices, depths))

    def bind_bounds(self, bounds: Callable[[], dict[str, tuple[int, int]]]) -> None:
        """``bounds()`` -> {queue name: (held now, refused so far)}: mqtt_outbox, journal_pending, ..."""
        self.registry.register(_Bounds(bounds))

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

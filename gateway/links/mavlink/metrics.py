"""Prometheus view of the drone bridge, read at scrape time (no per-frame cost on the ingest path).

Per endpoint (mavlink-router's counters): frames in and out, frames lost by sequence gaps, corrupt frames, frames
dropped by signing (``reason``: unsigned, bad_signature, replay). Per drone: link up, loss % of the last window,
dropped frames by reason, battery.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class BridgeCollector(Collector):
    def __init__(self, bridge: Any):
        self.bridge = bridge

    def collect(self):
        eps = self.bridge.router.endpoints
        rx = CounterMetricFamily("lookout_mavlink_frames", "MAVLink frames per endpoint and direction",
                                 labels=["endpoint", "direction"])
        lost = CounterMetricFamily("lookout_mavlink_lost", "MAVLink frames missing by sequence number",
                                   labels=["endpoint"])
        bad = CounterMetricFamily("lookout_mavlink_bad", "Corrupt MAVLink frames (CRC, length)", labels=["endpoint"])
        drop = CounterMetricFamily("lookout_mavlink_dropped", "MAVLink frames dropped by signing checks",
                                   labels=["endpoint", "reason"])
        for ep in eps:
            st = ep.stats
            rx.add_metric([ep.name, "in"], st.rx_frames)
            rx.add_metric([ep.name, "out"], st.tx_frames)
            lost.add_metric([ep.name], st.lost)
            bad.add_metric([ep.name], st.bad)
            for reason, n in sorted(st.dropped.items()):
                drop.add_metric([ep.name, reason], n)
        yield from (rx, lost, bad, drop)
        up = GaugeMetricFamily("lookout_drone_link_up", "1 while the drone's MAVLink link is up", labels=["drone"])
        loss = GaugeMetricFamily("lookout_drone_loss_percent", "Frames lost over the last heartbeat window, %",
                                 labels=["drone"])
        bat = GaugeMetricFamily("lookout_drone_battery_percent", "Battery remaining, %", labels=["drone"])
        dd = CounterMetricFamily("lookout_drone_dropped", "Frames from the drone dropped by signing checks",
                                 labels=["drone", "reason"])
        for v in self.bridge.vehicles.values():
            up.add_metric([v.id], 1 if v.link == "up" else 0)
            loss.add_metric([v.id], v.loss_pct)
            if v.bat_pct is not None:
                bat.add_metric([v.id], v.bat_pct)
            for reason, n in sorted(v.dropped.items()):
                dd.add_metric([v.id, reason], n)
        yield from (up, loss, bat, dd)

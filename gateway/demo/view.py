"""The demo's live terminal view: devices, incidents and commands while the scenario runs (rich).

Theory of operation
-------------------
``LiveView`` draws three tables from what the gateway knows (registry, incident store, the commands it issued)
and a few things only the world knows (what each officer is doing, a drone's height). On a terminal it is a
``rich.live.Live`` region redrawn four times a second, with the story's lines scrolling above it; when stdout is
not a terminal (a CI log, a pipe) the same tables are printed as plain text blocks every ``refresh`` seconds and
the story lines in between, so the log reads top to bottom without cursor tricks. The tables are drawn from the
event loop (``tick``), never from rich's own refresh thread, since they read the gateway's live state. Every device-supplied string is
printed as text, never as rich markup.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lookout.gateway.linkage.geo import haversine_m

PLAIN_WIDTH = 118  # a CI log's width: the tables fit without wrapping
SHOW_COMMANDS = 8  # the newest commands in the view
LIVE_HZ = 4  # terminal redraws a second


def _t(s: Any) -> Text:
    return Text("-" if s is None else str(s))


class LiveView:
    def __init__(self, demo: Any, out: TextIO | None, refresh: float) -> None:
        self.demo = demo
        self.console = Console(file=out, highlight=False, markup=False, soft_wrap=False,
                               width=None if out is None else PLAIN_WIDTH)
        if not self.console.is_terminal:
            self.console.width = PLAIN_WIDTH
        self.tty = self.console.is_terminal
        self.refresh_s = refresh
        self.live: Live | None = None
        self._last_block = time.monotonic()  # the first block when the story begins, not before
        self._last_draw = 0.0

    # -- output ---------------------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        self.console.print(Text(text), soft_wrap=True)

    def start(self) -> None:
        if self.tty:  # redrawn from the event loop (tick), never from rich's refresh thread: the tables read
            # the gateway's registry and stores, which only the loop may touch
            self.live = Live(self.render(), console=self.console, auto_refresh=False, transient=True)
            self.live.start()

    def tick(self) -> None:
        """Called from the event loop every ~0.1 s: redraws the live region at LIVE_HZ on a terminal, else
        prints a plain block when ``refresh`` seconds have passed."""
        now = time.monotonic()
        if self.live is not None:
            if now - self._last_draw >= 1 / LIVE_HZ:
                self._last_draw = now
                self.live.update(self.render(), refresh=True)
            return
        if now - self._last_block >= self.refresh_s:
            self._last_block = now
            self.block()

    def block(self) -> None:
        """The tables as a plain block (on a terminal only once the live region is gone: the final state)."""
        if self.live is None:
            self.console.print(self.render())

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # -- the tables -----------------------------------------------------------------------------------------
    def render(self) -> Group:
        d = self.demo
        head = Text(f"── {d.sc.site_name} · {d.sc.name} · wall t+{d.rec.t():5.1f} s · scenario "
                    f"{d.world.scenario_s():5.0f} s (×{d.speed:g}) ", style="bold")
        return Group(head, self.devices(), self.incidents(), self.commands())

    def _table(self, title: str, cols: tuple[tuple[str, int], ...]) -> Table:
        """Columns with a width they keep (0: this one shrinks, with an ellipsis, when the line is short)."""
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, expand=False,
                  show_edge=False)
        for c, w in cols:
            t.add_column(c, no_wrap=True, overflow="ellipsis", min_width=w or None)
        return t

    def devices(self) -> Table:
        d = self.demo
        gw, world = d.gw, d.world
        t = self._table("devices", (("device", 9), ("kind", 8), ("state", 7), ("seen", 6), ("position", 18),
                                       ("status", 19), ("who / where", 0)))
        now = int(time.time() * 1000)
        inc = d.story_incident()
        order: Callable[[Any], tuple[int, str]] = lambda v: (
            {"gateway": 0, "sensor": 1, "camera": 1, "speaker": 2, "recorder": 3, "drone": 4}.get(v.kind or "", 5),
            v.id)
        for dev in sorted(gw.registry.devices.values(), key=order):
            seen = f"{(now - dev.last_seen_ms) / 1000:.0f} s" if dev.last_seen_ms and dev.kind != "gateway" else "-"
            loc = dev.last_loc or {}
            pos = f"{loc['lat'] / 1e7:.5f},{loc['lon'] / 1e7:.5f}" if "lat" in loc and "lon" in loc else "-"
            status, who = "", ""
            info = dev.info or {}
            if dev.kind == "recorder":
                o = world.officer_of(dev.id)
                p = world.people.get(o.id) if o else None
                status = str(info.get("state", "-"))
                if info.get("task"):
                    status += f" {info['task']}"
                who = o.id if o else (dev.officer or "")
                if p is not None:
                    who += f" {p.doing.replace('_', ' ')}"
                    if p.doing == "going" and p.target:
                        who += f", {p.sim.walk.distance_m(*p.target):.0f} m to go"
                if o is not None:
                    who += f" · {o.name}"
            elif dev.kind == "drone":
                alt = world.drone_alt_m(dev.id)
                status = f"{info.get('state', '-')}" + (f" {alt:.0f} m" if alt is not None and alt > 0.5 else "") + (
                    f" {info.get('bat_pct', '?')}%")
                dn = next((x for x in d.sc.drones if x.id == dev.id), None)
                who = dn.name if dn else ""
                if inc is not None and inc.lat is not None and "lat" in loc and dev.id in inc.units:
                    who = f"{haversine_m(inc.lat, inc.lon, loc['lat'], loc['lon']):.0f} m from {inc.id} · " + who
            elif dev.kind == "gateway":
                who = "township command center"
            else:
                n = d.sc.node(dev.id)
                who = n.name if n else ""
                sim = world.nodes.get(dev.id)
                if dev.kind == "speaker" and sim is not None and sim.plays:
                    status = f"played {len(sim.plays)}"
                if dev.id in world.silenced:
                    status = "hung (no heartbeat)"
            t.add_row(_t(dev.id), _t(dev.kind), _t(dev.state), _t(seen), _t(pos), _t(status), _t(who))
        return t

    def incidents(self) -> Table:
        d = self.demo
        t = self._table("incidents", (("incident", 8), ("state", 10), ("what", 0), ("detections", 10), ("units", 0),
                                         ("open for", 8), ("evidence", 0)))
        for inc in d.gw.linkage.store.list("all", 10)[::-1]:
            units = []
            for dev, u in inc.units.items():
                name = u.get("officer") or dev
                eta = u.get("eta_s")
                units.append(f"{name} " + ("on scene" if u.get("arrived_ms") else
                                           f"ETA {eta * d.speed:.0f} s" if isinstance(eta, int) else "sent"))
            end = inc.at("closed") or int(time.time() * 1000)
            what = f"{inc.sev} {inc.kind} at {inc.zone or inc.source}"
            ev = ", ".join(e["sha256"][:12] + "…" for e in inc.evidence) or "-"
            t.add_row(_t(inc.id), _t(inc.state), _t(what), _t(inc.detections), _t("; ".join(units) or "-"),
                      _t(f"{(end - inc.opened_ms) / 1000 * d.speed:.0f} s"), _t(ev))
        return t

    def commands(self) -> Table:
        d = self.demo
        t = self._table(f"commands (newest {SHOW_COMMANDS})", (("id", 13), ("by", 0), ("to", 9), ("command", 0),
                                                                 ("status", 8)))
        for c in list(d.rec.commands.values())[-SHOW_COMMANDS:]:
            args = ""
            if c.name == "play":
                args = f" {c.args.get('clip')}"
            elif c.name in ("goto", "orbit", "dispatch") and isinstance(c.args.get("lat"), int):
                args = f" {c.args['lat'] / 1e7:.5f},{c.args['lon'] / 1e7:.5f}"
            elif c.name == "takeoff":
                args = f" {c.args.get('alt_m')} m"
            elif c.name == "set_mode":
                args = f" {c.args.get('mode')}"
            t.add_row(_t(c.id), _t(c.op or "-"), _t(c.device), _t(c.name + args),
                      _t(c.status + (f" ({c.code})" if c.code and c.code != c.status else "")))
        return t


__all__ = ["LiveView"]

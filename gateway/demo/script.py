"""`lookout demo`: the whole scenario on one machine — the real gateway deciding, a simulated reservoir around it.
The README's first command.

Theory of operation
-------------------
One asyncio loop runs everything, for real, on loopback:

- the embedded broker (gateway/links/broker.py, amqtt) unless ``--broker`` names one;
- a key store in a temporary data directory with an identity per device (as ``lookout provision`` makes them)
  and a demo operator;
- the gateway (``Gateway``, exactly what ``lookout gateway`` runs) configured with the scenario's ``[zones]`` and
  ``[linkage]`` rules, a recorder bridge watching the pseudo-terminals the officers' recorders appear on, and a
  MAVLink endpoint the drones talk to; its web console beside it;
- the world (world.py ``SimWorld``): nodes running the real firmware, officers with body-worn recorders, drones,
  the intruder, a node that hangs.

The demo then only *watches*: every decision (which speaker warns, the escalation, who is dispatched, the drone's
orders, the cadre's notification, on scene, the evidence, closing) is the gateway's, from the rules, so the same
scenario file can drive a real deployment's rules. Lines tagged WORLD are the simulation; GATEWAY lines are the
duty journal's incident and custody entries as the gateway writes them; COMMAND, STATE, EVENT and PHONE lines are
what the command path, the registry, the sensors and a cadre's phone (an MQTT client on its notify topic) show.
The story is over when the incident is closed and every hung node is offline; then the demo operator checks the
journal (``journal verify`` over the operator API), outcome.py reads the result from the gateway's records and
checks the scenario's ``[expect]``, and a summary prints the times (detection → warning → dispatch → on scene →
closed, in scenario seconds), the rankings, the clip's SHA-256 and every check. Exit 0 only if every check held.

Time: ``--speed S`` runs the world S times faster and gives the gateway the rules with their delays divided and
speeds multiplied by S (timescale.py); node heartbeats are 30/S s but never under the firmware's 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from lookout.gateway.demo import outcome as outcomes
from lookout.gateway.demo import scenario as scenarios
from lookout.gateway.demo import timescale
from lookout.gateway.demo.world import SimWorld
from lookout.protocols import signing, topics

log = logging.getLogger("lookout.demo")

GATEWAY_ID = "gw-demo"
OPERATOR_ID = "op-demo"
WEB_LISTEN = "127.0.0.1:8080"  # the demo's web console (any free port if taken)
WEB_PASSWORD = "duty-demo"  # the demo operator's console password (temporary key store)
DEFAULT_SPEED = 15.0  # the default story (about 5 scenario minutes) takes ~25 s of wall time
STARTUP_S = 60.0  # wall seconds allowed for start-up and the closing checks, beyond the story's end_s / speed
SETTLE_S = 1.0  # after closing: let the release orders (clear, rtl) get their answers before the summary
AREA_MARGIN_DEG = 0.02  # the drones' geofence: the scenario's points plus this margin


@dataclass
class Record:
    """What the demo saw happen (for the live view); the outcome itself is read from the gateway."""

    t0: float = field(default_factory=time.monotonic)
    commands: dict[str, Any] = field(default_factory=dict)  # id -> Command, in order of creation
    changes: list[tuple[float, str, str, str, str]] = field(default_factory=list)  # (t, dev, old, new, why)
    phones: dict[str, list[str]] = field(default_factory=dict)  # contact -> incident states it was told
    story_s: float | None = None  # wall seconds the story took

    def t(self) -> float:
        return time.monotonic() - self.t0


def night_zone(hour: int, now: datetime | None = None) -> str:
    """An IANA fixed-offset zone in which it is now ``hour`` o'clock (Etc/GMT-N is UTC+N): so a rule's
    ``hours`` window can be shown at any time of day."""
    utc = (now or datetime.now(UTC)).hour
    off = (hour - utc) % 24
    if off > 14:
        off -= 24
    return "Etc/GMT" if off == 0 else f"Etc/GMT{-off:+d}"


class Demo:
    def __init__(self, speed: float = DEFAULT_SPEED, duration: float | None = None, scenario: str | None = None,
                 broker: str | None = None, data_dir: str | None = None, refresh: float | None = None,
                 out: TextIO | None = None, web: str | None = WEB_LISTEN, linger: float = 0.0) -> None:
        if not 0.5 <= speed <= 100:
            raise ValueError(f"--speed {speed!r}: expected 0.5..100")
        if duration is not None and duration <= 0:
            raise ValueError(f"--duration {duration!r}: expected > 0 seconds")
        try:
            self.sc = scenarios.load(scenario)
        except scenarios.ScenarioError as e:
            raise ValueError("scenario: " + "\n  ".join(e.errors)) from None
        self.speed = speed
        self.duration = duration if duration is not None else STARTUP_S + self.sc.end_s / speed
        self.broker_url = broker
        self.data_dir = data_dir
        self.refresh = refresh if refresh is not None else 5.0
        self.out = out
        self.web = web  # the web console's host:port (None: off); linger: seconds it stays up after the story
        self.linger = linger
        self.rec = Record()
        self.gw: Any = None
        self.op: Any = None
        self.world: SimWorld
        self.view: Any = None
        self.result: outcomes.Outcome | None = None
        self._closing = False
        self._journal_seq = 0

    # -- output ----------------------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        if self.view is not None:
            self.view.line(text)
        else:
            import sys

            print(text, file=self.out or sys.stdout, flush=True)

    def note(self, text: str) -> None:
        self.say(f"[t+{self.rec.t():5.1f}s] {text}")

    def story_incident(self) -> Any:
        incs = self.gw.linkage.store.list("all", 100) if self.gw is not None else []
        return min(incs, key=lambda i: i.opened_ms) if incs else None

    # -- hooks (the demo watches; it never acts for the gateway) --------------------------------------------
    def _on_change(self, c: Any) -> None:
        if not c.transition or self._closing:
            return
        self.rec.changes.append((self.rec.t(), c.device, c.old, c.new, c.what))
        if c.device != GATEWAY_ID and not (c.old == "unknown" and c.new == "online"):
            self.note(f"STATE   {c.device} {c.old} -> {c.new} ({c.what})")

    def _on_command(self, c: Any, old: str) -> None:
        self.rec.commands[c.id] = c
        if self._closing or c.status in ("new", "queued", "sent"):
            return
        self.note(f"COMMAND {c.id} {c.name} -> {c.device} by {c.op or '-'}: {c.status}"
                  + (f" ({c.code})" if c.code and c.code != c.status else ""))

    def _on_observed(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            _site, dev, ch, _ = topics.parse(topic)
            msg = json.loads(payload)
        except Exception:  # noqa: BLE001 - observer only: anything odd is the gateway's business
            return
        if ch == "notify":
            self.rec.phones.setdefault(dev, []).append(str(msg.get("state")))
            self.note(f"PHONE   {dev}'s phone: {msg.get('text')}")
        elif ch == "evt" and msg.get("kind") in ("presence", "motion", "intrusion"):
            ident = self.gw.keystore.get(dev)
            try:
                signing.verify(ident.hmac_key, "evt", msg)
                mac = "MAC ok"
            except Exception:  # noqa: BLE001 - any failure to verify is what the line reports
                mac = "MAC BAD"
            self.note(f"EVENT   {dev} {msg.get('kind')} sev={msg.get('sev')} conf={msg.get('conf')} "
                      f"id={msg.get('id')} ({mac})")

    def _journal_lines(self) -> None:
        """The gateway's own account as it writes it: incident and custody entries of the duty journal."""
        try:
            entries = self.gw.journal.entries(after_seq=self._journal_seq)
        except Exception:  # noqa: BLE001 - a read racing the journal's close is not the demo's business
            return
        for e in entries:
            self._journal_seq = max(self._journal_seq, e.seq)
            if e.kind in ("incident", "custody"):
                self.note(f"GATEWAY {e.summary}" + (f"  [{e.operator}]" if e.operator else ""))

    # -- setup -----------------------------------------------------------------------------------------------
    def _area(self) -> list[list[float]]:
        pts = self.sc.points()
        la = [p[0] / 1e7 for p in pts]
        lo = [p[1] / 1e7 for p in pts]
        m = AREA_MARGIN_DEG
        return [[min(la) - m, min(lo) - m], [min(la) - m, max(lo) + m], [max(la) + m, max(lo) + m],
                [max(la) + m, min(lo) - m]]

    def _gateway_config(self, data: Path, url: str) -> Any:
        from lookout.gateway.core.config import from_dict

        hb = timescale.hb_s(self.speed)
        d: dict[str, Any] = {
            "gateway": {"id": GATEWAY_ID, "site": self.sc.site, "data_dir": str(data), "log_level": "warning"},
            "broker": {"url": url, "keepalive_s": 30},
            "registry": {"offline_after_missed": 3, "stale_after_missed": 1, "grace_ms": 1500, "min_hb_s": 1,
                         "max_hb_s": 3600, "default_hb_s": hb},
            "commands": {"default_ttl_s": 120, "retry_s": max(2, round(30 / self.speed)), "max_attempts": 3,
                         "wait_s": 30},
            "zones": self.sc.zones,
            "linkage": self.sc.linkage,
            "recorders": {"devices": [self.world.recorder_glob()], "scan_ms": 100},
        }
        if self.sc.drones:
            d["mavlink"] = {"endpoint": [{"name": "radio", "url": "udpin:127.0.0.1:0"}], "area": self._area(),
                            "max_alt_m": 120, "ack_timeout_ms": 500, "loc_hz": 4}
            d["drone"] = [{"id": x.id, "sysid": x.sysid} for x in self.sc.drones]
        return from_dict(d)

    def _tune_linkage(self) -> None:
        """The rules at the world's speed, and the site's clock at the scenario's hour (timescale.py)."""
        cfg = timescale.linkage(self.gw.linkage.cfg, self.speed)
        h = self.sc.world.local_hour
        if h is not None:
            zone = night_zone(h)
            cfg = replace(cfg, timezone=zone, site_timezones={})
            now = datetime.now(UTC).astimezone(cfg.tz(self.sc.site))
            self.say(f"local time   {now:%H:%M} at {self.sc.site_name} for this run (the site's clock set to {zone}; "
                     "the rules' hours are local time)")
        self.gw.linkage.cfg = cfg

    # -- the story -------------------------------------------------------------------------------------------
    def _online(self) -> bool:
        reg = self.gw.registry
        want = [n.id for n in self.sc.nodes] + [o.recorder for o in self.sc.officers] + [x.id for x in self.sc.drones]
        for dev in want:
            d = reg.get(dev)
            if d is None or d.state != "online" or not d.last_loc:
                return False
        return all("bat_pct" in (reg.get(x.id).info or {}) for x in self.sc.drones)

    def _over(self) -> bool:
        inc = self.story_incident()
        if inc is None or inc.state != "closed":
            return False
        return all((d := self.gw.registry.get(dev)) is not None and d.state == "offline"
                   for dev in self.world.silenced)

    async def _watch(self, until: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._journal_lines()
            if self.view is not None:
                self.view.tick()
            if until():
                return True
            await asyncio.sleep(0.1)
        return False

    async def story(self) -> bool:
        self.note(f"waiting for {len(self.sc.nodes)} nodes, {len(self.sc.officers)} recorders and "
                  f"{len(self.sc.drones)} drones to come online with positions")
        if not await self._watch(self._online, 30):
            self.note("TIMEOUT not every device came online within 30 s")
            return False
        self.note("all devices online; the story begins (scenario time 0)")
        if self.view is not None:
            self.view.block()
        self.world.begin()
        stop = asyncio.Event()
        task = asyncio.create_task(self.world.play(stop), name="world")
        try:
            done = await self._watch(self._over, self.sc.end_s / self.speed)
        finally:
            stop.set()
            await task
        self.rec.story_s = self.world.scenario_s() / self.speed
        if not done:
            self.note(f"TIMEOUT the story did not end within {self.sc.end_s:g} scenario seconds")
        await self._watch(lambda: False, SETTLE_S)
        return done

    async def _web_console(self, stack: contextlib.AsyncExitStack, ks: Any) -> None:
        """The duty console beside the gateway (gateway/web/), its spots named on the map; the demo operator
        signs in with a password set here (a temporary key store)."""
        from lookout.gateway.admin.passwords import hash_password
        from lookout.gateway.web.server import WebConsole
        from lookout.gateway.web.sitemap import SiteMap

        ks.set_operator_password(OPERATOR_ID, hash_password(WEB_PASSWORD))
        sm = SiteMap()
        sm.labels = {n.id: n.name for n in self.sc.nodes} | {o.recorder: o.name for o in self.sc.officers} | {
            x.id: x.name for x in self.sc.drones}
        listen = self.web or WEB_LISTEN
        try:
            web = await stack.enter_async_context(WebConsole(self.gw, listen, sm))
        except OSError:  # the port is taken (another demo?): any free port will do
            web = await stack.enter_async_context(WebConsole(self.gw, listen.rpartition(":")[0] + ":0", sm))
        self.say(f"web console  {web.url}  (sign in as {OPERATOR_ID}, password {WEB_PASSWORD})")

    # -- orchestration ---------------------------------------------------------------------------------------
    async def run(self) -> int:
        from lookout.gateway.admin.keystore import KeyStore
        from lookout.gateway.demo.view import LiveView
        from lookout.gateway.links.broker import EmbeddedBroker
        from lookout.gateway.links.mqtt import MQTTLink
        from lookout.gateway.links.opclient import OperatorClient
        from lookout.gateway.service.app import Gateway

        ok = False
        async with contextlib.AsyncExitStack() as stack:
            if self.data_dir:
                data = Path(self.data_dir)
                data.mkdir(parents=True, exist_ok=True)
            else:
                data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lookout-demo-")))
            url = self.broker_url
            if url is None:
                url = await stack.enter_async_context(EmbeddedBroker())
            sc = self.sc
            self.say(f"Lookout demo — {sc.title}")
            self.say(f"scenario     {sc.name} ({sc.origin}): {len(sc.nodes)} nodes, {len(sc.officers)} officers "
                     f"with recorders, {len(sc.drones)} drones at {sc.site_name}")
            self.say(f"speed        ×{self.speed:g}: the world and the rules' delays and speeds run {self.speed:g} "
                     f"times faster (node heartbeat {timescale.hb_s(self.speed)} s); GATEWAY lines quote the duty "
                     "journal, in wall seconds")
            self.say(f"broker       {url}{' (embedded amqtt)' if self.broker_url is None else ''}")
            self.say(f"data dir     {data}")
            self.world = SimWorld(sc, self.speed, data, url, say=self.note)
            cfg = self._gateway_config(data, url)
            ks = KeyStore(cfg.keystore_path)
            stack.callback(ks.close)
            ks.ensure(GATEWAY_ID, sc.site, "gateway")
            if ks.get_operator(OPERATOR_ID) is not None:
                raise RuntimeError(f"data dir already has operator {OPERATOR_ID}: use a fresh --data-dir")
            token = ks.add_operator(OPERATOR_ID, "值班员 duty operator (demo)", "operator")
            self.world.provision(ks)

            self.gw = await stack.enter_async_context(Gateway(cfg, keystore=ks, broker_url=url))
            self._tune_linkage()
            self.say(f"rules        {', '.join(r.name for r in self.gw.linkage.cfg.rules)} (the gateway's [linkage]; "
                     "every decision below is theirs)")
            self.gw.registry.add_listener(self._on_change)
            self.gw.commands.add_listener(self._on_command)
            gw_task = asyncio.create_task(self.gw.serve(), name="gateway")

            async def _stop_gw() -> None:
                self.gw.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(gw_task, 10)

            stack.push_async_callback(_stop_gw)
            if self.web:
                await self._web_console(stack, ks)

            observer = MQTTLink(url, "demo-observer")
            observer.subscribe(topics.device_filter(sc.site, "+", "evt"), self._on_observed, qos=1)
            observer.subscribe(topics.device_filter(sc.site, "+", "notify"), self._on_observed, qos=1)
            await stack.enter_async_context(observer)
            self.op = await stack.enter_async_context(OperatorClient(url, sc.site, OPERATOR_ID, token))
            port = self.gw.drones.router.endpoints[0].local_port if self.gw.drones is not None else None
            await self.world.start(ks, port, stack)

            self.view = LiveView(self, self.out, self.refresh)
            self.view.start()
            try:
                ok = await asyncio.wait_for(self.story(), self.duration)
            except TimeoutError:
                self.note(f"TIMEOUT the demo did not finish within --duration {self.duration:g} s")
            finally:
                self.view.stop()
            self._closing = True  # shutdown deaths and releases are not part of the story
            self.result = outcomes.collect(self.gw, sc, self.speed, self.rec.phones, self._source_hashes(),
                                           OPERATOR_ID)
            resp = await self.op.request("journal", {"verify": True})  # the operator's `lookout journal verify`
            journal = resp.get("data") or {}
            self._journal_lines()
            self.view.block()
            if self.web and self.linger > 0:
                self.say(f"web console stays up for {self.linger:g} s (Ctrl-C ends the demo)")
                await asyncio.sleep(self.linger)
            ok = ok and self.result.ok and bool(journal.get("ok"))
            self.summary(ok, journal)
        return 0 if ok else 1

    def _source_hashes(self) -> dict[str, str]:
        """The SHA-256 each recorder computed when it closed a file (the evidence's source)."""
        out = {}
        for p in self.world.people.values():
            for c in p.sim.clips():
                out[c["id"]] = c["sha256"]
        return out

    # -- summary ---------------------------------------------------------------------------------------------
    def summary(self, ok: bool, journal: dict[str, Any]) -> None:
        o = self.result
        say = self.say
        s = self.speed
        say("")
        say(f"══ Summary: {self.sc.name} · {self.sc.site_name} · speed ×{s:g} " + "═" * 40)
        if o is None:
            say("result       FAILED: no outcome")
            return
        inc = o.inc
        if inc is not None:
            say(f"incident     {inc.id}: {inc.sev} {inc.kind} at {inc.zone or inc.source}, {inc.detections} "
                "detections, " + " -> ".join(h["state"] for h in inc.history))
            self._times(o)
            for kind in ("officer", "drone"):
                r = o.rankings.get(kind)
                if r is None:
                    continue
                cands = ", ".join((f"{c['officer']} ({c['device']})" if c.get("officer") else c["device"])
                                  + f" {c['eta_s'] * s:.0f} s" for c in r["candidates"]) or "none"
                skipped = "; ".join(f"{x['device']}" + (f" ({o_.id})" if (o_ := self.world.officer_of(x["device"]))
                                                         else "") + f": {x['why']}" for x in r["skipped"])
                say(f"ranking      {kind}s by ETA: {cands}" + (f"; skipped {skipped}" if skipped else ""))
            if inc.notified:
                say(f"notified     {', '.join(inc.notified)} (phone got: "
                    + "; ".join(f"{c} {'/'.join(v)}" for c, v in o.phones.items()) + ")")
            for ev in o.evidence:
                say(f"evidence     clip {ev['clip']} from {ev['device']}, {int(ev.get('size') or 0) // 1024} KB")
                say(f"  sha256     {ev['sha256']}")
                say(f"  custody    {' -> '.join(ev['trail'])}")
        else:
            say("incident     none opened")
        for dev in self.world.silenced:
            ch = [(t, old, new, why) for t, d, old, new, why in self.rec.changes if d == dev and old != "unknown"]
            say(f"silent node  {dev}: " + ", ".join(f"{old} -> {new} at t+{t:.1f} s wall ({why})"
                                                    for t, old, new, why in ch))
        n = int(journal.get("entries") or 0)
        kinds = Counter(e.kind for e in self.gw.journal.entries(limit=n))  # the entries the verify walked
        say("journal      {} entries ({}), chain {}, head {}…".format(
            n, ", ".join(f"{k} {c}" for k, c in sorted(kinds.items())),
            "verified OK" if journal.get("ok") else f"BROKEN at seq {journal.get('bad_seq')}",
            str(journal.get("head") or o.journal.get("head") or "")[:16]))
        say("checks")
        for c in o.checks:
            say(f"  {'✓' if c.ok else '✗'} {c.name:<20} {c.detail}")
        n_ok = sum(c.ok for c in o.checks)
        wall = f"{self.rec.story_s:.1f} s" if self.rec.story_s is not None else "-"
        say("result       {} (story {} wall, {:.0f} s scenario; whole run {:.1f} s)".format(
            f"OK: every expected outcome held ({n_ok}/{len(o.checks)})" if ok
            else f"FAILED: {len(o.checks) - n_ok} of {len(o.checks)} checks failed",
            wall, (self.rec.story_s or 0) * s, self.rec.t()))

    def _times(self, o: outcomes.Outcome) -> None:
        """Detection -> warning -> dispatch -> on scene -> closed (scenario seconds; the warning's latency as is)."""
        say, s, inc = self.say, self.speed, o.inc
        assert inc is not None
        say(f"times        from the detection, in scenario seconds (wall × {s:g}); the warning as measured")
        det = o.detection_ms
        if det is None:
            say("  no detection time found")
            return

        def since(ms: int | None) -> str:
            return "-" if ms is None else f"+{(ms - det) / 1000 * s:6.0f} s"

        say(f"  detection   t 0        {inc.source} {inc.kind} ({inc.event_ids[0] if inc.event_ids else '?'})")
        w = o.at("warned")
        speakers = sorted({x["device"] for x in o.warnings})
        say(f"  warning     {'-' if w is None else f'+{w - det:4d} ms'} wall  "
            f"{', '.join(speakers) or 'no speaker'} playing the warning; {len(o.warnings)} warning(s) for "
            f"{inc.detections} detections")
        d = o.at("dispatched")
        units = []
        for dev, u in inc.units.items():
            name = f"officer {u['officer']} ({dev})" if u.get("officer") else f"drone {dev}"
            units.append(f"{name} ETA {u.get('eta_s', 0) * s:.0f} s")
        say(f"  dispatch    {since(d)}  " + ("; ".join(units) or "nobody"))
        for dev, u in sorted(inc.units.items(), key=lambda kv: kv[1].get("arrived_ms") or 0):
            if u.get("arrived_ms") is None:
                continue
            name = f"officer {u['officer']}" if u.get("officer") else f"drone {dev}"
            took = (u["arrived_ms"] - u["ts"]) / 1000 * s if isinstance(u.get("ts"), int) else None
            say(f"  arrived     {since(u['arrived_ms'])}  {name}, {u.get('arrived_m')} m from the event"
                + (f" ({took:.0f} s after dispatch, ETA {u.get('eta_s', 0) * s:.0f} s)" if took is not None else ""))
        say(f"  on scene    {since(o.at('on_scene'))}")
        c = o.at("closed")
        say(f"  closed      {since(c)}  {inc.closed_why or (inc.history[-1].get('why') if c else '')}")


def run(speed: float = DEFAULT_SPEED, duration: float | None = None, scenario: str | None = None,
        broker: str | None = None, data_dir: str | None = None, refresh: float | None = None,
        out: TextIO | None = None, verbose: bool = False, web: str | None = WEB_LISTEN, linger: float = 0.0) -> int:
    """Run the demo to completion in a fresh event loop; returns the exit code."""
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    demo = Demo(speed, duration, scenario, broker, data_dir, refresh, out, web, linger)
    return asyncio.run(demo.run())


__all__ = ["Demo", "night_zone", "run"]

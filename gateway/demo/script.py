"""`lookout demo`: the whole system on one machine, a scripted incident, a summary. The README's first
command.

Theory of operation
-------------------
One asyncio loop runs everything, for real, on loopback:

- the embedded broker (gateway/broker.py, amqtt) unless ``--broker`` names one;
- a key store in a temporary data directory with a demo identity per node (``KeyStore.ensure``) and a demo
  operator (``add_operator``), as ``lookout provision`` would make them;
- the gateway (gateway/service.py ``Gateway``, exactly what ``lookout gateway`` runs);
- the nodes: ``SimNode`` = the real firmware (``lookout_node.node.Node``) over the host hardware layer, one
  per named spot on a small map of 东山水库;
- the operator side goes through the real operator API over MQTT (gateway/opclient.py), like ``lookout
  broadcast`` from another machine; an observer link shows the nodes' events and results as they arrive.

The script (``Demo.script``): wait for every node online -> a PIR detection at the ferry landing -> signed
event
-> rank loudspeakers by straight-line distance (sound crosses water in a straight line; walking time is shown
for contrast: dispatch of people ranks by travel time) -> signed ``play`` to the nearest one in range
-> accepted, playing, done
-> a node's app hangs (tasks frozen, TCP session kept alive by the MQTT keepalive, so no last will can fire)
-> stale, then offline by heartbeat timeout -> ``journal verify`` -> summary. Exit 0 only if every step
  happened.

Time: ``--speed X`` divides the 30 s heartbeat (the firmware refuses ``hb_s`` < 5, so it is clamped there)
and the clip's playback time; the registry gets ``min_hb_s = 1`` and a grace of ~1.5 s. The table is redrawn
as plain text blocks (no cursor tricks), so the output reads the same in a terminal and in a CI log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lookout.protocols import signing, topics

log = logging.getLogger("lookout.demo")

SITE = "dongshan"
SITE_NAME = "东山水库 Dongshan reservoir"
GATEWAY_ID = "gw-demo"
OPERATOR_ID = "op-demo"
CLIP = "nofish"  # "禁止钓鱼，请离开" -- no fishing, please leave
CLIP_MS = 6000  # length of the warning clip in real time
HB_S = 30  # real-time heartbeat period (what body-worn camera simulators for GB/T 28181 use)
FW_MIN_HB_S = 5  # the firmware config validator's lower bound for hb_s
AUDIBLE_M = 600  # design figure: a horn loudspeaker is intelligible ~600 m across open water
WALK_MS = 1.2  # m/s, walking speed used for the officer-dispatch comparison
EARTH_R = 6371008.8  # m, mean Earth radius (IUGG)
WEB_LISTEN = "127.0.0.1:8080"  # the demo's web console (any free port if taken)
WEB_PASSWORD = "duty-demo"  # the demo operator's console password (temporary key store)


@dataclass(frozen=True)
class Spot:
    id: str
    role: str  # speaker | sensor | camera
    name: str
    lat: int  # degE7, WGS-84
    lon: int
    detour: float  # walking distance along the shore / straight line (road ~1.2x in towns, far more around water)


# A small reservoir in the Zhejiang hills (WGS-84). Ferry landing on the south-east bank; the west shore is
# across the water from it (close as the crow flies, far on foot).
SPOTS = (
    Spot("sen-ferry", "sensor", "渡口 ferry landing (PIR)", 299050000, 1196100000, 1.0),
    Spot("spk-ferry", "speaker", "渡口 ferry landing", 299062000, 1196108000, 1.3),
    Spot("spk-dam", "speaker", "北坝 north dam", 299140000, 1196120000, 1.6),
    Spot("spk-west", "speaker", "西岸 west shore", 299065000, 1196060000, 4.5),
    Spot("cam-inlet", "camera", "南入水口 south inlet", 298990000, 1196070000, 1.4),
    Spot("sen-east", "sensor", "东湾 east cove", 299080000, 1196170000, 1.5),
    Spot("spk-east", "speaker", "东湾 east cove", 299092000, 1196176000, 1.5),
    Spot("sen-north", "sensor", "北岸 north bank", 299125000, 1196080000, 2.0),
)
TRIGGER = "sen-ferry"
MIN_NODES, MAX_NODES = 3, len(SPOTS)


def haversine_m(lat1_e7: int, lon1_e7: int, lat2_e7: int, lon2_e7: int) -> float:
    """Great-circle distance in metres between two WGS-84 points given in degE7."""
    p1, p2 = math.radians(lat1_e7 / 1e7), math.radians(lat2_e7 / 1e7)
    dp, dl = p2 - p1, math.radians((lon2_e7 - lon1_e7) / 1e7)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_R * math.asin(min(1.0, math.sqrt(a)))


@dataclass
class Candidate:
    id: str
    name: str
    state: str
    dist_m: float
    walk_s: float
    in_range: bool


def rank_speakers(
    lat: int, lon: int, speakers: list[dict[str, Any]], spots: dict[str, Spot]
) -> list[Candidate]:
    """Online/stale speakers with a known position, nearest first by straight line."""
    out = []
    for d in speakers:
        loc = d.get("loc")
        if not loc or d.get("state") not in ("online", "stale"):
            continue
        dist = haversine_m(lat, lon, loc["lat"], loc["lon"])
        sp = spots.get(d["id"])
        detour = sp.detour if sp else 1.5
        out.append(
            Candidate(
                d["id"], sp.name if sp else "?", d["state"], dist, dist * detour / WALK_MS, dist <= AUDIBLE_M
            )
        )
    return sorted(out, key=lambda c: c.dist_m)


def scaled_hb_s(speed: float) -> int:
    return max(FW_MIN_HB_S, round(HB_S / speed))


@dataclass
class Record:
    """What the summary reports; filled as things happen."""

    t0: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    results: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)  # (t, device, res)
    commands: list[dict[str, Any]] = field(default_factory=list)
    changes: list[tuple[float, str, str, str, str]] = field(default_factory=list)  # (t, dev, old, new, why)
    ranking: list[Candidate] = field(default_factory=list)
    chosen: str | None = None
    silent: str | None = None
    journal: dict[str, Any] | None = None
    journal_kinds: dict[str, int] = field(default_factory=dict)
    steps: dict[str, bool] = field(default_factory=dict)

    def t(self) -> float:
        return time.monotonic() - self.t0


class Demo:
    def __init__(
        self,
        speed: float = 10.0,
        duration: float | None = None,
        nodes: int = 5,
        broker: str | None = None,
        data_dir: str | None = None,
        refresh: float | None = None,
        out: TextIO | None = None,
        web: str | None = WEB_LISTEN,
        linger: float = 0.0,
    ) -> None:
        self.web = web  # the web console's host:port (None: off); linger: seconds it stays up after the script
        self.linger = linger
        if not 0.5 <= speed <= 1000:
            raise ValueError(f"--speed {speed!r}: expected 0.5..1000")
        if not MIN_NODES <= nodes <= MAX_NODES:
            raise ValueError("--nodes %r: expected %d..%d" % (nodes, MIN_NODES, MAX_NODES))
        if duration is not None and duration <= 0:
            raise ValueError(f"--duration {duration!r}: expected > 0 seconds")
        self.speed = speed
        self.hb_s = scaled_hb_s(speed)
        # long enough for start-up, the broadcast and 3 missed heartbeats, with a wide margin
        self.duration = duration if duration is not None else max(90.0, 5.0 * self.hb_s + 60.0)
        self.spots = {s.id: s for s in SPOTS[:nodes]}
        self.broker_url = broker
        self.data_dir = data_dir
        self.refresh = refresh if refresh is not None else max(1.0, min(5.0, self.hb_s))
        self.out = out
        self.rec = Record()
        self.sims: dict[str, Any] = {}
        self.gw: Any = None
        self.op: Any = None
        self._evt = asyncio.Event()
        self._offline: dict[str, asyncio.Event] = {}
        self._closing = False

    # -- output ----------------------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        import sys

        print(text, file=self.out or sys.stdout, flush=True)

    def note(self, text: str) -> None:
        self.say(f"[t+{self.rec.t():5.1f}s] {text}")

    def table(self) -> str:
        now = int(time.time() * 1000)
        devs = sorted(self.gw.registry.devices.values(), key=lambda d: (d.kind != "gateway", d.id))
        counts: dict[str, int] = {}
        for d in devs:
            counts[d.state] = counts.get(d.state, 0) + 1
        head = "── %s · t+%.1f s · %d devices: %s " % (
            SITE_NAME,
            self.rec.t(),
            len(devs),
            ", ".join("%d %s" % (n, s) for s, n in sorted(counts.items())),
        )
        lines = [
            head + "─" * max(0, 100 - len(head)),
            " %-10s %-8s %-8s %8s %8s %6s %5s  %-20s %s"
            % ("device", "kind", "state", "last seen", "hb", "bat V", "rssi", "position", "spot"),
        ]
        for d in devs:
            seen = (
                "%.1f s" % ((now - d.last_seen_ms) / 1000) if d.last_seen_ms and d.kind != "gateway" else "-"
            )
            bat = "%.1f" % (d.info["bat_mv"] / 1000) if d.info.get("bat_mv") else "-"
            rssi = str(d.info.get("rssi", "-"))
            pos = (
                "{:.5f},{:.5f}".format(d.last_loc["lat"] / 1e7, d.last_loc["lon"] / 1e7)
                if d.last_loc
                else "-"
            )
            sp = self.spots.get(d.id)
            spot = sp.name if sp else ("township center" if d.kind == "gateway" else "")
            lines.append(
                " %-10s %-8s %-8s %8s %6s s %6s %5s  %-20s %s"
                % (d.id, d.kind, d.state, seen, d.hb_s or "-", bat, rssi, pos, spot)
            )
        return "\n".join(lines)

    async def _table_loop(self) -> None:
        while True:
            self.say(self.table())
            await asyncio.sleep(self.refresh)

    # -- hooks -----------------------------------------------------------------------------------------------
    def _on_change(self, c: Any) -> None:
        if not c.transition or self._closing:
            return
        self.rec.changes.append((self.rec.t(), c.device, c.old, c.new, c.what))
        if c.device != GATEWAY_ID and not (c.old == "unknown" and c.new == "online"):
            self.note(f"STATE   {c.device} {c.old} -> {c.new} ({c.what})")
        if c.new == "offline" and c.device in self._offline:
            self._offline[c.device].set()

    def _on_command(self, c: Any, old: str) -> None:
        if self._closing:
            return
        self.note(
            "COMMAND {} {} -> {}: {}{}".format(
                c.id, c.name, c.device, c.status, f" ({c.code})" if c.code and c.code != c.status else ""
            )
        )

    def _on_observed(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            _site, dev, ch, _ = topics.parse(topic)
            msg = json.loads(payload)
        except Exception:  # observer only: anything odd is the gateway's business, not the demo's
            return
        if ch == "evt":
            ident = self.gw.keystore.get(dev)
            try:
                signing.verify(ident.hmac_key, "evt", msg)
                mac = "MAC ok"
            except Exception:
                mac = "MAC BAD"
            msg["_dev"], msg["_t"], msg["_mac"] = dev, self.rec.t(), mac
            self.rec.events.append(msg)
            self.note(
                "EVENT   {} {} sev={} conf={} at {:.5f},{:.5f} ({}, signed by {})".format(
                    dev,
                    msg.get("kind"),
                    msg.get("sev"),
                    msg.get("conf"),
                    msg.get("lat", 0) / 1e7,
                    msg.get("lon", 0) / 1e7,
                    mac,
                    dev,
                )
            )
            if dev == TRIGGER and msg.get("kind") != "broadcast":
                self._evt.set()
        elif ch == "res":
            self.rec.results.append((self.rec.t(), dev, msg))
            phase = (msg.get("data") or {}).get("phase")
            self.note(
                "RESULT  {} {} {}{}{}".format(
                    dev,
                    msg.get("id"),
                    msg.get("status"),
                    f" phase={phase}" if phase else "",
                    " played_ms={}".format(msg["data"]["played_ms"])
                    if (msg.get("data") or {}).get("played_ms") is not None
                    else "",
                )
            )

    # -- setup -----------------------------------------------------------------------------------------------
    def _gateway_config(self, data: Path, url: str) -> Any:
        from lookout.gateway.core.config import BrokerConfig, CommandsConfig, Config, RegistryConfig

        return Config(
            gateway_id=GATEWAY_ID,
            site=SITE,
            data_dir=data,
            log_level="warning",
            broker=BrokerConfig(url=url, keepalive_s=30),
            registry=RegistryConfig(
                offline_after_missed=3,
                stale_after_missed=1,
                grace_ms=1500,
                min_hb_s=1,
                max_hb_s=3600,
                default_hb_s=self.hb_s,
            ),
            commands=CommandsConfig(
                default_ttl_s=120, retry_s=max(2, round(10 / self.speed * 3)), max_attempts=3, wait_s=30
            ),
        )

    def _start_nodes(self, data: Path, url: str, ks: Any) -> None:
        from urllib.parse import urlsplit

        from lookout.simulators.node import SimNode, make_config, wav_bytes

        u = urlsplit(url)
        for sp in self.spots.values():
            ident = ks.ensure(sp.id, SITE, sp.role)
            cfg = make_config(
                sp.id,
                SITE,
                sp.role,
                ident.hmac_key.hex(),
                u.hostname,
                u.port or 1883,
                hb_s=self.hb_s,
                loc_s=max(1, round(5 / self.speed)),
                position={"lat": sp.lat, "lon": sp.lon, "alt_mm": 112000},
            )
            cfg["broker"]["keepalive"] = 30
            sensorish = sp.role in ("sensor", "camera")
            sim = SimNode(
                data / "nodes" / sp.id, cfg, speed=self.speed, pir=sensorish, camera=sp.role == "camera"
            )
            if sp.role == "speaker":
                sim.add_clip(CLIP, wav_bytes(CLIP_MS))
            self.sims[sp.id] = sim

    # -- the script ------------------------------------------------------------------------------------------
    async def script(self) -> None:
        rec = self.rec
        # 1. every node online
        want = set(self.spots)
        while True:
            online = {d.id for d in self.gw.registry.devices.values() if d.state == "online"}
            if want <= online and all(self.gw.registry.get(i).last_loc for i in want):
                break
            await asyncio.sleep(0.1)
        rec.steps["nodes online"] = True
        self.note("all %d nodes online (birth received, fixed position reported)" % len(want))
        self.say(self.table())

        # 2. a person at the ferry landing: two PIR edges 0.4 s apart (sensitivity 50 needs 2 within 3 s)
        self.note(f"SCRIPT  someone walks onto the ferry landing: PIR at {TRIGGER}")
        self.sims[TRIGGER].trigger_pir()
        await asyncio.sleep(0.4)
        self.sims[TRIGGER].trigger_pir()
        await self._evt.wait()
        ev = next(e for e in rec.events if e["_dev"] == TRIGGER)
        rec.steps["event"] = True

        # 3. the operator ranks the loudspeakers
        resp = await self.op.request("devices", {"kind": "speaker"})
        lat, lon = ev.get("lat") or self.spots[TRIGGER].lat, ev.get("lon") or self.spots[TRIGGER].lon
        rec.ranking = rank_speakers(lat, lon, resp["data"]["devices"], self.spots)
        self.say("")
        self.say(f"Nearest loudspeaker to the detection ({lat / 1e7:.5f}, {lon / 1e7:.5f}):")
        self.say("  %-10s %-22s %8s %9s  %s" % ("speaker", "spot", "straight", "on foot*", "audible"))
        for c in rec.ranking:
            self.say(
                "  %-10s %-22s %6.0f m %7.1f min  %s"
                % (c.id, c.name, c.dist_m, c.walk_s / 60, "yes" if c.in_range else "no (> %d m)" % AUDIBLE_M)
            )
        self.say(
            "  Sound crosses the water in a straight line, so speakers rank by straight-line distance within"
        )
        self.say(
            "  audible range (%d m). *On-foot time (shore detour / %.1f m/s) is what officer dispatch would"
            % (AUDIBLE_M, WALK_MS)
        )
        self.say("  rank by (travel time, not distance); it is shown for contrast and not used for a loudspeaker.")
        best = next((c for c in rec.ranking if c.in_range), None)
        if best is None:
            self.note("no loudspeaker in audible range: the operator would dispatch an officer instead")
            return
        rec.chosen = best.id
        self.note(f"DECIDE  {best.id}: nearest loudspeaker, {best.dist_m:.0f} m straight line")

        # 4. signed broadcast, wait for the final result
        t_issue = rec.t()
        resp = await self.op.request(
            "broadcast",
            {
                "to": best.id,
                "clip": CLIP,
                "repeat": 1,
                "priority": "normal",
                "wait": "final",
                "wait_s": 30,
                "ttl_s": 120,
            },
            timeout=40,
        )
        for r in resp.get("data", {}).get("results", []):
            c = self.gw.commands.get(r["id"])
            acc = None
            if c is not None and c.accepted_ms and c.first_sent_ms:
                acc = c.accepted_ms - c.first_sent_ms
            playing = next(
                (
                    t
                    for t, dev, m in rec.results
                    if dev == r["device"]
                    and m.get("id") == r["id"]
                    and (m.get("data") or {}).get("phase") == "playing"
                ),
                None,
            )
            done = next(
                (
                    m
                    for _t, dev, m in rec.results
                    if dev == r["device"]
                    and m.get("id") == r["id"]
                    and m.get("status") in ("done", "failed", "rejected")
                ),
                None,
            )
            rec.commands.append(
                {
                    "id": r["id"],
                    "device": r["device"],
                    "status": r["status"],
                    "latency_ms": r.get("latency_ms"),
                    "accepted_ms": acc,
                    "playing_s": None if playing is None else playing - t_issue,
                    "played_ms": ((done or {}).get("data") or {}).get("played_ms"),
                    "code": resp.get("code"),
                }
            )
        sim = self.sims[best.id]
        rec.steps["broadcast done"] = any(c["status"] == "done" for c in rec.commands) and bool(sim.plays)

        # 5. a node's app hangs: its TCP session stays up (MQTT keepalive), so only the heartbeat timeout
        # tells
        victim = "cam-inlet" if "cam-inlet" in self.spots else "spk-dam"
        rec.silent = victim
        self._offline[victim] = asyncio.Event()
        node = self.sims[victim].node
        for t in list(node.tasks):
            t.cancel()  # heartbeat, location, sender... gone; the MQTT client keeps pinging: no last will
        hb = self.gw.registry.get(victim).hb_s
        self.note(
            "SCRIPT  %s hangs: application tasks frozen, TCP session kept alive by MQTT keepalive (no last "
            "will); heartbeat every %d s -> stale after 1 missed, offline after 3 missed (+1.5 s grace)"
            % (victim, hb)
        )
        await self._offline[victim].wait()
        rec.steps["silent node offline"] = True

        # 6. journal verify, as `lookout journal verify` does
        resp = await self.op.request("journal", {"verify": True})
        rec.journal = resp.get("data")
        for e in self.gw.journal.entries():
            rec.journal_kinds[e.kind] = rec.journal_kinds.get(e.kind, 0) + 1
        rec.steps["journal verified"] = bool(rec.journal and rec.journal.get("ok"))

    async def _web_console(self, stack: contextlib.AsyncExitStack, ks: Any) -> None:
        """The duty console beside the gateway (gateway/web/), its spots named on the map; the demo operator
        signs in with a password set here (a temporary key store)."""
        from lookout.gateway.admin.passwords import hash_password
        from lookout.gateway.web.server import WebConsole
        from lookout.gateway.web.sitemap import SiteMap

        ks.set_operator_password(OPERATOR_ID, hash_password(WEB_PASSWORD))
        sm = SiteMap()
        sm.labels = {sp.id: sp.name for sp in self.spots.values()}
        listen = self.web or WEB_LISTEN
        try:
            web = await stack.enter_async_context(WebConsole(self.gw, listen, sm))
        except OSError:  # the port is taken (another demo?): any free port will do
            web = await stack.enter_async_context(WebConsole(self.gw, listen.rpartition(":")[0] + ":0", sm))
        self.say(f"web console  {web.url}  (sign in as {OPERATOR_ID}, password {WEB_PASSWORD})")

    # -- orchestration ---------------------------------------------------------------------------------------
    async def run(self) -> int:
        from lookout.gateway.admin.keystore import KeyStore
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
            self.say(
                "Lookout demo — %s, %d nodes, speed x%g (heartbeat %d s), broker %s%s"
                % (
                    SITE_NAME,
                    len(self.spots),
                    self.speed,
                    self.hb_s,
                    url,
                    " (embedded amqtt)" if self.broker_url is None else "",
                )
            )
            self.say(f"data dir {data}")
            cfg = self._gateway_config(data, url)
            ks = KeyStore(cfg.keystore_path)
            stack.callback(ks.close)
            ks.ensure(GATEWAY_ID, SITE, "gateway") if hasattr(ks, "ensure") else None
            if ks.get_operator(OPERATOR_ID) is None:
                token = ks.add_operator(OPERATOR_ID, "值班员 duty operator (demo)", "operator")
            else:
                raise RuntimeError(f"data dir already has operator {OPERATOR_ID}: use a fresh --data-dir")
            self._start_nodes(data, url, ks)
            self.say(
                "provisioned %d node identities and operator %s in the key store"
                % (len(self.sims), OPERATOR_ID)
            )

            self.gw = await stack.enter_async_context(Gateway(cfg, keystore=ks, broker_url=url))
            self.gw.registry.add_listener(self._on_change)
            self.gw.commands.add_listener(self._on_command)
            gw_task = asyncio.create_task(self.gw.serve(), name="gateway")
            if self.web:
                await self._web_console(stack, ks)

            async def _stop_gw() -> None:
                self.gw.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(gw_task, 10)

            stack.push_async_callback(_stop_gw)

            observer = MQTTLink(url, "demo-observer")
            for ch in ("evt", "res"):
                observer.subscribe(topics.device_filter(SITE, "+", ch), self._on_observed, qos=1)
            await stack.enter_async_context(observer)
            self.op = await stack.enter_async_context(OperatorClient(url, SITE, OPERATOR_ID, token))

            for sim in self.sims.values():
                await sim.start()
            stack.push_async_callback(self._stop_nodes)

            table = asyncio.create_task(self._table_loop(), name="table")
            try:
                await asyncio.wait_for(self.script(), self.duration)
                ok = all(
                    self.rec.steps.get(k)
                    for k in (
                        "nodes online",
                        "event",
                        "broadcast done",
                        "silent node offline",
                        "journal verified",
                    )
                )
            except TimeoutError:
                self.note(f"TIMEOUT the script did not finish within --duration {self.duration:g} s")
            finally:
                table.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await table
            if self.web and self.linger > 0:
                self.say(f"web console stays up for {self.linger:g} s (Ctrl-C ends the demo)")
                await asyncio.sleep(self.linger)
            self._closing = True  # shutdown deaths are not part of the story
            self.say(self.table())
            self.summary(ok)
        return 0 if ok else 1

    async def _stop_nodes(self) -> None:
        for dev, sim in self.sims.items():
            try:
                if dev == self.rec.silent:
                    await sim.kill()
                else:
                    await sim.stop()
            except Exception as e:  # shutting down: report, keep stopping the rest
                log.warning("stopping %s: %r", dev, e)

    # -- summary ---------------------------------------------------------------------------------------------
    def summary(self, ok: bool) -> None:
        r = self.rec
        say = self.say
        say("")
        say("══ Summary " + "═" * 89)
        evs = [e for e in r.events if e.get("kind") != "broadcast"]
        say("events       %d" % len(evs))
        for e in evs:
            say(
                "  t+{:5.1f}s  {} {} sev={} conf={} id={} ({})".format(
                    e["_t"], e["_dev"], e.get("kind"), e.get("sev"), e.get("conf"), e.get("id"), e["_mac"]
                )
            )
        if r.ranking:
            say("dispatch     nearest loudspeaker %s" % (r.chosen or "none in audible range"))
            for c in r.ranking:
                say(
                    "  %-10s %6.0f m straight line%s"
                    % (c.id, c.dist_m, "" if c.in_range else "  (out of range)")
                )
        say("commands     %d" % len(r.commands))
        for cmd in r.commands:
            lat = ", ".join(
                x
                for x in (
                    "accepted after %d ms" % cmd["accepted_ms"] if cmd["accepted_ms"] is not None else "",
                    "playing after %.0f ms" % (cmd["playing_s"] * 1000) if cmd["playing_s"] is not None else "",
                    "final after %d ms" % cmd["latency_ms"] if cmd["latency_ms"] is not None else "",
                    "played %d ms of audio" % cmd["played_ms"] if cmd["played_ms"] is not None else "",
                )
                if x
            )
            say("  broadcast {} -> {}: {} ({})".format(CLIP, cmd["device"], cmd["status"], lat))
        say("state        %d transitions" % len(r.changes))
        for t, dev, old, new, why in r.changes:
            if old == "unknown" and new == "online":
                continue
            say(f"  t+{t:5.1f}s  {dev} {old} -> {new} ({why})")
        online = sorted(d for _t, d, o, n, _w in r.changes if o == "unknown" and n == "online")
        if online:
            say("  (%d devices came online: %s)" % (len(online), ", ".join(online)))
        if r.journal is not None:
            say(
                "journal      %d entries (%s), chain %s, head %s…"
                % (
                    r.journal.get("entries", 0),
                    ", ".join("%s %d" % kv for kv in sorted(r.journal_kinds.items())),
                    "verified OK"
                    if r.journal.get("ok")
                    else "BROKEN at seq {}".format(r.journal.get("bad_seq")),
                    (r.journal.get("head") or "")[:16],
                )
            )
        else:
            say("journal      not verified")
        missing = [
            k
            for k in ("nodes online", "event", "broadcast done", "silent node offline", "journal verified")
            if not r.steps.get(k)
        ]
        say(
            "result       {} in {:.1f} s".format(
                "OK: every scripted step happened" if ok else "FAILED: missing " + ", ".join(missing), r.t()
            )
        )


def run(
    speed: float = 10.0,
    duration: float | None = None,
    nodes: int = 5,
    broker: str | None = None,
    data_dir: str | None = None,
    refresh: float | None = None,
    out: TextIO | None = None,
    verbose: bool = False,
    web: str | None = WEB_LISTEN,
    linger: float = 0.0,
) -> int:
    """Run the demo to completion in a fresh event loop; returns the exit code."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    demo = Demo(speed, duration, nodes, broker, data_dir, refresh, out, web, linger)
    return asyncio.run(demo.run())

"""The Gateway: registry, commands, journal, operator API and metrics wired to one MQTT link.

Theory of operation
-------------------
``async with Gateway(cfg) as gw: await gw.serve()``. Entering opens the stores (key store, registry, commands,
journal, all SQLite under ``data_dir``), starts the embedded broker when none is configured, connects with a
retained birth and a retained death as last will on ``lookout/v1/<site>/<gateway-id>/state`` (bdseq persisted
and incremented per start), and starts named tasks in a TaskGroup: ``tick`` (registry deadlines, command
retries/expiry), ``flush`` (registry persistence, retained registry snapshot), optional ``coap``. Leaving (or
``stop()``, wired to SIGTERM/SIGINT by ``run()``) publishes a clean death, stops the tasks and closes the stores.

The device table is retained on the broker one message per device, ``.../<gateway-id>/registry/<device-id>``,
published when that device's state changes (and all of them, paced, after each reconnect), with a summary of
counts on ``.../<gateway-id>/registry``: no retained message grows with the site (a whole-table snapshot passed
Mosquitto's ``max_packet_size`` at ~600 devices and the broker dropped the gateway for it, in a loop).

Inputs, all from ``lookout/v1/<site>/+/<channel>``: ``state`` (birth/death), ``hb``, ``loc``, ``evt`` and
``res`` (MAC-checked; unsigned or forged ones are journaled under ``security`` and dropped), and operator
requests on ``opreq`` (protocols/opapi.py). Every operator action, alert, command, result and state change is
journaled (gateway/journal.py). A device's messages are handled in arrival order on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import Any, Self

from lookout.gateway.core.clock import now_ms
from lookout.gateway.core.commands import FLUSH_SLICE, Command, CommandService, check_signature
from lookout.gateway.core.config import Config
from lookout.gateway.core.events import Event, EventIntake
from lookout.gateway.core.gcpolicy import GCPolicy
from lookout.gateway.core.journal import Journal
from lookout.gateway.core.metrics import Metrics
from lookout.gateway.core.registry import Change, Device, Registry
from lookout.gateway.core.storage import StorageHealth
from lookout.gateway.links.mqtt import Message, MQTTError, MQTTLink
from lookout.gateway.service.operator_api import OperatorAPI, device_view
from lookout.protocols import messages, opapi, topics
from lookout.protocols.errors import LocalProtocolError, MessageError, TopicError

log = logging.getLogger("lookout.gateway")

FW_VERSION = "gateway-0.1"
MAX_OPREQ = 64  # operator requests in progress at once (each may wait wait_s for a device); more get "busy"
MAX_OPREQ_PER_OPERATOR = 16  # so one operator's script cannot take every slot from the duty officers
PUBACK_TIMEOUT_S = 10.0  # a QoS 1 publish not acknowledged by then counts as failed (the sender retries)
RETAIN_PER_S = 1000  # retained device states published per second at most (after a reconnect: all, paced)
RETAIN_SLICE = 100  # ... in slices, the event loop free between them (~2 ms each)
TOPIC_CACHE = 200_000  # parsed topics remembered (a few per device: the same topics arrive again and again)
REBIRTH_MS = 60_000  # the retained birth again this often: a node that missed it (a full inbox) holds its outbox



class MQTTTransport:
    """Commands to MQTT nodes: QoS 1 on ``.../<id>/cmd``; returns after PUBACK.

    While the link is down a send fails at once instead of parking the bytes in paho's memory queue: the
    command service keeps its own durable queue and re-sends after ``retry_s`` (an outage costs no attempt)."""

    def __init__(self, gw: Gateway):
        self.gw = gw

    async def send(self, device: Device, wire: bytes, cmd: dict[str, Any]) -> None:
        link = self.gw.link
        if link is None or not link.connected.is_set():
            self.gw.metrics.send_failures.labels("link_down").inc()
            raise MQTTError("broker link down")
        try:
            await link.publish(topics.topic(device.site, device.id, "cmd"), wire, qos=1, timeout=PUBACK_TIMEOUT_S)
        except MQTTError:
            self.gw.metrics.send_failures.labels("no_puback").inc()
            raise
        self.gw.metrics.messages_out.labels("cmd").inc()


class Gateway:
    def __init__(self, cfg: Config, keystore: Any = None, broker_url: str | None = None,
                 clock=now_ms):
        self.cfg = cfg
        self.clock = clock
        self._keystore = keystore
        self._broker_url = broker_url or cfg.broker.url
        self.keystore: Any = None
        self.registry: Registry
        self.commands: CommandService
        self.journal: Journal
        self.metrics = Metrics()
        self.link: MQTTLink | None = None
        self.bdseq = 0
        self.url: str | None = None
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._snapshot_dirty = True
        self._retain: dict[str, None] = {}  # devices whose retained state is to be (re)published, in order
        self._topics: dict[str, tuple[str, str, str, str | None]] = {}  # topic -> topics.parse(topic), valid ones
        self._counted_in: dict[str, Any] = {}  # channel -> its messages_in counter
        self._tasks: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._opreq: dict[str, int] = {}  # operator id -> requests in progress
        self._opreq_refused = 0  # answered "busy"
        self.coap: Any = None
        self.drones: Any = None  # the drone bridge, with [mavlink] in the config
        self.recorders: Any = None
        self.metrics_port: int | None = None
        self.storage: StorageHealth

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        cfg = self.cfg
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        log.info("gateway %s serving site %s via %s", cfg.gateway_id, cfg.site, self.url)
        return self

    async def _open(self) -> None:
        cfg = self.cfg
        self.storage = StorageHealth(cfg.data_dir, cfg.min_free_mb << 20, on_change=self._on_storage)
        self.storage.startup_check()  # a full or read-only data_dir: one clear error before any store opens
        if self._keystore is None:
            from lookout.gateway.admin.keystore import KeyStore
            self.keystore = KeyStore(cfg.keystore_path)
            self._stack.callback(self.keystore.close)
        else:
            self.keystore = self._keystore
        self.journal = Journal(cfg.data_dir / "journal.db")
        self._stack.callback(self.journal.close)
        self.storage.add_source(lambda: self.journal.error)
        self.registry = Registry(cfg.registry, cfg.data_dir / "registry.db")
        self._stack.callback(self.registry.close)
        self.events = EventIntake(cfg.data_dir / "events.db")  # verified events, each handed on once
        self._stack.callback(self.events.close)
        self.events.add_listener(self._on_new_event)
        self.commands = CommandService(cfg.commands, self.keystore, self.registry, cfg.data_dir / "commands.db",
                                       clock=self.clock)
        self._stack.callback(self.commands.close)
        self.commands.register_transport("mqtt", MQTTTransport(self))
        self.registry.add_listener(self._on_change)
        self.commands.add_listener(self._on_command)
        from lookout.gateway.clips.distribution import ClipDistributor
        from lookout.gateway.clips.store import ClipStore
        self.clipstore = ClipStore(cfg.data_dir / "clips", self.journal, self.keystore, send=self._clip_status,
                                   clock=self.clock, spawn=self.spawn, retention_days=cfg.recorders.retention_days,
                                   recorder_max_size=cfg.recorders.max_clip_mb << 20)
        self._stack.callback(self.clipstore.close)
        self.ops = OperatorAPI(cfg, self.registry, self.commands, self.journal, self.keystore, self.clock,
                               bdseq=lambda: self.bdseq)
        self.clipdist = ClipDistributor(cfg.data_dir / "clips" / "audio", self.journal, self.commands,
                                        self.clipstore, issue=self.ops.command, publish=self._publish,
                                        spawn=self.spawn, clock=self.clock)
        self.ops.clips = self.clipdist
        self.ops.storage = self.storage
        self.storage.add_source(self.events.retry)  # what waits for the disk is written before it counts as fine
        self.storage.add_source(self.commands.retry_writes)
        self.clipstore.on_status = self.clipdist.on_status
        self.commands.add_listener(self.clipdist.on_command)
        self.metrics.bind_loop(asyncio.get_running_loop())  # gauges are read on the loop that owns them
        self.metrics.watch_gc()
        self._stack.callback(self.metrics.unwatch_gc)
        self.metrics.bind(self._device_counts, self.commands.depths)
        # linkage (gateway/linkage/): rules -> incidents -> warnings and dispatch, through self.ops.command
        from lookout.gateway.linkage import rules as linkage_rules
        from lookout.gateway.linkage.engine import Linkage
        self.linkage = Linkage(linkage_rules.from_config(cfg), site=cfg.site, zones=cfg.zones, journal=self.journal,
                               views=lambda: [device_view(d) for d in self.registry.devices.values()],
                               view=lambda i: device_view(d) if (d := self.registry.get(i)) else None,
                               issue=self.ops.command, publish=self._publish_nowait, spawn=self.spawn,
                               clock=self.clock, db_path=cfg.data_dir / "incidents.db",
                               reload_from=linkage_rules.reloader(cfg))
        self._stack.callback(self.linkage.close)
        self.ops.linkage = self.linkage
        self.commands.add_listener(self.linkage.on_command)
        self.events.add_listener(self._event_to_linkage)
        self.metrics.bind_bounds(self._bounds)

        # listen first: a port another gateway holds stops this one before it touches the broker
        if cfg.metrics_listen:
            with listening("[metrics].listen", cfg.metrics_listen):
                port = self.metrics_port = self.metrics.serve(cfg.metrics_listen)
            self._stack.callback(self.metrics.close)
            log.info("metrics on %s (port %d)", cfg.metrics_listen, port)
        url = self._broker_url
        if url is None:
            from lookout.gateway.links.broker import EmbeddedBroker
            with listening("[broker].embedded_port", f"127.0.0.1:{cfg.broker.embedded_port}"):
                url = await self._stack.enter_async_context(EmbeddedBroker(port=cfg.broker.embedded_port))
        self.url = url

        self.bdseq = self._next_bdseq()
        st = topics.topic(cfg.site, cfg.gateway_id, "state")
        birth = messages.encode("birth", messages.birth("gateway", self.bdseq, FW_VERSION, 30, ts=self.clock(),
                                                        site=cfg.site))
        death = messages.encode("death", messages.death(self.bdseq, "connection lost"))
        b = cfg.broker
        self.link = MQTTLink(url, cfg.gateway_id, username=b.username, password=b.password, ca=b.ca,
                             cert=b.cert, key=b.key, keepalive=b.keepalive_s, will=Message(st, death, 1, True),
                             birth=Message(st, birth, 1, True), on_connect=self._on_link_up)
        root = topics.ROOT + "/" + cfg.site + "/+/"
        for ch in ("state", "hb", "loc", "evt", "res", "opreq", "up/+"):
            self.link.subscribe(root + ch, self._on_message, qos=1)
        await self._stack.enter_async_context(self.link)
        self._stack.push_async_callback(self._farewell)
        self.spawn(self.clipdist.run(), name="clips")
        if cfg.recorders.devices:  # serial body-worn recorders: bridge, hot-plug, transport (service/recorders.py)
            from lookout.gateway.service.recorders import RecorderService
            self.recorders = await self._stack.enter_async_context(RecorderService(self))

        now = self.clock()
        me = self.registry.ensure(cfg.gateway_id, cfg.site, "gateway")
        me.fw, me.bdseq, me.state, me.last_seen_ms, me.since_ms = FW_VERSION, self.bdseq, "online", now, now
        me.hb_s = cfg.registry.max_hb_s  # the gateway's own entry never times out while it runs
        self.registry.refresh(me)
        self._retain[me.id] = None
        self.registry.rebase(now)
        self.journal.append("system", f"gateway {cfg.gateway_id} started (bdseq {self.bdseq})",
                            device=cfg.gateway_id, detail={"broker": url, "bdseq": self.bdseq})

        if cfg.coap_listen:
            from lookout.gateway.links.coap_bridge import CoAPBridge, mqttlink_publisher
            host, _, coap_port = cfg.coap_listen.rpartition(":")
            with listening("[coap].listen", cfg.coap_listen):
                self.coap = await self._stack.enter_async_context(  # 2.04 only once the broker has it (PUBACK)
                    CoAPBridge(mqttlink_publisher(self.link), host, int(coap_port), keystore=self.keystore))
        if cfg.mavlink is not None:  # drones: MAVLink vehicles as devices, proxied on MQTT (gateway/links/mavlink)
            from lookout.gateway.links.mavlink import DroneBridge
            self.drones = await self._stack.enter_async_context(DroneBridge(
                cfg.mavlink, cfg.site, self.keystore, self.registry, self.journal, self._publish_nowait,
                metrics=self.metrics, data_dir=cfg.data_dir, clock=self.clock))
            self.commands.register_transport("drone", self.drones.transport)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        for t in list(self._bg):
            t.cancel()
        await self._stack.aclose()

    async def _farewell(self) -> None:
        if self.link is None:
            return
        st = topics.topic(self.cfg.site, self.cfg.gateway_id, "state")
        death = messages.encode("death", messages.death(self.bdseq, "shutdown"))
        self.journal.append("system", f"gateway {self.cfg.gateway_id} stopping", device=self.cfg.gateway_id)
        await self.link.close(farewell=Message(st, death, 1, True))

    def _next_bdseq(self) -> int:
        p = self.cfg.data_dir / "gateway.json"
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError):
            state = {}
        bd = (int(state.get("bdseq", -1)) + 1) % 2 ** 31
        state["bdseq"] = bd
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(p)
        return bd

    def stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        """Run until ``stop()``: named tasks in one TaskGroup."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._resilient("tick", self._tick_loop), name="tick")
                tg.create_task(self._resilient("flush", self._flush_loop), name="flush")
                await self._stop.wait()
                raise _Stop
        except* _Stop:
            pass

    async def _resilient(self, name: str, loop: Callable[[], Any]) -> None:
        """Run ``loop``; a storage error (disk full, read-only data_dir) restarts it a second later instead of
        ending the service: what is in memory waits for the disk, new work is refused meanwhile (storage.py)."""
        while not self._stop.is_set():
            try:
                await loop()
                return
            except (sqlite3.Error, OSError) as e:
                self.storage.failed(name, e, self.clock())
                log.debug("%s loop: %s; restarting in 1 s", name, e)
                await asyncio.sleep(1.0)

    def _on_storage(self, old: str | None, new: str | None, now: int) -> None:
        """The data directory failed or recovered: journaled (the rows wait in memory until it can write)."""
        if new is not None:
            self.journal.append("system", f"{new}: new work refused", device=self.cfg.gateway_id, ts=now,
                                detail={"problem": new})
        else:
            since = self.storage.since_ms or now
            self.journal.append("system", f"data directory writable again after {(now - since) / 1000:.1f} s",
                                device=self.cfg.gateway_id, ts=now,
                                detail={"was": old, "refused": self.storage.refused, "since_ms": since})

    def spawn(self, coro, name: str | None = None) -> asyncio.Task[Any]:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._bg.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._bg.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("task %s failed", t.get_name(), exc_info=t.exception())

    async def _tick_loop(self) -> None:
        rebirth = self.clock() + REBIRTH_MS
        while not self._stop.is_set():  # not only the TaskGroup's cancel: a cancel can be lost (see mqtt.py)
            self.storage.check(self.clock())
            if self.clock() >= rebirth and self.link is not None and self.link.connected.is_set():
                rebirth = self.clock() + REBIRTH_MS  # nodes send only while they know we listen (PROTOCOL.md §5)
                b = self.link.birth
                if b is not None:
                    self.link.publish_nowait(b.topic, b.payload, b.qos, b.retain)
            if self.link is not None and self.link.connected.is_set():
                self.registry.tick(self.clock())
            await self.commands.tick()
            self.linkage.tick(self.clock())
            await asyncio.sleep(0.25)

    async def _flush_loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            now = self.clock()
            while self.registry.flush(FLUSH_SLICE, now) == FLUSH_SLICE:  # in slices: see Registry.flush
                await asyncio.sleep(0)
            await self.publish_snapshot()
            self.events.prune(self.clock())

    async def publish_snapshot(self) -> None:
        """The retained registry: the states of devices that changed (at most RETAIN_PER_S, in slices), then
        the summary if anything changed. Nothing while the link is down: it all goes out after the reconnect."""
        link = self.link
        if link is None or not link.connected.is_set():
            return
        site, gw = self.cfg.site, self.cfg.gateway_id
        sent = 0
        while self._retain and sent < RETAIN_PER_S and link.connected.is_set():
            for did in list(itertools.islice(self._retain, RETAIN_SLICE)):
                del self._retain[did]
                d = self.registry.get(did)
                if d is None:
                    continue
                try:
                    t = topics.topic(site, gw, "registry", did)
                except LocalProtocolError:  # an id no topic can carry: it stays out of the retained table
                    continue
                link.publish_nowait(t, json.dumps(device_view(d), separators=(",", ":")).encode(), 1, True)
                sent += 1
            await asyncio.sleep(0)
        if sent:
            self.metrics.messages_out.labels("registry").inc(sent)
        if self._snapshot_dirty and link.connected.is_set():
            self._snapshot_dirty = False
            counts = self.registry.counts()
            summary = {"ts": self.clock(), "gateway": gw, "site": site, "devices": sum(counts.values()),
                       "states": counts}
            link.publish_nowait(topics.topic(site, gw, "registry"), json.dumps(summary, separators=(",", ":"))
                                .encode(), 1, True)
            self.metrics.messages_out.labels("registry").inc()

    def _on_link_up(self) -> None:
        self.registry.rebase(self.clock())  # we heard nothing while disconnected: re-arm, don't mass-offline
        self._snapshot_dirty = True
        self._retain.update(dict.fromkeys(self.registry.devices))  # the broker may have lost them: all, paced

    def _bounds(self) -> dict[str, tuple[int, int]]:
        """What each bounded queue holds and how much it refused so far (metrics, read at scrape time)."""
        link = self.link
        return {"mqtt_outbox": (link.queued() if link else 0, link.dropped if link else 0),
                "journal_pending": (self.journal.pending, self.journal.dropped),
                "operator_requests": (sum(self._opreq.values()), self._opreq_refused),
                "registry_writes": (self.registry.pending_writes(), 0), "registry_retain": (len(self._retain), 0)}

    def _device_counts(self) -> dict[tuple[str, str], int]:
        return self.registry.kind_state_counts()

    # -- listeners -------------------------------------------------------------------------------------------
    def _on_change(self, c: Change) -> None:
        if c.transition:
            self._snapshot_dirty = True
            self._retain[c.device] = None
            self.metrics.transitions.labels(c.new).inc()
            self.journal.append("state", f"{c.device} {c.old} -> {c.new} ({c.what})", device=c.device,
                                ts=c.ts, detail={"kind": c.kind, "old": c.old, "new": c.new, "why": c.what,
                                                 **c.detail})
            log.info("%s %s -> %s (%s)", c.device, c.old, c.new, c.what)
            if c.new == "offline":
                self.commands.on_offline(c.device)
            if c.new == "online" and c.what == "birth":
                self.spawn(self.commands.on_birth(c.device), name=f"birth-{c.device}")
        elif c.what == "rebirth":
            self._snapshot_dirty = True
            self._retain[c.device] = None
            self.journal.append("state", f"{c.device} reborn (bdseq {c.detail.get('bdseq')})", device=c.device,
                                ts=c.ts, detail=c.detail)
            self.spawn(self.commands.on_birth(c.device), name=f"birth-{c.device}")
        elif c.what in ("interval_clamped", "bdseq_stale"):
            self.journal.append("security" if c.what == "bdseq_stale" else "state",
                                f"{c.device}: {c.what}", device=c.device, ts=c.ts, detail=c.detail)
            log.warning("%s: %s %s", c.device, c.what, c.detail)

    def _on_command(self, c: Command, old: str) -> None:
        # append_soon: journaled in call order, but hashed after the command / the operator response is out
        if old == "new":
            self.journal.append_soon("command", f"{c.name} -> {c.device}: {c.status}", operator=c.op,
                                     device=c.device, detail=c.summary())
        elif c.final or c.status == "accepted":
            self.journal.append_soon("result", f"{c.name} {c.id} on {c.device}: {c.status}"
                                     + (f" ({c.code})" if c.code and c.code != c.status else ""),
                                     operator=c.op, device=c.device, detail=c.summary())
            if c.final:
                self.metrics.commands.labels(c.status).inc()
                if c.latency_ms is not None:
                    self.metrics.latency.observe(c.latency_ms / 1000)

    # -- inputs ----------------------------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = self._topics.get(topic)
        if parsed is None:
            try:
                parsed = topics.parse(topic)
            except TopicError:
                self.metrics.rejected.labels("topic").inc()
                return
            if len(self._topics) >= TOPIC_CACHE:
                self._topics.clear()
            self._topics[topic] = parsed
        site, dev, ch, _sub = parsed
        counter = self._counted_in.get(ch)
        if counter is None:
            counter = self._counted_in[ch] = self.metrics.messages_in.labels(ch)
        counter.inc()
        if ch == "opreq":
            self._admit_operator_request(dev, payload)
            return
        if dev == self.cfg.gateway_id:
            return
        now = self.clock()
        try:
            if ch == "state":
                if not payload:
                    return  # retained state cleared
                obj = json.loads(payload)
                kind = "birth" if isinstance(obj, dict) and obj.get("online") is True else "death"
                msg = messages.decode(kind, payload)
                if not self._state_trusted(dev, msg):
                    return
                if kind == "birth":
                    self.registry.birth(dev, site, msg, now)
                else:
                    self.registry.death(dev, site, msg, now)
            elif ch == "hb":
                hb = messages.decode("hb", payload)
                self.registry.heartbeat(dev, site, hb, now)
                if hb.get("state") == "state_lost":  # the node's replay counter is unknown: re-synchronise it
                    self.commands.resync(dev, hb.get("nonce"))
            elif ch == "loc":
                self.registry.location(dev, site, messages.decode("loc", payload), now)
                self.linkage.on_location(dev)
            elif ch == "evt":
                self._on_event(site, dev, messages.decode("evt", payload), now)
            elif ch == "res":
                self._on_result(site, dev, messages.decode("res", payload), now)
            elif ch == "up":
                self.clipstore.on_message(site, dev, _sub, payload, now)  # uploads; never raises
        except (MessageError, ValueError) as e:
            self.metrics.rejected.labels("invalid").inc()
            log.warning("invalid %s from %s: %s", ch, dev, e)
        except (sqlite3.Error, OSError) as e:  # a store could not write: the state is kept in memory meanwhile
            self.storage.failed(ch, e, now)

    def _signed(self, dev: str, purpose: str, msg: dict[str, Any]) -> bool:
        p = check_signature(self.keystore, dev, purpose, msg)
        if p is None:
            return True
        if p.code == "unsigned":
            self.commands.unsigned += 1
        else:
            self.commands.forged += 1
        self.metrics.rejected.labels(p.code).inc()
        self.journal.append("security", f"{p.code} {purpose} from {dev} dropped", device=dev,
                            detail={"purpose": purpose, "code": p.code, "why": p.detail,
                                    "id": msg.get("id")})
        log.warning("dropped %s %s from %s: %s", p.code, purpose, dev, p.detail)
        return False

    def _state_trusted(self, dev: str, msg: dict[str, Any]) -> bool:
        """A birth/death is believed when its MAC (purpose ``state``) verifies, or when it needs none: an MQTT
        device's own broker login and ACL vouch for its ``state`` topic. A CoAP device's state always needs the
        MAC: it reaches MQTT under the gateway's login (the CoAP bridge), which may write any device's topic."""
        ident = self.keystore.get(dev)
        if "mac" in msg or (ident is not None and (ident.meta or {}).get("transport") == "coap"):
            return self._signed(dev, "state", msg)
        return True

    def _on_event(self, site: str, dev: str, msg: dict[str, Any], now: int) -> None:
        if not self._signed(dev, "evt", msg):
            return
        self.registry.touch(dev, site, now, seq=msg.get("seq"), channel="evt")
        verdict = self.events.offer(site, dev, msg, now)  # "new": handed on to _on_new_event and the others
        if verdict == "duplicate":
            self.metrics.duplicates.labels("evt").inc()
        elif verdict == "stale":
            self.metrics.rejected.labels("stale").inc()
            self.journal.append("security", f"stale evt {msg['id']} from {dev} not acted on", device=dev, ts=now,
                                detail={"purpose": "evt", "code": "stale", "window_ms": self.events.window_ms,
                                        "event": {k: v for k, v in msg.items() if k != "mac"}})
            log.warning("stale event %s from %s (ts %s) not acted on", msg["id"], dev, msg.get("ts"))

    def _on_new_event(self, e: Event) -> None:
        """The first listener of the event intake: the alert in the journal, its evidence linked."""
        msg = e.msg
        j = self.journal.append("alert", f"{msg['sev']} {msg['kind']} at {e.device}", device=e.device,
                                ts=e.now_ms, detail={k: v for k, v in msg.items() if k != "mac"})
        if msg.get("evidence"):
            self.clipstore.link_event(e.device, msg, j.seq, e.now_ms)

    def _on_result(self, site: str, dev: str, msg: dict[str, Any], now: int) -> None:
        if not self._signed(dev, "res", msg):
            return
        self.registry.touch(dev, site, now, seq=msg.get("seq"), channel="res")
        self.commands.on_result(dev, msg)

    # -- operator API ----------------------------------------------------------------------------------------
    def _admit_operator_request(self, op_id: str, payload: bytes) -> None:
        """One task per request, at most ``MAX_OPREQ`` at a time and ``MAX_OPREQ_PER_OPERATOR`` per operator
        (``op_id`` is the topic's, which the broker ACL ties to the operator's login); beyond that the request
        is answered ``busy`` at once and counted, never queued without bound."""
        mine = self._opreq.get(op_id, 0)
        if sum(self._opreq.values()) >= MAX_OPREQ or mine >= MAX_OPREQ_PER_OPERATOR:
            self._opreq_refused += 1
            if self.link is not None:
                resp = opapi.response(opapi.peek_id(payload), "busy",
                                      error=f"gateway busy: {mine} of your requests in progress; retry shortly")
                self.link.publish_nowait(topics.topic(self.cfg.site, op_id, "opres"), opapi.encode_response(resp), 1)
            return
        self._opreq[op_id] = mine + 1
        t = self.spawn(self._operator_request(op_id, payload), name=f"opreq-{op_id}")
        t.add_done_callback(lambda _t: self._opreq_done(op_id))

    def _opreq_done(self, op_id: str) -> None:
        n = self._opreq.get(op_id, 0) - 1
        if n > 0:
            self._opreq[op_id] = n
        else:
            self._opreq.pop(op_id, None)

    async def _operator_request(self, op_id: str, payload: bytes) -> None:
        try:
            req = opapi.decode_request(payload)
        except MessageError as e:
            rid = opapi.peek_id(payload)  # parsed a second time only for a bad request
            self.journal.append("operator", f"bad request from {op_id}", operator=op_id,
                                detail={"error": str(e)})
            await self._respond(op_id, opapi.response(rid, "bad_request", error=str(e)))
            return
        op = self.keystore.verify_operator(op_id, req["token"])
        if op is None:
            self.journal.append("security", f"operator request from unknown/unauthorized {op_id} refused",
                                operator=op_id, detail={"op": req["op"], "id": req["id"]})
            await self._respond(op_id, opapi.response(req["id"], "unauthorized",
                                                      error=f"operator {op_id!r} unknown or token wrong"))
            return
        refused = self.ops.refuse_role(op_id, op.role, req["op"], req["args"], req["id"])
        if refused is not None:  # a viewer (the county's operator) asked for more than a read
            await self._respond(op_id, refused)
            return
        try:
            resp = await self.ops.handle(op_id, req["op"], req["args"], req["id"], drain=False)
        except Exception as e:
            log.exception("operator request %s failed", req["id"])
            resp = opapi.response(req["id"], "internal", error=f"{type(e).__name__}: {e}")
        await self._respond(op_id, resp)

    async def _respond(self, op_id: str, resp: dict[str, Any]) -> None:
        """Publish the response, then chain the journal entries deferred on the way (the command's, its
        results', the operator's: ``Journal.append_soon``) while the operator reads it."""
        if self.link is None:
            return
        t = topics.topic(self.cfg.site, op_id, "opres")  # op_id came from a parsed topic: valid
        wire = opapi.encode_response(resp)
        if len(wire) > opapi.MAX_RESPONSE:  # the client would drop it unread: say so instead (never silent)
            log.warning("response to %s %s is %d bytes, over the limit", op_id, resp.get("id"), len(wire))
            wire = opapi.encode_response(opapi.response(
                resp.get("id"), "internal", error=f"the answer is {len(wire)} bytes, over the operator API's limit "
                f"{opapi.MAX_RESPONSE}: ask for less (a smaller limit or a narrower filter)"))
        started = self.link.start_publish(t, wire, qos=1)
        self.journal.drain()
        await self.link.wait_puback(started, t, timeout=10.0)
        self.metrics.messages_out.labels("opres").inc()


    async def handle_op(self, op_id: str, op: str, a: dict[str, Any], rid: str | None = None) -> dict[str, Any]:
        """One operator request as if it had arrived over MQTT from an authenticated operator (demo, tests)."""
        return await self.ops.handle(op_id, op, a, rid)

    def resolve(self, to: str, op: str) -> list[str]:
        return self.ops.resolve(to, op)

    def list_clips(self) -> list[dict[str, Any]]:
        return self.clipdist.audio.list()

    def _event_to_linkage(self, e: Event) -> None:
        """An event intake listener: each verified, first-seen event reaches the linkage rules once."""
        self.linkage.on_event(e.site, e.device, e.msg, e.now_ms)

    def _publish_nowait(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Queue a publish on the link (linkage notifications); raises while the link is not open."""
        if self.link is None:
            raise ConnectionError("gateway link not open")
        self.link.publish_nowait(topic, payload, qos, retain)

    async def _publish(self, topic: str, payload: bytes, qos: int, timeout: float) -> None:
        """QoS 1 publish that returns after the PUBACK (clip chunks); fails at once while the link is down."""
        if self.link is None:
            raise ConnectionError("gateway link not open")
        await self.link.publish(topic, payload, qos, timeout=timeout)

    def _clip_status(self, site: str, dev: str, tid: int, payload: bytes) -> None:
        """Resume request for a stalled upload: the status goes to the node's own dl/<tid> (its ACL allows it)."""
        if self.link is not None:
            self.link.publish_nowait(topics.topic(site, dev, "dl", str(tid)), payload, 1)


class _Stop(Exception):
    pass


class ListenError(OSError):
    """A listening address of the config cannot be bound; the message names the address and its key."""


@contextlib.contextmanager
def listening(key: str, addr: str) -> Iterator[None]:
    """Turn a failure to listen (taken port, bad address; amqtt and aiocoap wrap the OSError) into one line
    that names ``addr`` and the config ``key``."""
    try:
        yield
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        why = cause.strerror or str(cause)
        if cause.errno == errno.EADDRINUSE:
            why += " (another gateway, or another program, already listens there)"
        raise ListenError(cause.errno, f"cannot listen on {addr} ({key}): {why}") from e


def configure_logging(level: str, fmt: str = "text") -> None:
    from lookout.gateway.core import logs

    logs.configure(level, fmt)


async def run(cfg: Config, broker_url: str | None = None,
              attach: Callable[[Gateway], contextlib.AbstractAsyncContextManager[Any]] | None = None) -> int:
    """The service entry point: SIGTERM/SIGINT stop it cleanly. ``attach(gw)``: a context that runs beside the
    gateway for its lifetime (the CLI passes the web console when ``[web].listen`` is set; the service cannot
    import it, being a layer below)."""
    loop = asyncio.get_running_loop()
    # the journal writer and the WAL checkpoint threads share the GIL with the event loop; with CPython's default
    # 5 ms switch interval the loop can wait that long for it back (p50 8 -> 5 ms at 1 ms, measured when paho still
    # had its own thread; the writer threads remain)
    sys.setswitchinterval(0.001)
    async with Gateway(cfg, broker_url=broker_url) as gw, contextlib.AsyncExitStack() as extras:
        if attach is not None:
            await extras.enter_async_context(attach(gw))
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, gw.stop)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, gw.linkage.reload)  # rules again; a bad file keeps the old
        # long-lived objects out of the collector's way: short full collections whatever the site's size
        gw.spawn(GCPolicy(lambda: len(gw.registry.devices)).run(), name="gc")
        await gw.serve()
    return 0


__all__ = ["Gateway", "MQTTTransport", "device_view", "run"]

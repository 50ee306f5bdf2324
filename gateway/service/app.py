"""The Gateway: registry, commands, journal, operator API and metrics wired to one MQTT link.

Theory of operation
-------------------
``async with Gateway(cfg) as gw: await gw.serve()``. Entering opens the stores (key store, registry, commands,
journal, all SQLite under ``data_dir``), starts the embedded broker when none is configured, connects with a
retained birth and a retained death as last will on ``lookout/v1/<site>/<gateway-id>/state`` (bdseq persisted
and incremented per start), and starts named tasks in a TaskGroup: ``tick`` (registry deadlines, command
retries/expiry), ``flush`` (registry persistence, retained registry snapshot), optional ``coap``. Leaving (or
``stop()``, wired to SIGTERM/SIGINT by ``run()``) publishes a clean death, stops the tasks and closes the stores.

Inputs, all from ``lookout/v1/<site>/+/<channel>``: ``state`` (birth/death), ``hb``, ``loc``, ``evt`` and
``res`` (MAC-checked; unsigned or forged ones are journaled under ``security`` and dropped), and operator
requests on ``opreq`` (protocols/opapi.py). Every operator action, alert, command, result and state change is
journaled (gateway/journal.py). A device's messages are handled in arrival order on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any, Self

from lookout.gateway.core.clock import now_ms
from lookout.gateway.core.commands import FLUSH_SLICE, Command, CommandService, check_signature
from lookout.gateway.core.config import Config
from lookout.gateway.core.journal import Journal
from lookout.gateway.core.metrics import Metrics
from lookout.gateway.core.registry import Change, Device, Registry
from lookout.gateway.links.mqtt import Message, MQTTLink
from lookout.gateway.service.operator_api import OperatorAPI, device_view
from lookout.protocols import messages, opapi, topics
from lookout.protocols.errors import MessageError, TopicError

log = logging.getLogger("lookout.gateway")

FW_VERSION = "gateway-0.1"



class MQTTTransport:
    """Commands to MQTT nodes: QoS 1 on ``.../<id>/cmd``; returns after PUBACK."""

    def __init__(self, gw: Gateway):
        self.gw = gw

    async def send(self, device: Device, wire: bytes, cmd: dict[str, Any]) -> None:
        assert self.gw.link is not None
        await self.gw.link.publish(topics.topic(device.site, device.id, "cmd"), wire, qos=1, timeout=10.0)
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
        self._tasks: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self.coap: Any = None
        self.recorders: Any = None
        self.metrics_port: int | None = None

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
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if self._keystore is None:
            from lookout.gateway.admin.keystore import KeyStore
            self.keystore = KeyStore(cfg.keystore_path)
            self._stack.callback(self.keystore.close)
        else:
            self.keystore = self._keystore
        self.journal = Journal(cfg.data_dir / "journal.db")
        self._stack.callback(self.journal.close)
        self.registry = Registry(cfg.registry, cfg.data_dir / "registry.db")
        self._stack.callback(self.registry.close)
        self.commands = CommandService(cfg.commands, self.keystore, self.registry, cfg.data_dir / "commands.db",
                                       clock=self.clock)
        self._stack.callback(self.commands.close)
        self.commands.register_transport("mqtt", MQTTTransport(self))
        self.registry.add_listener(self._on_change)
        self.commands.add_listener(self._on_command)
        from lookout.gateway.clips.distribution import ClipDistributor
        from lookout.gateway.clips.store import ClipStore
        self.clipstore = ClipStore(cfg.data_dir / "clips", self.journal, self.keystore, send=self._clip_status,
                                   clock=self.clock, retention_days=cfg.recorders.retention_days,
                                   recorder_max_size=cfg.recorders.max_clip_mb << 20)
        self._stack.callback(self.clipstore.close)
        self.ops = OperatorAPI(cfg, self.registry, self.commands, self.journal, self.keystore, self.clock,
                               bdseq=lambda: self.bdseq)
        self.clipdist = ClipDistributor(cfg.data_dir / "clips" / "audio", self.journal, self.commands,
                                        self.clipstore, issue=self.ops.command, publish=self._publish,
                                        spawn=self.spawn, clock=self.clock)
        self.ops.clips = self.clipdist
        self.clipstore.on_status = self.clipdist.on_status
        self.commands.add_listener(self.clipdist.on_command)
        self.metrics.bind(self._device_counts, self.commands.depths)

        url = self._broker_url
        if url is None:
            from lookout.gateway.links.broker import EmbeddedBroker
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
        self.registry.rebase(now)
        self.journal.append("system", f"gateway {cfg.gateway_id} started (bdseq {self.bdseq})",
                            device=cfg.gateway_id, detail={"broker": url, "bdseq": self.bdseq})

        if cfg.metrics_listen:
            port = self.metrics_port = self.metrics.serve(cfg.metrics_listen)
            self._stack.callback(self.metrics.close)
            log.info("metrics on %s (port %d)", cfg.metrics_listen, port)
        if cfg.coap_listen:
            from lookout.gateway.links.coap_bridge import CoAPBridge
            host, _, coap_port = cfg.coap_listen.rpartition(":")
            self.coap = await self._stack.enter_async_context(
                CoAPBridge(self._coap_publish, host, int(coap_port), keystore=self.keystore))

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
                tg.create_task(self._tick_loop(), name="tick")
                tg.create_task(self._flush_loop(), name="flush")
                await self._stop.wait()
                raise _Stop
        except* _Stop:
            pass

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
        while not self._stop.is_set():  # not only the TaskGroup's cancel: a cancel can be lost (see mqtt.py)
            if self.link is not None and self.link.connected.is_set():
                self.registry.tick(self.clock())
            await self.commands.tick()
            await asyncio.sleep(0.25)

    async def _flush_loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(1.0)
            while self.registry.flush(FLUSH_SLICE) == FLUSH_SLICE:  # in slices: see Registry.flush
                await asyncio.sleep(0)
            if self._snapshot_dirty:
                await self.publish_snapshot()

    async def publish_snapshot(self) -> None:
        self._snapshot_dirty = False
        if self.link is None or not self.link.connected.is_set():
            self._snapshot_dirty = True
            return
        snap = {"ts": self.clock(), "gateway": self.cfg.gateway_id, "site": self.cfg.site,
                "devices": [device_view(d) for d in self.registry.select()]}
        self.link.publish_nowait(topics.topic(self.cfg.site, self.cfg.gateway_id, "registry"),
                                 json.dumps(snap, separators=(",", ":")).encode(), 1, True)
        self.metrics.messages_out.labels("registry").inc()

    def _on_link_up(self) -> None:
        self.registry.rebase(self.clock())  # we heard nothing while disconnected: re-arm, don't mass-offline
        self._snapshot_dirty = True

    def _coap_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self.link is None:
            raise ConnectionError("gateway link not open")
        self.link.publish_nowait(topic, payload, qos, retain)

    def _device_counts(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for d in self.registry.devices.values():
            out[(d.kind, d.state)] = out.get((d.kind, d.state), 0) + 1
        return out

    # -- listeners -------------------------------------------------------------------------------------------
    def _on_change(self, c: Change) -> None:
        if c.transition:
            self._snapshot_dirty = True
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
        try:
            site, dev, ch, _sub = topics.parse(topic)
        except TopicError:
            self.metrics.rejected.labels("topic").inc()
            return
        self.metrics.messages_in.labels(ch).inc()
        if ch == "opreq":
            self.spawn(self._operator_request(dev, payload), name=f"opreq-{dev}")
            return
        if dev == self.cfg.gateway_id:
            return
        now = self.clock()
        try:
            if ch == "state":
                if not payload:
                    return  # retained state cleared
                obj = json.loads(payload)
                if isinstance(obj, dict) and obj.get("online") is True:
                    self.registry.birth(dev, site, messages.decode("birth", payload), now)
                else:
                    self.registry.death(dev, site, messages.decode("death", payload), now)
            elif ch == "hb":
                self.registry.heartbeat(dev, site, messages.decode("hb", payload), now)
            elif ch == "loc":
                self.registry.location(dev, site, messages.decode("loc", payload), now)
            elif ch == "evt":
                self._on_event(site, dev, messages.decode("evt", payload), now)
            elif ch == "res":
                self._on_result(site, dev, messages.decode("res", payload), now)
            elif ch == "up":
                self.clipstore.on_message(site, dev, _sub, payload, now)  # uploads; never raises
        except (MessageError, ValueError) as e:
            self.metrics.rejected.labels("invalid").inc()
            log.warning("invalid %s from %s: %s", ch, dev, e)

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

    def _on_event(self, site: str, dev: str, msg: dict[str, Any], now: int) -> None:
        if not self._signed(dev, "evt", msg):
            return
        self.registry.touch(dev, site, now, seq=msg.get("seq"), channel="evt")
        e = self.journal.append("alert", f"{msg['sev']} {msg['kind']} at {dev}", device=dev, ts=now,
                                detail={k: v for k, v in msg.items() if k != "mac"})
        if msg.get("evidence"):
            self.clipstore.link_event(dev, msg, e.seq, now)

    def _on_result(self, site: str, dev: str, msg: dict[str, Any], now: int) -> None:
        if not self._signed(dev, "res", msg):
            return
        self.registry.touch(dev, site, now, seq=msg.get("seq"), channel="res")
        self.commands.on_result(dev, msg)

    # -- operator API ----------------------------------------------------------------------------------------
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
        started = self.link.start_publish(t, opapi.encode_response(resp), qos=1)
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


def configure_logging(level: str, fmt: str = "text") -> None:
    from lookout.gateway.core import logs

    logs.configure(level, fmt)


async def run(cfg: Config, broker_url: str | None = None) -> int:
    """The service entry point: SIGTERM/SIGINT stop it cleanly."""
    loop = asyncio.get_running_loop()
    # the journal writer and the WAL checkpoint threads share the GIL with the event loop; with CPython's default
    # 5 ms switch interval the loop can wait that long for it back (p50 8 -> 5 ms at 1 ms, measured when paho still
    # had its own thread; the writer threads remain)
    sys.setswitchinterval(0.001)
    async with Gateway(cfg, broker_url=broker_url) as gw:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, gw.stop)
        await gw.serve()
    return 0


__all__ = ["Gateway", "MQTTTransport", "device_view", "run"]

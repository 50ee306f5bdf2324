"""The node application: MQTT session, heartbeat, location, commands, role tasks, supervisor and watchdog.

Theory of operation:
- One ``Node`` per boot. It loads ``config.json`` through ``ConfigStore.boot()`` (which may roll back a change
  that failed on trial), bumps the persisted boot counter ``bdseq`` (Sparkplug B style: birth and death carry
  it, so the gateway can tell a stale death from the current session), and builds one ``MQTTClient`` with
  client id = username = device id, a persistent session (clean_session = 0: the broker queues QoS 1 commands
  while we are away; duplicates are harmless because the command path de-duplicates), the retained birth on
  ``state`` and the retained death as last will.
- Everything runs as supervised tasks (``_supervise``; each named like the method it runs: ``session``,
  ``sender``, ``hb``, ``loc``, ``wdt``): an exception is counted (``errs`` and ``err`` in the
  heartbeat), logged, and the task restarted with a growing delay. The watchdog is fed only by the watchdog
  task, and only while the loop is healthy: no task in a crash loop, and the broker reachable within
  ``offline_reboot_s`` (default 1800; a node that cannot get back online for half an hour is better off rebooting).
- Events and results go through the persistent ``Outbox``; one sender task publishes its oldest item with QoS 1
  and removes exactly that item (by its number) only after PUBACK. Heartbeats and locations are QoS 0 and only sent while connected.
- With ``"gateway": "<id>"`` in the config the sender also waits until that gateway is online on the current
  connection: the node subscribes to the gateway's retained ``state`` and sends only after a birth arrived on
  this very connection and no death since (Sparkplug's primary host awareness). A broker's PUBACK says only
  that the broker has the message; with no gateway subscribed (a broker that just restarted, a gateway that
  died: its will) the broker would drop it, so the outbox keeps it instead.
- A PUBACK is not delivery either when the broker crashes right after it (or resets the gateway's connection
  with the message unread): the last ``RECENT`` events acknowledged are remembered in RAM, and when their
  connection breaks, those acknowledged within one keepalive and a half before the break was noticed go back
  into the outbox (``_replay``). The gateway drops the copies it already had (by event id). Results are not
  kept: a lost one comes back when the gateway re-sends its command (answered from the command cache), and
  holding eight of them cost a board's heap the room a clip chunk needs.
- Commands arrive on ``cmd`` and go to ``CommandProcessor`` (verification in front of every handler); clip
  chunks arrive on ``dl/<tid>``.
- Code a node may never run is loaded on first use, never at boot: ``node_admin`` (reboot, set_config,
  rotate_key, and ``shutdown``) when such a command has passed verification or the app stops, ``node_tls`` (CA pin, TLS context) only when
  ``broker.tls`` is on, ``node_gps`` (NMEA reader) only on a board with a GPS.
- ``run()`` returns when the app should restart (``exit_reason``): a reboot command, or a config change that
  needs a fresh connection. A device's main.py then resets the board; SimNode builds a new Node.
"""

import json

from protocols import messages, signing, topics
from lookout_node.config import ConfigStore
from lookout_node.commands import CommandProcessor, Rejected, load, trim
from lookout_node.hal import asyncio, sleep_ms, ticks_diff, ticks_ms
from lookout_node.outbox import Outbox

FW = "lookout-node/0.1.0"
# Tunables inlined below (each a literal, no module global at boot): fixed-position reports every 60 * loc_s
# (and at each connect); 5 restarts of one task within 60 s = a crash loop (the watchdog stops being fed).


class Node:
    def __init__(self, hal, mqtt_opts=None, log=None):
        self.hal = hal
        self.fs = fs = hal.fs
        self.log = log or (lambda level, text: None)  # (level, text)
        self.store = ConfigStore(fs)
        self.cfg = c = self.store.boot()
        self.id = c["id"]
        self.site = c["site"]
        self.role = c["role"]
        self.key = bytes.fromhex(c["key"])  # validated by config.py: 64 hex
        self.mqtt_opts = mqtt_opts or {}
        raw = fs.read("bdseq")  # boot counter (Sparkplug B bdSeq): birth and death carry it
        try:
            n = int(raw) + 1 if raw else 0
        except ValueError:
            n = 0
        self.bdseq = n % 2147483647
        fs.write("bdseq", str(self.bdseq).encode())
        self.outbox = Outbox(fs)
        self.errors = 0
        self.last_error = None
        self.restarts = {}  # task name -> ticks of its last restarts (at most 5)
        self.restart_delay_ms = 100  # first restart delay of a crashed task (doubles up to 30 s)
        self.wdt_period_ms = None  # watchdog feed period; None = wdt_ms // 4
        self.seq = {"hb": 0, "loc": 0, "evt": 0}  # per-message-kind sequence numbers
        self.fix = None  # last GPS fix: dict lat, lon, alt_mm, fix, sats, hdop, spd_cms, hdg_cd
        self.client = None
        self.gw = None  # connection token on which the gateway's birth arrived (None: not seen or dead since)
        self.gw_up = asyncio.Event()
        self.recent = []  # [ticks acked, connection number, topic, payload] of the last RECENT events sent
        self.tasks = []
        self.exit_reason = None
        self._exit = asyncio.Event()
        self._offline_since = ticks_ms()
        self.tid = (ticks_ms() ^ (self.bdseq << 16)) & 0x7FFFFFFF  # last upload transfer id (new_tid)
        self.proc = p = CommandProcessor(
            self.id, self.key, fs, self.clock,
            lambda m: self.outbox.put(self.topic("res"), messages.encode("res", m)),
            spawn=asyncio.create_task, on_error=self.record_error)
        p.register("ping", self.ping)
        p.lazy(("reboot", "set_config", "rotate_key"), lambda q: load("node_admin").register(self, q))
        self.speaker = None
        self.sensor = None
        if self.role == "speaker" or (c.get("local_warning") or {}).get("enabled"):
            from lookout_node.speaker import Speaker

            self.speaker = Speaker(hal, c, self.emit_event, self.save_cfg,
                                   lambda tid, b: self.publish(self.upload_topic(tid), b, 1), self.record_error)
            if self.role == "speaker":
                self.speaker.register(p)
        if self.role in ("sensor", "camera"):
            from lookout_node.sensor import Sensor

            self.sensor = Sensor(hal, c, self)
            self.sensor.register(p)

    # ---- small helpers ------------------------------------------------------------------------------------
    def clock(self):
        """Unix ms, or None while the wall clock is not set."""
        t = self.hal.time_ms()
        return t if t is not None and t >= messages.MS_MIN else None

    def topic(self, channel, sub=None):
        return topics.topic(self.site, self.id, channel, sub)

    def record_error(self, where, exc):
        self.errors += 1
        self.last_error = trim("%s: %s: %s" % (where, type(exc).__name__, exc))
        self.log("error", self.last_error)

    def save_cfg(self, key, value):
        """Persist a live setting (volume, sensor settings...)."""
        self.cfg[key] = value
        self.store.save(self.cfg)

    def new_tid(self):
        self.tid = (self.tid + 1) & 0xFFFFFFFF
        return self.tid

    def upload_topic(self, tid):
        return self.topic("up", str(tid))

    def online(self):
        return self.client is not None and self.client.is_connected()

    def offline_for_ms(self):
        """None while connected, else how long the gateway has been unreachable."""
        if self.online():
            return None
        return ticks_diff(ticks_ms(), self._offline_since)

    async def publish(self, topic, payload, qos=0, retain=False):
        from lookout_node.mqtt import NotConnected

        if self.client is None:
            raise NotConnected("no client")
        await self.client.publish(topic, payload, qos, retain)

    async def _pub0(self, kind, m):
        """QoS 0 (heartbeat, location): sent only while connected, never queued."""
        from lookout_node.mqtt import NotConnected

        try:
            await self.client.publish(self.topic(kind), messages.encode(kind, m), 0)
        except NotConnected:
            pass

    # ---- outgoing messages --------------------------------------------------------------------------------
    def emit_event(self, kind, sev, detail=None, conf=None, count=None, evidence=None):
        self.seq["evt"] = n = self.seq["evt"] + 1
        # no clock yet: the earliest legal time marks "unknown" (docs/FIRMWARE.md)
        p = self.fix or self.cfg.get("position") or {}  # GPS fix, else the fixed position
        m = {"id": "%s-%d-%d" % (self.id, self.bdseq, n), "seq": n, "ts": self.clock() or messages.MS_MIN,
             "kind": kind, "sev": sev}
        for k, v in (("conf", conf), ("count", count), ("evidence", evidence), ("lat", p.get("lat")),
                     ("lon", p.get("lon")), ("detail", trim(detail) if detail else None)):
            if v is not None:
                m[k] = v
        signing.sign(self.key, "evt", m)
        self.outbox.put(self.topic("evt"), messages.encode("evt", m))
        return m

    def local_warning(self, clip):
        sp = self.speaker
        if sp is None or not sp.has_clip(clip):
            return False
        from lookout_node.speaker import Broadcast

        try:
            sp.policy(2)  # quiet hours and a broadcast of equal/higher priority win
            sp.submit(Broadcast(clip, 1, self.cfg.get("volume", 80), 2))
        except Rejected as e:
            self.log("info", "local warning not played: %s" % e.code)
            return False
        return True

    def heartbeat(self):
        self.seq["hb"] += 1
        h = self.hal
        m = {"seq": self.seq["hb"], "up_s": h.uptime_s(), "hb_s": self.cfg["hb_s"], "fw": FW,
             "errs": self.errors, "outbox": len(self.outbox), "dropped": self.outbox.dropped, "state": "ok"}
        for k, v in (("ts", self.clock()), ("rssi", h.rssi()), ("bat_mv", h.battery_mv()),
                     ("temp_dc", h.temperature_dc()), ("heap", h.free_heap()), ("err", self.last_error)):
            if v is not None:
                m[k] = v
        if self.proc.lost is not None:  # commands refused until the gateway's resync echoes the nonce
            m["state"] = "state_lost"
            m["nonce"] = self.proc.lost
        elif self.store.trial is not None:
            m["state"] = "trial"
        elif self.speaker is not None and self.speaker.current is not None:
            m["state"] = "playing"
        return m

    # ---- commands common to every node (the rare ones: node_admin.py) -------------------------------------
    async def ping(self, args, cmd):
        return {"pong": True, "up_s": self.hal.uptime_s(), "fw": FW, "bdseq": self.bdseq}

    # ---- incoming -----------------------------------------------------------------------------------------
    def on_message(self, msg):
        try:
            _, _, ch, sub = topics.parse(msg.topic)
        except Exception as e:
            self.record_error("topic", e)
            return
        if ch == "state":  # the gateway's birth or death (the only state topic a node subscribes to)
            try:
                up = msg.payload[:1] == b"{" and json.loads(msg.payload).get("online") is True
            except Exception:  # not JSON (or not an object): as good as a death
                up = False
            self.gw = self.client.msg_link if up else None
            if up:
                self.gw_up.set()
        elif ch == "cmd":
            if self.proc.receive(msg.payload) is None:
                self.log("warning", "dropped a command with no readable id")
        elif ch == "dl" and sub is not None:
            try:
                tid = int(sub)
            except ValueError:
                return
            # a resume request (cliptransfer status) for one of our uploads, else a chunk of a clip download
            if self.sensor is not None and self.sensor.on_dl(tid, msg.payload):
                return
            if self.speaker is not None:
                self.speaker.on_dl(tid, msg.payload)

    # ---- tasks --------------------------------------------------------------------------------------------
    async def _supervise(self, name, fn):
        delay = self.restart_delay_ms
        while True:
            try:
                await fn()
                return
            except Exception as e:  # CancelledError is a BaseException on both runtimes: not caught here
                self.record_error(name, e)
                r = self.restarts.setdefault(name, [])
                r.append(ticks_ms())
                if len(r) > 5:
                    r.pop(0)
                await sleep_ms(delay)
                delay = min(delay * 2, 30000)

    def healthy(self):
        """No task in a crash loop (5 restarts within 60 s), and the broker reached within offline_reboot_s."""
        now = ticks_ms()
        for r in self.restarts.values():
            if len(r) >= 5 and ticks_diff(now, r[0]) < 60000:
                return False
        off = self.offline_for_ms()
        return off is None or off < self.cfg.get("offline_reboot_s", 1800) * 1000

    async def wdt(self):
        wdt_ms = self.cfg.get("wdt_ms", 30000)
        self.hal.wdt_start(wdt_ms)
        while True:
            if self.healthy():
                self.hal.wdt_feed()
            await sleep_ms(self.wdt_period_ms or wdt_ms // 4)

    async def sender(self):
        from lookout_node.mqtt import NotConnected

        ob = self.outbox
        while True:
            await ob.wait()
            await self.client.connected.wait()
            if self.cfg.get("gateway") and self.cfg.get("transport") != "coap":
                g = self.gw
                if g is None or g.is_set():  # no gateway birth on this connection (yet): hold everything
                    self.gw_up.clear()
                    await self.gw_up.wait()
                    continue
            item = ob.take()  # (iid, topic, payload): in flight until acked, never dropped meanwhile
            if item is None:
                continue
            try:
                await self.client.publish(item[1], item[2], 1)
            except NotConnected:
                ob.release()
                await sleep_ms(100)
                continue
            ob.ack(item[0])  # exactly the item the broker acknowledged
            if item[1].endswith("/evt"):  # only events: see the module docstring
                r = self.recent
                r.append((ticks_ms(), self.client.connects, item[1], item[2]))
                if len(r) > 8:  # RECENT
                    r.pop(0)

    def _replay(self):
        """Back into the outbox: what the broker acknowledged on a connection that has since broken, within the
        time a dead link can go unnoticed (keepalive + PINGRESP timeout) before the break was seen."""
        r = self.recent
        self.recent = []
        window = self.cfg["broker"]["keepalive"] * 1500
        for t, n, topic, payload in r:
            if n != self.client.connects and ticks_diff(self._offline_since, t) < window:
                self.outbox.put(topic, payload)

    async def hb(self):
        while True:
            await self.client.connected.wait()
            await self._pub0("hb", self.heartbeat())
            if self.sensor is not None:
                self.sensor.expire_uploads()
            await sleep_ms(self.cfg["hb_s"] * 1000)

    def _loc_msg(self):
        ts = self.clock()
        f = self.fix
        if ts is None:
            return None
        if f is not None:
            m = {"lat": f["lat"], "lon": f["lon"], "fix": f["fix"], "src": "gps"}
            keys = ("alt_mm", "spd_cms", "hdg_cd", "sats", "hdop")
        else:
            f = self.cfg.get("position")
            if not f:
                return None
            m = {"lat": f["lat"], "lon": f["lon"], "fix": 1, "src": "fixed"}
            keys = ("alt_mm",)
        for k in keys:
            if f.get(k) is not None:
                m[k] = f[k]
        self.seq["loc"] += 1
        m["seq"] = self.seq["loc"]
        m["ts"] = ts
        return m

    async def _send_loc(self):
        m = self._loc_msg()
        if m is not None and self.online():
            await self._pub0("loc", m)

    async def loc(self):
        """Periodic location: GPS every loc_s, fixed position at connect and every 60 * loc_s."""
        n = 0
        while True:
            await self.client.connected.wait()
            if self.fix is not None or n % 60 == 0:
                await self._send_loc()
            n += 1
            await sleep_ms(self.cfg["loc_s"] * 1000)

    async def session(self):
        """Connection bookkeeping: offline clock, config trial commit/rollback, rollback report."""
        c = self.client
        st = self.store
        trial_s = self.cfg.get("trial_s", 120)
        deadline = None if st.trial is None else ticks_ms() + trial_s * 1000
        while True:
            if not c.is_connected():
                if deadline is not None:
                    try:
                        await asyncio.wait_for(c.connected.wait(), max(1, deadline - ticks_ms()) / 1000)
                    except asyncio.TimeoutError:
                        st.rollback("no broker connection within %d s" % trial_s)
                        self.request_exit("rollback")  # restart on the restored config
                        return
                else:
                    await c.connected.wait()
            # connected
            deadline = None
            if self.recent:
                self._replay()
            if st.trial is not None:
                t = st.commit()
                if t and t.get("cmd"):
                    self.proc.finish(t["cmd"], "done", data={"trial": "committed"})
            note = st.take_rollback_note()
            if note and note.get("cmd"):
                self.proc.finish(note["cmd"], "failed", code="rolled_back", detail=note.get("reason"))
            while c.is_connected():
                await sleep_ms(200)
            self._offline_since = ticks_ms()

    async def run(self):
        """Run until a restart is requested; returns the reason."""
        import gc

        if hasattr(gc, "threshold"):  # MicroPython: collect after every 4 KB allocated, not only when the heap is
            gc.threshold(4096)  # full, so long-lived objects stay packed low and 4 KB clip chunks still fit
            #                     after weeks of commands (measured: bench/firmware_footprint.py, min_heap_kb)
        cfg = self.cfg
        b = cfg["broker"]
        state = self.topic("state")
        opts = {"keepalive_s": b["keepalive"]}
        if b["tls"]:  # CA pinning and client certificate: node_tls.py; never a fall back to plaintext
            from lookout_node.node_tls import tls_opts

            try:
                opts.update(tls_opts(cfg, self.fs, self.hal))
            except Exception as e:
                self.record_error("tls", e)
                raise
        opts.update(self.mqtt_opts)
        opts.update(cfg.get("mqtt") or {})
        caps = ["ping", "reboot", "set_config", "rotate_key", "resync"]
        for r in (self.speaker if self.role == "speaker" else None, self.sensor):
            if r is not None:
                caps += list(r.CAPS)
        opts.update(client_id=self.id, username=b["user"] or self.id, password=b["password"] or None,
                    clean_session=False,
                    will=(state, messages.encode("death", messages.death(self.bdseq, "connection lost")), 1, True),
                    birth=(state, messages.encode("birth", messages.birth(self.role, self.bdseq, FW, cfg["hb_s"],
                                                                          caps=caps, site=self.site)), 1, True),
                    on_message=self.on_message, on_log=self.log, open_connection=self.hal.open_connection)
        if cfg.get("transport") == "coap":  # battery sensor nodes: the CoAP uplink, same interface (uplink.py)
            from lookout_node.uplink import make_uplink

            self.client = c = make_uplink(cfg, **opts)
        else:  # config.py admits mqtt or coap only
            from lookout_node.mqtt import MQTTClient

            self.client = c = MQTTClient(opts.pop("host", b["host"]), opts.pop("port", b.get("port")), **opts)
        await c.subscribe(self.topic("cmd"), 1)
        if cfg.get("gateway") and cfg.get("transport") != "coap":  # its retained birth/death: see sender()
            await c.subscribe(topics.topic(self.site, cfg["gateway"], "state"), 1)
        if self.speaker is not None or (self.sensor is not None and self.hal.camera is not None):
            # speaker: clip download chunks; camera: resume requests for its snapshot uploads
            await c.subscribe(self.topic("dl") + "/+", 1)
        c.start()
        jobs = [(n, getattr(self, n)) for n in ("session", "sender", "hb", "loc", "wdt")]
        if self.hal.gps is not None:
            from lookout_node import node_gps  # only on a board with a GPS

            jobs.append(("gps", lambda: node_gps.run(self)))
        if self.speaker is not None:
            jobs.append(("player", self.speaker.run))
            jobs.append(("scheduler", self.speaker.run_scheduler))
        if self.sensor is not None:
            jobs.append(("sensor", self.sensor.run))
        for name, fn in jobs:
            self.tasks.append(asyncio.create_task(self._supervise(name, fn)))
        await self._exit.wait()
        from lookout_node import node_admin  # the way out, like a reboot, is a rare path

        await node_admin.shutdown(self, self.exit_reason != "kill")
        return self.exit_reason

    def request_exit(self, reason):
        self.exit_reason = reason
        self._exit.set()
